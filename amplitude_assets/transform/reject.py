"""Rows that do not belong to the hour: a missing, unparseable or outside server_upload_time."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from amplitude_assets.schema import Kind
from amplitude_assets.transform.columns import LINE, POS
from amplitude_assets.transform.normalizing import (
    _canonical,
    _lenient_rest,
    parse_timestamp,
)


def reject_outside_hour(frame: pl.DataFrame, hour: datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split off rows whose server_upload_time is missing, unparseable or outside the hour."""
    start = hour.replace(tzinfo=None)
    end = start + timedelta(hours=1)
    text = frame["server_upload_time"] if "server_upload_time" in frame.columns else None
    if text is not None and text.dtype == pl.String and len(text):
        canonical = text.to_frame().select(_canonical("server_upload_time", Kind.TIMESTAMP)).to_series()
        uploaded = pl.lit(_lenient_rest("server_upload_time", Kind.TIMESTAMP, text, canonical))
    else:
        uploaded = parse_timestamp(pl.col("server_upload_time"))
    reason = (
        pl.when(pl.col("server_upload_time").is_null())
        .then(pl.lit("missing server_upload_time"))
        .when(uploaded.is_null())
        .then(pl.lit("unparseable server_upload_time"))
        .when((uploaded < start) | (uploaded >= end))
        .then(pl.lit(f"server_upload_time outside the hour {start:%Y-%m-%d %H}:00-{end:%H}:00 UTC"))
    )
    reasons = frame.select(reason.alias("reason"))["reason"]
    outside = reasons.is_not_null()
    rejected = frame.select(pl.col(POS).alias("_pos"), reasons, pl.col(LINE).alias("line"))
    if not outside.any():  # the usual case: no copy of the hour's columns
        return frame, rejected.clear()
    rejected = rejected.filter(outside)
    return frame.filter(~outside), rejected
