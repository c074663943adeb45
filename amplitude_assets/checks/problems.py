"""What is wrong with a line that failed the scan: not JSON, its keys, a field's type, a fixed value.

The scan (`validation.scan_sql`) says only yes or no per line. The few lines that fail are
read again here, each with its own keys and JSON types (`json_columns`), to say exactly
what is wrong: the file, the line, the field, the value.
"""

from __future__ import annotations

import json

import polars as pl

from amplitude_assets.checks.blobs import Batch
from amplitude_assets.checks.outcome import MAX_REPORTED, Found, short
from amplitude_assets.schema import JSON_TYPES, VALUE_PATTERNS, Kind
from amplitude_assets.validation import LineRules, json_path

EXTRAS_NOTE = " (extra keys must be the same, in the same order, on every line of the hour as on its first)"
OLD_ORDER_NOTE = ("keys in the order an earlier release wrote (the 49 fields in the seed's order, then the "
                  "extra keys), not in code-point order: re-export this hour to upgrade it; its values are not damaged")

# DuckDB's json_type names and string patterns per contract type come from schema.py,
# which the writer follows too.
_JSON_TYPES = JSON_TYPES
_TYPE_WORDS = {
    Kind.TIMESTAMP: "a timestamp string YYYY-MM-DD HH:MM:SS.ffffff or null",
    Kind.INT: "an integer or null",
    Kind.FLOAT: "a number or null",
    Kind.BOOL: "true, false or null",
    Kind.UUID: "a lowercase 8-4-4-4-12 uuid or null",
    Kind.STRING: "a string or null",
    Kind.DICT: "an object ({} when empty)",
    Kind.ARRAY_OR_STRING: "an array, a string or null",
    Kind.NUMBER: "a number or null",
}
_PATTERNS = VALUE_PATTERNS


def json_columns(con, lines: pl.DataFrame, types: list[str], strings: list[str]) -> pl.DataFrame:
    """Per line: its JSON kind, its keys in order, the JSON type of each of `types`, the text of `strings`.

    DuckDB's JSON functions work per line, so every line keeps its own keys and types
    (polars would infer one schema for all lines). Used on the few lines that failed the scan.
    """
    con.register("detail", lines.select("text").with_row_index("_i").to_arrow(compat_level=pl.CompatLevel.newest()))
    # Invalid lines become an empty object, so no JSON function sees them.
    columns = [
        "CASE WHEN valid THEN json_type(j) END AS kind",
        "CASE WHEN valid AND json_type(j) = 'OBJECT' THEN json_keys(j) END AS keys",
    ]
    if types:
        paths = ", ".join(json_path(k) for k in types)
        columns.append(f"CASE WHEN valid AND json_type(j) = 'OBJECT' THEN json_type(j, [{paths}]) END AS types")
    if strings:
        paths = ", ".join(json_path(k) for k in strings)
        columns.append(f"CASE WHEN valid AND json_type(j) = 'OBJECT' THEN json_extract_string(j, [{paths}]) END AS strings")
    checked = "SELECT _i, valid, CASE WHEN valid THEN text ELSE '{}' END AS j FROM (SELECT _i, text, json_valid(text) AS valid FROM detail)"
    found = con.sql(f"SELECT {', '.join(columns)} FROM ({checked}) ORDER BY _i").pl()
    con.unregister("detail")
    found = found.select(
        "kind", "keys",
        *(pl.col("types").list.get(i).alias(f"t:{k}") for i, k in enumerate(types)),
        *(pl.col("strings").list.get(i).alias(f"s:{k}") for i, k in enumerate(strings)),
    )
    return pl.concat([lines, found], how="horizontal")


class SchemaProblems:
    """The schema check's problems over an hour's batches, by kind: not a JSON object, the keys,
    the types, and each fixed value."""

    def __init__(self, rules: LineRules) -> None:
        self.rules = rules
        self.structure, self.keys, self.types = Found(), Found(), Found()
        self.fixed = {name: Found() for name, _ in rules.fixed}

    def add(self, con, batch: Batch, ok: pl.Series, expected: list[str] | None, extras: set[str]) -> None:
        """Say what is wrong with the lines of `batch` the scan failed (`ok` false), with the
        hour's keys as known so far (`expected`, None before its first JSON object)."""
        rules = self.rules
        bad = ok.not_().arg_true()
        lines = pl.DataFrame({
            "file": pl.Series([batch.file] * len(bad), dtype=pl.String),
            "line": (bad.cast(pl.Int64) + batch.first_line).alias("line"),
            "text": batch.lines.gather(bad),
        })
        details = json_columns(con, lines, [n for n, _ in rules.fields], rules.string_fields)
        objects, found = _structure_problems(details)
        self.structure.add(found)
        self.keys.add(_key_problems(objects, expected or rules.expected_keys(None), extras,
                                    rules.head if rules.in_code_point_order else ()))
        self.types.add(_type_problems(objects, rules.fields, rules.nullable))
        for name, value in rules.fixed:
            self.fixed[name].add(_fixed_problems(objects, name, value))

    def found(self) -> list[Found]:
        return [self.structure, self.keys, self.types, *self.fixed.values()]


def _structure_problems(scanned: pl.DataFrame) -> tuple[pl.DataFrame, Found]:
    """Lines that are not JSON objects; returns the object lines and the problems."""
    bad = scanned.filter(pl.col("kind").is_null() | (pl.col("kind") != "OBJECT"))
    problems = [
        {"file": r["file"], "line": r["line"], "value": short(r["text"]),
         "problem": "not valid JSON" if r["kind"] is None else "not a JSON object"}
        for r in bad.head(MAX_REPORTED).iter_rows(named=True)
    ]
    return scanned.filter(pl.col("kind") == "OBJECT"), Found(problems, bad.height)


def _key_problems(objects: pl.DataFrame, expected: list[str], extras: set[str], head: tuple[str, ...] = ()) -> Found:
    """Keys in the expected order. A line in the order an earlier release wrote (`head`, then
    the extras) is named as such: an hour to re-export, not damage."""
    if objects.height == 0:
        return Found()
    bad = objects.filter(pl.col("keys").list.join("\x1f") != "\x1f".join(expected))
    problems = []
    for r in bad.head(MAX_REPORTED).iter_rows(named=True):
        keys = list(r["keys"])
        if head and keys[: len(head)] == list(head) and sorted(keys) == expected:
            problems.append({"file": r["file"], "line": r["line"], "field": keys[0],
                             "value": short(keys[:3]), "problem": OLD_ORDER_NOTE})
            continue
        position, name, what = _first_key_difference(keys, expected)
        problems.append({"file": r["file"], "line": r["line"], "field": name,
                         "value": short(keys[position:position + 3]),
                         "problem": what + (EXTRAS_NOTE if name in extras else "")})
    return Found(problems, bad.height)


def _first_key_difference(keys: list[str], expected: list[str]) -> tuple[int, str, str]:
    """Where a line's keys first differ from the expected ones: (position, the key, what is wrong)."""
    position = next((i for i, (a, b) in enumerate(zip(keys, expected)) if a != b), min(len(keys), len(expected)))
    if position < len(expected) and expected[position] not in keys:
        what, name = f"key {expected[position]!r} is missing", expected[position]
    elif position < len(keys) and keys[position] not in expected:
        what, name = f"unexpected key {keys[position]!r}", keys[position]
    else:
        name = keys[position] if position < len(keys) else expected[position]
        what = f"keys out of order at position {position + 1}: expected {expected[position]!r}" if position < len(expected) else "extra keys at the end"
    return position, name, what


def _type_problems(objects: pl.DataFrame, fields: tuple[tuple[str, Kind], ...], nullable: bool = True) -> Found:
    """Each field's JSON type; timestamp and uuid strings also by pattern."""
    checks = []
    for name, kind in fields:
        jtype = pl.col(f"t:{name}")
        allowed = [t for t in _JSON_TYPES[kind] if nullable or t != "NULL"]
        wrong = ~jtype.is_in(allowed)  # an absent key is a key problem, not a type one
        if kind in _PATTERNS:
            wrong = wrong | ((jtype == "VARCHAR") & ~pl.col(f"s:{name}").str.contains(_PATTERNS[kind]))
        checks.append(wrong.fill_null(False).alias(name))
    flags = objects.select("file", "line", "text", *checks)
    long = (
        flags.unpivot(index=["file", "line", "text"], variable_name="field", value_name="wrong")
        .filter(pl.col("wrong"))
        .sort("file", "line", maintain_order=True)
    )
    kinds = dict(fields)
    problems = []
    for r in long.head(MAX_REPORTED).iter_rows(named=True):
        value = json.loads(r["text"]).get(r["field"])  # as JSON text: "12" (a string) is not 12
        problems.append({"file": r["file"], "line": r["line"], "field": r["field"],
                         "value": short(json.dumps(value, ensure_ascii=False)),
                         "problem": f"must be {_type_words(kinds[r['field']], nullable)}"})
    return Found(problems, long.height)


def _type_words(kind: Kind, nullable: bool) -> str:
    words = _TYPE_WORDS[kind]
    return words if nullable else words.removesuffix(" or null")


def _fixed_problems(objects: pl.DataFrame, name: str, value: str) -> Found:
    wrong = objects.filter(pl.col(f"s:{name}").ne_missing(value))
    problems = [{"file": r["file"], "line": r["line"], "field": name, "value": r[f"s:{name}"],
                 "problem": f"must be {value}"} for r in wrong.head(MAX_REPORTED).iter_rows(named=True)]
    return Found(problems, wrong.height)
