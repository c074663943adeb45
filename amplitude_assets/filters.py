"""AMPLITUDE_EVENT_FILTER: a JSON list of conditions, compiled to one polars expression."""

from __future__ import annotations

import json

import polars as pl

from amplitude_assets.settings import SettingsError


def parse_filter(text: str) -> list[dict]:
    """Parse and validate the filter; raises SettingsError saying what is wrong and where."""
    try:
        conditions = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"AMPLITUDE_EVENT_FILTER is not valid JSON: {exc}") from None
    if not isinstance(conditions, list):
        raise SettingsError("AMPLITUDE_EVENT_FILTER must be a JSON list of conditions")
    return conditions


def filter_expression(conditions: list[dict]) -> pl.Expr:
    """One boolean expression over the normalized frame: True keeps the event."""
    return pl.lit(True)
