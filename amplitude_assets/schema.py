"""The record contracts: the 49 event fields and the 5 merged-ID fields, in order, with types.

This module is the single source of truth for field order and JSON types. The writer
serializes by it and the checks validate by it.
"""

from __future__ import annotations

from enum import Enum

import polars as pl


class Kind(str, Enum):
    """The JSON type a field takes in an exported line."""

    TIMESTAMP = "timestamp"  # "YYYY-MM-DD HH:MM:SS.ffffff", UTC, no zone
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    UUID = "uuid"  # canonical lowercase 8-4-4-4-12
    STRING = "string"
    DICT = "dict"  # a JSON object, `{}` when empty
    ARRAY_OR_STRING = "array_or_string"  # a JSON array or string, its JSON text as sent, or null
    NUMBER = "number"  # a JSON number, its token as sent, or null


# The 49 fields in the order of Amplitude's documented schema. Two kinds follow Amplitude's
# real exports where its Azure page's JSON block says otherwise (docs/format.md, "Field types"):
# `amplitude_attribution_ids` is an array in real data (the S3/GCS event table says array),
# and `sample_rate` is a number (Snowflake NUMBER, BigQuery BIGNUMERIC), not always null.
EVENT_FIELDS: tuple[tuple[str, Kind], ...] = (
    ("server_received_time", Kind.TIMESTAMP),
    ("app", Kind.INT),
    ("device_carrier", Kind.STRING),
    ("$schema", Kind.INT),
    ("city", Kind.STRING),
    ("user_id", Kind.STRING),
    ("uuid", Kind.UUID),
    ("event_time", Kind.TIMESTAMP),
    ("platform", Kind.STRING),
    ("os_version", Kind.STRING),
    ("amplitude_id", Kind.INT),
    ("processed_time", Kind.TIMESTAMP),
    ("user_creation_time", Kind.TIMESTAMP),
    ("version_name", Kind.STRING),
    ("ip_address", Kind.STRING),
    ("paying", Kind.BOOL),
    ("dma", Kind.STRING),
    ("group_properties", Kind.DICT),
    ("user_properties", Kind.DICT),
    ("client_upload_time", Kind.TIMESTAMP),
    ("$insert_id", Kind.STRING),
    ("event_type", Kind.STRING),
    ("library", Kind.STRING),
    ("amplitude_attribution_ids", Kind.ARRAY_OR_STRING),
    ("device_type", Kind.STRING),
    ("device_manufacturer", Kind.STRING),
    ("start_version", Kind.STRING),
    ("location_lng", Kind.FLOAT),
    ("server_upload_time", Kind.TIMESTAMP),
    ("event_id", Kind.INT),
    ("location_lat", Kind.FLOAT),
    ("os_name", Kind.STRING),
    ("amplitude_event_type", Kind.STRING),
    ("device_brand", Kind.STRING),
    ("groups", Kind.DICT),
    ("event_properties", Kind.DICT),
    ("data", Kind.DICT),
    ("device_id", Kind.STRING),
    ("language", Kind.STRING),
    ("device_model", Kind.STRING),
    ("country", Kind.STRING),
    ("region", Kind.STRING),
    ("is_attribution_event", Kind.BOOL),
    ("adid", Kind.STRING),
    ("session_id", Kind.INT),
    ("device_family", Kind.STRING),
    ("sample_rate", Kind.NUMBER),
    ("idfa", Kind.STRING),
    ("client_event_time", Kind.TIMESTAMP),
)

EVENT_FIELD_NAMES: tuple[str, ...] = tuple(name for name, _ in EVENT_FIELDS)
EVENT_KINDS: dict[str, Kind] = dict(EVENT_FIELDS)
DICT_FIELDS: tuple[str, ...] = tuple(n for n, k in EVENT_FIELDS if k is Kind.DICT)
TIMESTAMP_FIELDS: tuple[str, ...] = tuple(n for n, k in EVENT_FIELDS if k is Kind.TIMESTAMP)
# Kinds held as JSON text from parse to write (no re-encoding): their bytes go out as sent.
JSON_TEXT_KINDS: frozenset[Kind] = frozenset({Kind.DICT, Kind.ARRAY_OR_STRING, Kind.NUMBER})
AS_SENT_FIELDS: tuple[str, ...] = tuple(
    n for n, k in EVENT_FIELDS if k in (Kind.ARRAY_OR_STRING, Kind.NUMBER)
)

# Polars dtypes of the normalized frame. Dict fields (and extra fields) are kept as
# JSON text so that each event's object round-trips exactly (no Struct widening).
POLARS_DTYPES: dict[Kind, pl.DataType] = {
    Kind.TIMESTAMP: pl.Datetime("us"),
    Kind.INT: pl.Int64(),
    Kind.FLOAT: pl.Float64(),
    Kind.BOOL: pl.Boolean(),
    Kind.UUID: pl.String(),
    Kind.STRING: pl.String(),
    Kind.DICT: pl.String(),
    Kind.ARRAY_OR_STRING: pl.String(),  # the JSON text
    Kind.NUMBER: pl.String(),  # the JSON number token
}

# What an exported line may hold, per kind, as DuckDB `json_type` names (NULL is JSON
# null); a VARCHAR of a kind in VALUE_PATTERNS must also match its pattern. The schema
# check validates by these.
JSON_TYPES: dict[Kind, tuple[str, ...]] = {
    Kind.TIMESTAMP: ("VARCHAR", "NULL"),
    Kind.INT: ("BIGINT", "UBIGINT", "NULL"),
    Kind.FLOAT: ("DOUBLE", "BIGINT", "UBIGINT", "NULL"),
    Kind.BOOL: ("BOOLEAN", "NULL"),
    Kind.UUID: ("VARCHAR", "NULL"),
    Kind.STRING: ("VARCHAR", "NULL"),
    Kind.DICT: ("OBJECT",),
    Kind.ARRAY_OR_STRING: ("ARRAY", "VARCHAR", "NULL"),
    Kind.NUMBER: ("BIGINT", "UBIGINT", "DOUBLE", "NULL"),
}

# strftime pattern of exported timestamps: `2020-01-25 17:03:01.123456`.
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S%.6f"
TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}$"
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# A JSON number token (RFC 8259). A `sample_rate` token is also finite as a double.
NUMBER_PATTERN = r"^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?$"
VALUE_PATTERNS: dict[Kind, str] = {Kind.TIMESTAMP: TIMESTAMP_PATTERN, Kind.UUID: UUID_PATTERN}

# Merged Amplitude IDs: every field is an integer (scope is int; the rest are longs).
MERGED_ID_FIELDS: tuple[str, ...] = (
    "scope",
    "merge_time",
    "merge_server_time",
    "amplitude_id",
    "merged_amplitude_id",
)


def line_keys(extras) -> list[str]:
    """An exported line's keys: the 49 fields and the hour's extra keys together, in code-point
    order of their names (`$insert_id`, `$insert_key`, `$schema`, `adid`, ..., `version_name`),
    as Amplitude's own export files hold them. Python orders strings by code point, which is
    also the byte order of their UTF-8 (the order DuckDB compares in)."""
    return sorted({*EVENT_FIELD_NAMES, *extras})


def event_schema() -> dict[str, pl.DataType]:
    """The normalized frame's schema for the 49 fields, in order."""
    return {name: POLARS_DTYPES[kind] for name, kind in EVENT_FIELDS}
