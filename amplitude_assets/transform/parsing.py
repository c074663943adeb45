"""JSON lines into text columns in one DuckDB pass per line, and the lines it rejects.

DuckDB's JSON functions read each line exactly (one struct per line); everything after
that is polars."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import polars as pl

from amplitude_assets import duck
from amplitude_assets.schema import (
    DICT_FIELDS,
    EVENT_FIELD_NAMES,
    EVENT_FIELDS,
    JSON_TEXT_KINDS,
    JSON_TYPES,
    line_keys,
)
from amplitude_assets.transform.columns import (
    EXTRA,
    KEY_SEPARATOR,
    KEYHASH,
    LINE,
    NO_DICTS,
    POS,
    RESERVED,
    SORTED,
    TYPED,
    _arrow,
    _json_path,
    _sql_text,
)
from amplitude_assets.transform.reading import _unmark

_KINDS = dict(EVENT_FIELDS)
_READ_SCHEMA = {name: pl.String for name in EVENT_FIELD_NAMES}
_KNOWN_KEYS_SQL = "[" + ", ".join("'" + name.replace("'", "''") + "'" for name in EVENT_FIELD_NAMES) + "]"


def _read_ndjson(lines: pl.Series) -> pl.DataFrame:
    """Polars' strict JSON reader over these lines (raises on any line it refuses)."""
    # The lines straight into a byte buffer: joining them into one Python string and
    # encoding it would copy them twice more.
    buffer = io.BytesIO()
    pl.DataFrame({"line": lines}).write_csv(
        buffer, include_header=False, quote_style="never", line_terminator="\n"
    )
    return pl.read_ndjson(io.BytesIO(buffer.getbuffer()))



SIDE_BY_SIDE_ROWS = 16_384  # a part smaller than this is not worth a thread of its own


def side_by_side(frame: pl.DataFrame, table: str, query: Callable) -> pl.DataFrame:
    """`query(con)` over `frame`, registered as `table`, cut into one part per DuckDB thread
    and run side by side, then put back together in order.

    A chunk of the hour is smaller than the row group DuckDB splits a scan by, so one query
    over it would keep one core busy, however many DuckDB may use. Each part gets a
    connection of its own with one thread (sharing one database and its memory limit); DuckDB
    releases the GIL while it works.
    """
    workers = max(1, min(int(duck.limits()["threads"]), frame.height // SIDE_BY_SIDE_ROWS))

    def run(part: pl.DataFrame) -> pl.DataFrame:
        con = duck.connect(threads=1)
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
