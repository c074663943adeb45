"""The whole-hour reference the streaming export is compared with.

`whole_hour` shapes an hour at once with the same stage functions the streaming path
uses chunk by chunk (`transform.parse`, `reject_outside_hour`, `normalize_with_repairs`,
`canonical_rows`, `writer.event_lines`),
and `dedup` keeps the first row in source order over the whole hour. The export itself
never runs them: `shaping.ShapedHour` decides dedup chunk by chunk (`FirstWins`). The
tests compare the two, row for row and byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import polars as pl

from amplitude_assets.line_form import canonical_rows, event_lines
from amplitude_assets.transform import (
    EXTRA,
    IDENTITY_COLUMNS,
    LINE,
    RESERVED,
    Counts,
    HourResult,
    normalize_with_repairs,
    parse,
    read_lines,
    reject_outside_hour,
)


def dedup(frame: pl.DataFrame) -> pl.DataFrame:
    """Keep the first row in source order: by uuid, then by ($insert_id, device_id).

    A null uuid is never a duplicate; the pair counts only when both are non-null.
    """
    by_uuid = frame.filter(pl.col("uuid").is_null() | pl.col("uuid").is_first_distinct())
    pair = pl.struct("$insert_id", "device_id")
    both = pl.col("$insert_id").is_not_null() & pl.col("device_id").is_not_null()
    # Rows without both keys get a unique stand-in so they never collide.
    return by_uuid.filter(~both | pair.is_first_distinct().over(both))


def whole_hour(
    chunks: Iterable[bytes], hour: datetime, keep: pl.Expr | None = None
) -> HourResult:
    """Shape one hour of source lines. `keep` is the compiled event filter (None: no filter)."""
    lines = read_lines(chunks)
    parsed, unparseable, extras = parse(lines)
    in_hour, outside = reject_outside_hour(parsed, hour)
    # An extra key carried only by rejected rows is not a key of the hour's events.
    extras = [k for k in extras if in_hour[k].is_not_null().any()]
    normalized, repairs = normalize_with_repairs(in_hour, extras)
    normalized = normalized.with_columns(in_hour[LINE], in_hour[EXTRA], canonical_rows(in_hour, normalized))
    unique = dedup(normalized)
    identities = unique.select(IDENTITY_COLUMNS)
    exported = unique.filter(keep) if keep is not None else unique
    rejects = pl.concat([unparseable, outside]).sort("_pos").drop("_pos")
    counts = Counts(
        source_rows=len(lines),
        exported=exported.height,
        duplicates=normalized.height - unique.height,
        filtered=unique.height - exported.height,
        rejected=rejects.height,
        repaired=repairs.height,
    )
    return HourResult(
        hour=hour,
        frame=exported.drop(RESERVED, strict=False),
        lines=event_lines(exported, extras),
        rejects=rejects,
        identities=identities,
        counts=counts,
        repairs=repairs,
    )
