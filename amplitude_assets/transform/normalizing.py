"""Every field to its contract type, with the original of every value repaired (REPAIR_SCHEMA)."""

from __future__ import annotations

import polars as pl

from amplitude_assets import duck
from amplitude_assets.schema import (
    AS_SENT_FIELDS,
    DICT_FIELDS,
    EVENT_FIELD_NAMES,
    EVENT_FIELDS,
    NUMBER_PATTERN,
    UUID_PATTERN,
    Kind,
)
from amplitude_assets.transform.columns import LINE, POS, _arrow, _json_path
from amplitude_assets.transform.model import REPAIR_SCHEMA, no_repairs
from amplitude_assets.transform.parsing import extract_json
from amplitude_assets.transform.sent import sent_json

_KINDS = dict(EVENT_FIELDS)


_MIN_EPOCH_MS = -62_135_596_800_000  # 0001-01-01 00:00:00 UTC
_MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31 23:59:59.999 UTC


def parse_timestamp(expr: pl.Expr) -> pl.Expr:
    """Lenient UTC timestamp parsing to Datetime(us); null when it cannot be parsed.

    Accepts space or `T`, 0-6 fraction digits, `Z` or any offset (converted to UTC), epoch
    milliseconds, and Amplitude's broken `YYYY:MM:DD HH:MM:SS.ffffff`.
    """
    text = (
        expr.str.strip_chars()
        .str.replace(r"^(\d{4}):(\d{2}):(\d{2})", "${1}-${2}-${3}")
        .str.replace(r"^(\d{4}-\d{2}-\d{2})T", "${1} ")
        .str.replace(r"(?i)Z$", "+00:00")
    )
    ms = text.cast(pl.Float64, strict=False).floor()
    epoch_ms = pl.from_epoch(
        # Years 0001-9999 only: epoch microseconds sent as milliseconds are not a date.
        pl.when(text.str.contains(r"^-?\d{9,}(\.\d+)?$") & ms.is_between(_MIN_EPOCH_MS, _MAX_EPOCH_MS))
        .then(ms.cast(pl.Int64, strict=False)),
        time_unit="ms",
    ).cast(pl.Datetime("us"))
    with_zone = (
        text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f%z", strict=False, time_unit="us", time_zone="UTC")
        .dt.replace_time_zone(None)
    )
    naive = text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", strict=False, time_unit="us")
    return pl.coalesce(epoch_ms, with_zone, naive)


def _integer(expr: pl.Expr) -> pl.Expr:
    as_float = expr.cast(pl.Float64, strict=False)
    integral = pl.when(as_float == as_float.floor()).then(as_float.cast(pl.Int64, strict=False))
    return pl.coalesce(expr.cast(pl.Int64, strict=False), integral)


def _boolean(expr: pl.Expr) -> pl.Expr:
    lowered = expr.str.to_lowercase()
    return pl.when(lowered == "true").then(True).when(lowered == "false").then(False)


def _uuid(expr: pl.Expr) -> pl.Expr:
    hex_only = expr.str.to_lowercase().str.strip_chars().str.replace_all(r"[{}\-]", "")
    dashed = pl.concat_str(
        hex_only.str.slice(0, 8), pl.lit("-"), hex_only.str.slice(8, 4), pl.lit("-"),
        hex_only.str.slice(12, 4), pl.lit("-"), hex_only.str.slice(16, 4), pl.lit("-"),
        hex_only.str.slice(20, 12),
    )
    return pl.when((hex_only.str.len_bytes() == 32) & dashed.str.contains(UUID_PATTERN)).then(dashed)


def _dict(expr: pl.Expr) -> pl.Expr:
    return pl.when(expr.str.starts_with("{")).then(expr).otherwise(pl.lit("{}"))


def _array_or_string(expr: pl.Expr) -> pl.Expr:
    """JSON text that is an array or a string, as it is; anything else is null."""
    return pl.when(expr.str.starts_with("[") | expr.str.starts_with('"')).then(expr)


def _number(expr: pl.Expr) -> pl.Expr:
    """A JSON number token, as it is, or a string holding one (`"0.5"` gives `0.5`).

    Null for anything else, and for a number beyond a double's range (`1e400`).
    """
    token = pl.when(expr.str.starts_with('"')).then(expr.str.slice(1).str.head(-1)).otherwise(expr)
    finite = token.cast(pl.Float64, strict=False).is_finite()
    return pl.when(token.str.contains(NUMBER_PATTERN) & finite).then(token)


def _string(name: str, expr: pl.Expr) -> pl.Expr:
    if name in ("user_id", "device_id"):
        return pl.when(expr != "").then(expr)
    return expr


def normalize_expr(name: str, kind: Kind) -> pl.Expr:
    """The expression that gives field `name` its contract type from its source text."""
    col = pl.col(name)
    if kind is Kind.TIMESTAMP:
        return parse_timestamp(col)
    if kind is Kind.INT:
        return _integer(col)
    if kind is Kind.FLOAT:
        number = col.cast(pl.Float64, strict=False)
        return pl.when(number.is_finite()).then(number)  # NaN and infinities are not JSON numbers
    if kind is Kind.BOOL:
        return _boolean(col)
    if kind is Kind.UUID:
        return _uuid(col)
    if kind is Kind.DICT:
        return _dict(col)
    if kind is Kind.ARRAY_OR_STRING:
        return _array_or_string(col)
    if kind is Kind.NUMBER:
        return _number(col)
    return _string(name, col)


def _repaired(name: str, kind: Kind) -> pl.Expr:
    """1 where a value the source gave could not take its field's type, else 0."""
    source = pl.col(name)
    if kind is Kind.DICT:
        return (source.is_not_null() & (source != "null") & ~source.str.starts_with("{")).cast(pl.Int64)
    if kind is Kind.STRING:
        return pl.lit(0, pl.Int64)
    return (source.is_not_null() & normalize_expr(name, kind).is_null()).cast(pl.Int64)


_CANONICAL_TIMESTAMP = "%Y-%m-%d %H:%M:%S%.f"


def _lenient_rest(name: str, kind: Kind, source: pl.Series, fast: pl.Series) -> pl.Series:
    """`fast` (a canonical-form pass over `source`), with the values it left null that
    `source` has put through the lenient `normalize_expr`."""
    todo = (fast.is_null() & source.is_not_null()).arg_true()
    if not len(todo):
        return fast
    lenient = source.gather(todo).to_frame(name).select(normalize_expr(name, kind)).to_series()
    return fast.scatter(todo, lenient)


_FAST_KINDS = (Kind.TIMESTAMP, Kind.UUID)


def _canonical(name: str, kind: Kind) -> pl.Expr:
    """Field `name` normalized, except that timestamps and UUIDs are taken only when canonical.

    The canonical forms normalize to themselves, in one exact pass; `normalize` sends
    the few other values through the lenient `normalize_expr`.
    """
    col = pl.col(name)
    if kind is Kind.TIMESTAMP:
        return col.str.to_datetime(_CANONICAL_TIMESTAMP, strict=False, time_unit="us")
    if kind is Kind.UUID:
        return pl.when(col.str.contains(UUID_PATTERN)).then(col)
    return normalize_expr(name, kind)


def normalize(frame: pl.DataFrame, extras: list[str]) -> tuple[pl.DataFrame, int]:
    """Give every field its contract type; returns the frame and the number of repairs."""
    normalized, repairs = normalize_with_repairs(frame, extras)
    return normalized, repairs.height


def normalize_with_repairs(frame: pl.DataFrame, extras: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Give every field its contract type; returns the frame and one row per repair.

    Same result as `normalize_expr` for every field, computed once per field. Timestamps
    and UUIDs take a fast pass first: the canonical `YYYY-MM-DD HH:MM:SS.ffffff` form
    parses the same way `parse_timestamp` parses it, a canonical UUID is itself, and
    only the values that pass leaves (other forms, and nonsense) go through the
    lenient expression. The as-sent fields get their exact JSON text back from the line
    (`sent_json`). A repair (a value that could not take its field's type) keeps the
    value as it was sent, with the row's uuid and $insert_id (REPAIR_SCHEMA), in source
    order.
    """
    if not frame.height:
        return frame.select(
            *[normalize_expr(n, k).alias(n) for n, k in EVENT_FIELDS], *[pl.col(n) for n in extras]
        ), no_repairs()
    normalized = frame.select(*[_canonical(n, k).alias(n) for n, k in EVENT_FIELDS], *[pl.col(n) for n in extras])
    repaired: dict[str, pl.Series] = {}  # field -> rows
    for name, kind in EVENT_FIELDS:
        source = frame[name]
        if kind in _FAST_KINDS:
            normalized = normalized.with_columns(_lenient_rest(name, kind, source, normalized[name]))
        if kind is Kind.DICT:
            bad = frame.select(_repaired(name, kind).cast(pl.Boolean)).to_series()
        elif kind is not Kind.STRING:
            bad = source.is_not_null() & normalized[name].is_null()
        else:
            continue
        if bad.any():
            repaired[name] = bad.arg_true()
    nulled = _objects_in_string_fields(frame)
    for name, rows in nulled.items():
        normalized = normalized.with_columns(normalized[name].scatter(rows, None))
        repaired[name] = rows
    if LINE in frame.columns:
        normalized = _as_sent(frame, normalized)
    return normalized, _repair_records(frame, normalized, repaired)


def _as_sent(frame: pl.DataFrame, normalized: pl.DataFrame) -> pl.DataFrame:
    """The as-sent fields with the exact JSON text of the line (DuckDB re-encodes what it
    parses: `1.50` comes out as `1.5`, `["a", "b"]` as `["a","b"]`).

    Only rows whose value is present are looked at; a number taken out of a string
    (`"0.5"`) is already as sent.
    """
    for name in AS_SENT_FIELDS:
        value = normalized[name]
        look = value.is_not_null()
        if _KINDS[name] is Kind.NUMBER:
            look = look & ~frame[name].str.starts_with('"')
        if not look.any():
            continue
        rows = look.arg_true()
        exact = sent_json(frame[LINE].gather(rows), name, value.gather(rows))
        normalized = normalized.with_columns(value.scatter(rows, exact))
    return normalized


def _repair_records(frame: pl.DataFrame, normalized: pl.DataFrame, repaired: dict[str, pl.Series]) -> pl.DataFrame:
    if not repaired:
        return no_repairs()
    order = {name: i for i, name in enumerate(EVENT_FIELD_NAMES)}
    records = []
    for name, rows in repaired.items():
        if LINE in frame.columns:
            lines = frame[LINE].gather(rows)
            candidates = extract_json(lines.to_frame("line"), [name]).to_series()
            value = sent_json(lines, name, candidates)
        else:  # the exporter's own lines, read back: nothing there needs repair
            value = pl.repeat(None, len(rows), dtype=pl.String, eager=True)
        records.append(pl.DataFrame({
            "_pos": frame[POS].gather(rows) if POS in frame.columns else rows.cast(pl.Int64),
            "_field": pl.repeat(order[name], len(rows), dtype=pl.Int32, eager=True),
            "uuid": normalized["uuid"].gather(rows),
            "$insert_id": normalized["$insert_id"].gather(rows),
            "field": pl.repeat(name, len(rows), dtype=pl.String, eager=True),
            "value": value,
        }))
    return pl.concat(records).sort("_pos", "_field").select(list(REPAIR_SCHEMA))



_STRING_FIELDS = tuple(n for n, k in EVENT_FIELDS if k is Kind.STRING)


def _objects_in_string_fields(frame: pl.DataFrame) -> dict[str, pl.Series]:
    """Rows whose string field holds a JSON object or array, which cannot be a string.

    The parse gives such a value as its JSON text, indistinguishable from a string that
    happens to start with `{` or `[`; `json_type` tells them apart on those few lines only.
    """
    suspect = frame.select(
        pl.any_horizontal(
            pl.col(n).str.starts_with("{") | pl.col(n).str.starts_with("[") for n in _STRING_FIELDS
        ).fill_null(False)
    ).to_series()
    if LINE not in frame.columns or not suspect.any():
        return {}
    rows = suspect.arg_true()
    con = duck.connect()
    con.register("suspects", _arrow(frame.select(pl.col(LINE).alias("line"))[rows]))
    paths = ", ".join("'" + _json_path(n).replace("'", "''") + "'" for n in _STRING_FIELDS)
    kinds = con.sql(f"SELECT json_type(line, [{paths}]) AS k FROM suspects").pl()["k"]
    con.close()
    nulled = {}
    for i, name in enumerate(_STRING_FIELDS):
        bad = kinds.list.get(i).is_in(["OBJECT", "ARRAY"]).fill_null(False)
        if bad.any():
            nulled[name] = rows.filter(bad)
    return nulled


def restore_dicts(parsed: pl.DataFrame, normalized: pl.DataFrame, rows: pl.Series) -> pl.DataFrame:
    """`normalized` with the dict fields of `rows` read from their lines (`parse` skipped them)."""
    if not len(rows):
        return normalized
    texts = extract_json(parsed[LINE].gather(rows).to_frame("line"), list(DICT_FIELDS))
    return normalized.with_columns(
        normalized[name].scatter(rows, texts.select(_dict(pl.col(name))).to_series()) for name in DICT_FIELDS
    )
