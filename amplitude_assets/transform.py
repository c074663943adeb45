"""The stages of shaping events: parse -> reject -> normalize (dedup and the filter are in `shaping.py`).

JSON is read by DuckDB's JSON functions (exact objects, one struct per line); everything
after that is polars expressions.

Every source hands this module the same thing: the hour's JSON lines, in source order.
The result is the normalized frame of exported rows (the 49 fields, typed, then any
extra fields as JSON text), the rejected lines kept verbatim with a reason, the original
of every repaired value, the identity columns that `merged_ids` needs, and the counts
that reconcile:

    source_rows = exported + duplicates + filtered + rejected
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

import polars as pl

from amplitude_assets import duck
from amplitude_assets.partitions import reconciles
from amplitude_assets.schema import (
    AS_SENT_FIELDS,
    DICT_FIELDS,
    EVENT_FIELD_NAMES,
    EVENT_FIELDS,
    JSON_TEXT_KINDS,
    JSON_TYPES,
    NUMBER_PATTERN,
    UUID_PATTERN,
    Kind,
    line_keys,
)

_KINDS = dict(EVENT_FIELDS)
IDENTITY_COLUMNS = ("user_id", "device_id", "amplitude_id", "event_time", "server_upload_time")
_READ_SCHEMA = {name: pl.String for name in EVENT_FIELD_NAMES}
_KNOWN_KEYS_SQL = "[" + ", ".join("'" + name.replace("'", "''") + "'" for name in EVENT_FIELD_NAMES) + "]"


@dataclass(frozen=True)
class Counts:
    source_rows: int = 0
    exported: int = 0
    duplicates: int = 0
    filtered: int = 0
    rejected: int = 0
    repaired: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def reconciles(self) -> bool:
        return reconciles(asdict(self))


# One line per repaired value: the row's (normalized) uuid and $insert_id, the field, and
# the value as it was sent, as JSON text.
REPAIR_SCHEMA = {"uuid": pl.String, "$insert_id": pl.String, "field": pl.String, "value": pl.String}


def no_repairs() -> pl.DataFrame:
    return pl.DataFrame(schema=REPAIR_SCHEMA)


@dataclass
class HourResult:
    """One hour, shaped and counted, ready for the writer."""

    hour: datetime
    frame: pl.DataFrame  # exported rows: the 49 fields typed, then extra fields as JSON text
    rejects: pl.DataFrame  # columns `reason`, `line` (verbatim; see NOT_UTF8)
    identities: pl.DataFrame  # IDENTITY_COLUMNS of deduplicated rows before the filter
    counts: Counts
    repairs: pl.DataFrame = field(default_factory=no_repairs)  # REPAIR_SCHEMA, one row per repair
    lines: pl.Series | None = None  # the exported lines, as written (`process_hour`)


# -- parse ---------------------------------------------------------------------------


BOM = "\ufeff"
# A line that is not valid UTF-8 travels as NOT_UTF8 + the base64 of its exact bytes, and is
# rejected (and kept byte for byte). A valid line that starts with a NUL character, which
# no JSON line can, travels as NUL_TEXT + base64 too, so that every line starting with
# NUL is one of these two and nothing else.
NOT_UTF8 = "\x00base64:"
NUL_TEXT = "\x00text:"


def read_lines(chunks: Iterable[bytes]) -> pl.Series:
    """The hour's non-blank lines, in source order, as one string column.

    A byte-order mark at the start of a line (or file) is dropped: it is not data.
    """
    frames = [_read_chunk(chunk) for chunk in chunks if chunk]
    if not frames:
        return pl.Series("line", [], dtype=pl.String)
    lines = pl.concat(frames).to_series()
    # A blank line is all whitespace: find one non-space character (the same Unicode
    # whitespace strip_chars removes) instead of stripping every line.
    return lines.filter(lines.str.contains(r"\S")).rename("line")


def _read_chunk(chunk: bytes) -> pl.DataFrame:
    try:
        frame = pl.read_lines(io.BytesIO(chunk))
    except pl.exceptions.ComputeError:
        # Invalid UTF-8 somewhere in the chunk (rare): split it the way read_lines does, and
        # hold each line that does not decode as its exact bytes, so it is rejected and kept
        # as sent instead of failing the whole hour.
        pieces = chunk.split(b"\n")
        if pieces and not pieces[-1]:
            pieces.pop()
        return pl.DataFrame({"line": [_line_text(p[:-1] if p.endswith(b"\r") else p) for p in pieces]}, schema={"line": pl.String})
    line = frame.to_series()
    if line.str.starts_with(BOM).any():
        line = line.str.strip_prefix(BOM)
    if line.str.starts_with("\x00").any():
        nul = line.str.starts_with("\x00")
        line = line.to_frame().select(pl.when(nul).then(NUL_TEXT + line.str.encode("base64")).otherwise(line)).to_series()
    return line.to_frame("line")


def _line_text(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return NOT_UTF8 + base64.b64encode(raw).decode()
    if text.startswith(BOM):
        text = text[len(BOM):]
    return NUL_TEXT + base64.b64encode(text.encode()).decode() if text.startswith("\x00") else text


def _unmark(rejects: pl.DataFrame) -> pl.DataFrame:
    """Rejects whose line is held in base64: the reason for bytes that are not UTF-8, and a
    valid line that starts with NUL back as its text."""
    marked = rejects["line"].str.starts_with("\x00")
    if not marked.any():
        return rejects
    rows = marked.arg_true()
    lines, reasons = rejects["line"].to_list(), rejects["reason"].to_list()
    for i in rows.to_list():
        if lines[i].startswith(NOT_UTF8):
            reasons[i] = "not valid UTF-8"
        else:
            lines[i] = base64.b64decode(lines[i][len(NUL_TEXT):]).decode()
    return rejects.with_columns(pl.Series("reason", reasons, pl.String), pl.Series("line", lines, pl.String))


def _read_ndjson(lines: pl.Series) -> pl.DataFrame:
    """Polars' strict JSON reader over these lines (raises on any line it refuses)."""
    # The lines straight into a byte buffer: joining them into one Python string and
    # encoding it would copy them twice more.
    buffer = io.BytesIO()
    pl.DataFrame({"line": lines}).write_csv(
        buffer, include_header=False, quote_style="never", line_terminator="\n"
    )
    return pl.read_ndjson(io.BytesIO(buffer.getbuffer()))


def _json_path(key: str) -> str:
    """A top-level key as a JSON Pointer, which (unlike JSONPath) names any key, `""` too."""
    return "/" + key.replace("~", "~0").replace("/", "~1")


def _arrow(frame: pl.DataFrame):
    """The frame as Arrow without copying its strings (DuckDB reads string views)."""
    return frame.to_arrow(compat_level=pl.CompatLevel.newest())


SIDE_BY_SIDE_ROWS = 16_384  # a part smaller than this is not worth a thread of its own


def side_by_side(frame: pl.DataFrame, table: str, query: Callable) -> pl.DataFrame:
    """`query(con)` over `frame`, registered as `table`, cut into one part per DuckDB thread
    and run side by side, then put back together in order.

    A chunk of the hour is smaller than the row group DuckDB splits a scan by, so one query
    over it would keep one core busy, however many DuckDB may use. Each part gets a
    connection of its own with one thread (and its share of the memory limit); DuckDB
    releases the GIL while it works.
    """
    workers = max(1, min(int(duck.limits()["threads"]), frame.height // SIDE_BY_SIDE_ROWS))

    def run(part: pl.DataFrame) -> pl.DataFrame:
        con = duck.connect(threads=1, share=workers)
        try:
            con.register(table, _arrow(part))
            return query(con)
        finally:
            con.close()

    if workers == 1:
        return run(frame)
    size = -(-frame.height // workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="amplitude-parse") as pool:
        parts = list(pool.map(run, [frame.slice(i * size, size) for i in range(workers)]))
    return pl.concat(parts, how="vertical_relaxed")


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# DuckDB reads JSON leniently: it takes NaN, Infinity and trailing commas, which are not
# JSON. A line that has one of them somewhere (or only seems to: the words may be inside
# a string) is read again by polars' strict reader, and rejected if that fails.
# Two searches for literals (fast): the words, then a comma or JSON whitespace before a
# closing bracket (a superset of trailing commas, rare in compact JSON).
_LENIENT_WORDS = r"(?i)nan|inf"

# Per line, whether the 49 fields have their JSON types (`schema.JSON_TYPES`; DuckDB calls a
# non-negative integer UBIGINT, and one beyond int64 is repaired by normalize).
_TYPE_PATHS_SQL = ", ".join(_sql_text(_json_path(name)) for name in EVENT_FIELD_NAMES)
_DICT_PATHS_SQL = ", ".join(_sql_text(_json_path(name)) for name in DICT_FIELDS)
_TYPED_SQL = " AND ".join(
    f"t[{i}] IN ({', '.join(_sql_text(t) for t in JSON_TYPES[kind])})"
    for i, (_, kind) in enumerate(EVENT_FIELDS, start=1)
)
_TRAILING_COMMA = ",}|,]| }| ]|\t}|\t]|\r}|\r]"


def _scan(source: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.Series]:
    """Classify lines, and list each good line's top-level keys beyond the 49.

    DuckDB's JSON functions do this per line in C++: polars can list keys only by
    inferring one type per key across all rows, which fails on real data (a key that
    holds an object in one event and a number in another).

    `json_keys` is null exactly where the line is not valid JSON, and empty for `{}`
    and for values that are not objects, which `json_type` then tells apart on those
    few lines. Returns the good lines, the rejects and, per good line, its extra keys.
    """
    scanned = side_by_side(source.select("line"), "source", lambda con: con.sql(
        f"""
        SELECT len(ks) AS n, list_filter(ks, lambda k: NOT list_contains({_KNOWN_KEYS_SQL}, k)) AS extra,
               hash(array_to_string(ks, chr(31))) AS kh, coalesce({_TYPED_SQL}, false) AS typed
        FROM (SELECT try(json_keys(line)) AS ks, try(json_type(line, [{_TYPE_PATHS_SQL}])) AS t FROM source)
        """
    ).pl())
    con = duck.connect()
    n = scanned["n"]
    is_object = (n > 0).fill_null(False)
    empty = (n == 0).fill_null(False)
    if empty.any():
        con.register("empty", _arrow(source.filter(empty)))
        kinds = con.sql("SELECT json_type(line) AS kind FROM empty").pl()["kind"]
        is_object = is_object.scatter(empty.arg_true(), kinds == "OBJECT")
    con.close()
    lenient = is_object & (
        source["line"].str.contains(_LENIENT_WORDS) | source["line"].str.contains(_TRAILING_COMMA)
    )
    if lenient.any():
        strict = _strictly_readable(source.filter(lenient)["line"])
        is_object = is_object.scatter(lenient.arg_true(), strict)
    unreadable = is_object.not_() & n.is_not_null() & (n > 0)
    good = source.filter(is_object)
    bad = source.filter(~is_object).with_columns(
        pl.when(n.filter(~is_object).is_null())
        .then(pl.lit("not valid JSON"))
        .when(unreadable.filter(~is_object))
        .then(pl.lit("not readable JSON"))
        .otherwise(pl.lit("not a JSON object"))
        .alias("reason")
    ).select("_pos", "reason", "line")
    good = good.with_columns(scanned["kh"].filter(is_object).alias(KEYHASH), scanned["typed"].filter(is_object).alias(TYPED))
    return good, _unmark(bad), scanned["extra"].filter(is_object)


def _strictly_readable(lines: pl.Series) -> pl.Series:
    """Which of these lines a strict JSON reader takes (by bisection: most are fine)."""
    readable = [True] * len(lines)

    def visit(offset: int, part: pl.Series) -> None:
        try:
            _read_ndjson(part)
        except Exception:
            if len(part) == 1:
                readable[offset] = False
                return
            mid = len(part) // 2
            visit(offset, part.slice(0, mid))
            visit(offset + mid, part.slice(mid))

    visit(0, lines)
    return pl.Series(readable, dtype=pl.Boolean)


def extract_json(lines: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Each key's value as exact JSON text (strings stay quoted, objects keep their keys)."""
    if not keys:
        return pl.DataFrame(schema={})
    con = duck.connect()
    con.register("good", _arrow(lines.select("line")))
    paths = ", ".join(_sql_text(_json_path(k)) for k in keys)
    values = con.sql(f"SELECT json_extract(line, [{paths}]) AS v FROM good").pl()["v"]
    con.close()
    return pl.DataFrame({key: values.list.get(i) for i, key in enumerate(keys)})


def json_fields(lines: pl.DataFrame, extras: list[str], skip_dicts: pl.Series | None = None) -> pl.DataFrame:
    """The 49 fields and the extra fields of good lines, in one JSON parse per line.

    DuckDB's `json_transform` reads every line once into a struct: the 42 scalar fields
    as text (strings unquoted, other values as their JSON text), the dict fields, the two
    as-sent fields (`amplitude_attribution_ids`, `sample_rate`) and the extra fields as
    JSON text. A struct's field names cannot be empty or differ
    only in case, so an extra key that would clash is extracted by path instead.

    Where `skip_dicts` is true, the five dict fields are not read (they are null): a line
    written as it came needs no text of them, and re-encoding an object is most of what
    reading it costs.
    """
    taken = {name.lower() for name in EVENT_FIELD_NAMES}
    in_struct: list[str] = []
    by_path: list[str] = []
    for key in extras:
        if key and key.lower() not in taken:
            taken.add(key.lower())
            in_struct.append(key)
        else:
            by_path.append(key)
    structure = {name: ("JSON" if kind in JSON_TEXT_KINDS else "VARCHAR") for name, kind in EVENT_FIELDS}
    structure.update((key, "JSON") for key in in_struct)
    if skip_dicts is None:
        fields = side_by_side(lines.select("line"), "good", lambda con: pl.from_arrow(
            con.sql(f"SELECT unnest(json_transform(line, {_sql_text(json.dumps(structure))})) FROM good").arrow()
        ))
        fields.columns = list(structure)
    else:
        rest = {k: v for k, v in structure.items() if k not in DICT_FIELDS}
        fields = side_by_side(lines.select("line", skip_dicts.alias("skip")), "good", lambda con: pl.from_arrow(con.sql(
            f"SELECT unnest(json_transform(line, {_sql_text(json.dumps(rest))})), "
            f"CASE WHEN NOT skip THEN json_extract(line, [{_DICT_PATHS_SQL}]) END AS d FROM good"
        ).arrow()))
        fields.columns = [*rest, "d"]
        fields = fields.with_columns(pl.col("d").list.get(i).alias(n) for i, n in enumerate(DICT_FIELDS)).select(list(structure))
    if by_path:
        fields = fields.with_columns(extract_json(lines, by_path))
    return fields


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
RESERVED = (POS, LINE, KEYHASH, TYPED, EXTRA, SORTED, NO_DICTS, CANON)
KEY_SEPARATOR = "\x1f"


def parse(lines: pl.Series, all_dicts: bool = True) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """Parse JSON lines into text columns (plus `POS` and the raw `LINE`), and rejects.

    The 42 scalar fields are read as text; the dict fields, the as-sent fields and the extra
    fields as JSON text, so no event's object is widened with another's keys and no value is
    coerced because of another row. An extra field a line has is JSON text (`null`
    when its value is null); one it lacks is null. Returns the extra field names too.

    Beside them: `SORTED`, whether the line's keys are in code-point order (each once, all
    49 there), and, without `all_dicts`, `NO_DICTS`: the lines whose dict fields were not
    read (null), because the line has its keys in order and its fields' JSON types, so it
    is likely written as it came (`restore_dicts` reads them where it is not).
    """
    source = pl.DataFrame({"_pos": pl.int_range(len(lines), eager=True, dtype=pl.Int64), "line": lines})
    good, rejects, extra_keys = _scan(source)
    order = extra_keys.explode().drop_nulls().unique(maintain_order=True).to_list()
    if any(name in order for name in RESERVED):
        clash = extra_keys.list.eval(pl.element().is_in(RESERVED)).list.any()
        rejects = pl.concat([
            rejects,
            good.filter(clash).select("_pos", pl.lit("has a key that the exporter reserves").alias("reason"), "line"),
        ]).sort("_pos")
        good, extra_keys = good.filter(~clash), extra_keys.filter(~clash)
        order = extra_keys.explode().drop_nulls().unique(maintain_order=True).to_list()
    extras = [k for k in order if k not in _READ_SCHEMA]
    joined = extra_keys.list.join(KEY_SEPARATOR)
    in_order = (good[KEYHASH] == sorted_keys_hashes(joined)).fill_null(False) if good.height else pl.Series([], dtype=pl.Boolean)
    good = good.with_columns(in_order.alias(SORTED), joined.alias(EXTRA))
    skip = (good[TYPED] & good[SORTED]).alias(NO_DICTS) if not all_dicts else pl.repeat(False, good.height, eager=True).alias(NO_DICTS)
    hidden = [good["_pos"].alias(POS), good["line"].alias(LINE), good[KEYHASH], good[TYPED], good[SORTED], good[EXTRA], skip]
    if not good.height:
        known = pl.DataFrame(schema=_READ_SCHEMA).with_columns(pl.lit(None, pl.String).alias(k) for k in extras)
        return known.with_columns(hidden), rejects, extras
    fields = json_fields(good, extras, None if all_dicts else skip)
    if extras:
        # JSON null reads as a missing value; a key the line has is `null`, not missing.
        fields = fields.with_columns(
            pl.when(extra_keys.list.contains(key)).then(pl.col(key).fill_null("null")).alias(key)
            for key in extras
        )
    return fields.with_columns(hidden), rejects, extras


def sorted_keys_hashes(extras: pl.Series) -> pl.Series:
    """For each line's `EXTRA`, the `KEYHASH` its line has when its keys are in code-point order."""
    distinct = extras.unique()
    keys = [line_keys(e.split(KEY_SEPARATOR) if e else []) for e in distinct.to_list()]
    con = duck.connect()
    try:
        wanted = pl.DataFrame({"i": range(len(keys)), "k": keys}, schema={"i": pl.Int64, "k": pl.List(pl.String)})
        con.register("wanted", wanted.to_arrow())
        hashes = con.sql("SELECT hash(array_to_string(k, chr(31))) AS h FROM wanted ORDER BY i").pl()["h"]
    finally:
        con.close()
    return extras.replace_strict(distinct, hashes, return_dtype=pl.UInt64)


def restore_dicts(parsed: pl.DataFrame, normalized: pl.DataFrame, rows: pl.Series) -> pl.DataFrame:
    """`normalized` with the dict fields of `rows` read from their lines (`parse` skipped them)."""
    if not len(rows):
        return normalized
    texts = extract_json(parsed[LINE].gather(rows).to_frame("line"), list(DICT_FIELDS))
    return normalized.with_columns(
        normalized[name].scatter(rows, texts.select(_dict(pl.col(name))).to_series()) for name in DICT_FIELDS
    )


# -- normalize -------------------------------------------------------------------------


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


# -- values exactly as sent ------------------------------------------------------------


def sent_json(lines: pl.Series, key: str, candidates: pl.Series) -> pl.Series:
    """The exact JSON text of each line's top-level `key`, given DuckDB's text of it.

    Where the key's quoted name occurs once in the line, directly followed by `:` and the
    candidate and then `,` or the closing brace, the candidate is the text as sent (the one
    occurrence is the top-level key: inside a string the quotes would be escaped). The
    other lines (spaces, `1.50`, escapes, the same key nested deeper) are scanned by
    `raw_json_value`.
    """
    quoted = json.dumps(key, ensure_ascii=False)
    head = pl.lit(quoted + ":") + pl.col("c")
    line = pl.col("l")
    once = line.str.count_matches(quoted, literal=True) == 1
    exact = once & (line.str.contains(head + pl.lit(","), literal=True) | line.str.ends_with(head + pl.lit("}")))
    checked = pl.DataFrame({"l": lines, "c": candidates}).select(
        exact.fill_null(False).alias("exact"), once.fill_null(False).alias("once")
    )
    todo = (~checked["exact"]).arg_true()
    if not len(todo):
        return candidates
    raw = []
    for text, single, candidate in zip(
        lines.gather(todo).to_list(), checked["once"].gather(todo).to_list(), candidates.gather(todo).to_list()
    ):
        # A key named once is, in practice, the top-level key: read its value where it
        # stands, and walk the line's keys only if that is not the value DuckDB read.
        value = _value_after_key(text, text.find(quoted) + len(quoted)) if single else None
        if value is None or candidate is None or _json_value(value) != _json_value(candidate):
            value = raw_json_value(text, key)
        raw.append(value)
    return candidates.scatter(todo, pl.Series(raw, dtype=pl.String))


def _json_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


_WHITESPACE = " \t\n\r"
_SCAN = json.JSONDecoder().scan_once


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WHITESPACE:
        i += 1
    return i


def _value_after_key(line: str, i: int) -> str | None:
    """The text of the value whose key's closing quote is just before `i`."""
    try:
        i = _skip(line, _skip(line, i) + 1)  # past the colon
        return line[i:_SCAN(line, i)[1]]
    except (IndexError, StopIteration, ValueError):
        return None


def raw_json_value(line: str, key: str) -> str | None:
    """The text of the first top-level `key`'s value in a JSON object line, as it stands."""
    try:
        i = _skip(line, 0)
        if line[i] != "{":
            return None
        i = _skip(line, i + 1)
        if line[i] == "}":
            return None
        while True:
            name, i = json.decoder.scanstring(line, i + 1)
            i = _skip(line, _skip(line, i) + 1)  # past the colon
            _, end = _SCAN(line, i)
            if name == key:
                return line[i:end]
            i = _skip(line, end)
            if line[i] != ",":
                return None
            i = _skip(line, i + 1)
    except (IndexError, StopIteration, ValueError):
        return None


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


# -- reject, dedup, filter ----------------------------------------------------------------


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
