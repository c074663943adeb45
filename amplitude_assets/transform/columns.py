"""The hidden columns a parsed frame carries beside an event's fields, and DuckDB helpers
shared by the stages."""

from __future__ import annotations

import polars as pl

# The parsed frame carries each line's position and text beside its fields, under names
# that an event's own keys cannot take: a line with a key of either name is rejected.
POS = "\x00pos"
LINE = "\x00line"
KEYHASH = "\x00keys"  # DuckDB's hash of the line's keys, in order, joined by chr(31)
TYPED = "\x00typed"  # the 49 fields have their JSON types
EXTRA = "\x00extra"  # the line's keys beyond the 49, in order, joined by chr(31)
SORTED = "\x00sorted"  # the line's keys are in code-point order, each once, the 49 among them
NO_DICTS = "\x00nodicts"  # the dict fields were not read (`parse` without `all_dicts`)
CANON = "\x00canon"  # the line is in the exported form but for null extra keys: written as it came
ENCODED = "\x00encoded"  # LINE is the exporter's encoding of the row, made in the shaping (CANON is then true too)
RESERVED = (POS, LINE, KEYHASH, TYPED, EXTRA, SORTED, NO_DICTS, CANON, ENCODED)
KEY_SEPARATOR = "\x1f"


def _json_path(key: str) -> str:
    """A top-level key as a JSON Pointer, which (unlike JSONPath) names any key, `""` too."""
    return "/" + key.replace("~", "~0").replace("/", "~1")


def _arrow(frame: pl.DataFrame):
    """The frame as Arrow without copying its strings (DuckDB reads string views)."""
    return frame.to_arrow(compat_level=pl.CompatLevel.newest())



def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
