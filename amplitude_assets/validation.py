"""What an exported line must be, checked by DuckDB's JSON functions: the rules the `schema`
check reads parts back by, and the validation the export runs on the lines it encodes.

Nothing here shares code with the encoder (`line_form`): the export's own lines are held to
these rules by a validator that did not write them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from amplitude_assets import duck
from amplitude_assets.schema import EVENT_FIELD_NAMES, EVENT_FIELDS, JSON_TYPES, VALUE_PATTERNS, Kind, line_keys


@dataclass(frozen=True)
class LineRules:
    """What each line of an hour's files must be."""

    head: tuple[str, ...]  # the keys every line starts with, in order
    fields: tuple[tuple[str, Kind], ...]  # their JSON types
    allow_extras: bool  # the first line's further keys, then the same on every line
    nullable: bool = True
    fixed: tuple[tuple[str, str], ...] = ()  # fields whose every value must be this JSON text
    unique: tuple[tuple[str, ...], ...] = ()  # keys that must not repeat (all parts non-null)
    in_code_point_order: bool = False  # the head and the extras together, sorted (events)

    def expected_keys(self, first: list[str] | None) -> list[str]:
        """The hour's keys: the head, then the first line's extras when they follow it; or, in
        code-point order, the head's and the first line's others together."""
        if self.in_code_point_order:
            return line_keys(k for k in (first or []) if k not in self.head)
        if first is None:
            return list(self.head)
        head = list(self.head)
        extras = first[len(head):] if self.allow_extras and first[: len(head)] == head else []
        return [*head, *extras]

    @property
    def string_fields(self) -> list[str]:
        """Fields whose string value is looked at: patterns, fixed values, unique keys."""
        names = [n for n, k in self.fields if k in VALUE_PATTERNS]
        names += [n for n, _ in self.fixed]
        names += [n for key in self.unique for n in key]
        return list(dict.fromkeys(names))


def json_path(key: str) -> str:
    quoted = '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "'" + quoted.replace("'", "''") + "'"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def scan_sql(rules: LineRules, expected: list[str]) -> str:
    """One yes/no per line (keys, types, patterns, fixed values) and the key fields' strings.

    Three JSON functions read each line: its keys, its fields' types, and a few strings.
    A line that is not JSON makes them fail; `try` turns that into NULL, and NULL is "no".
    """
    strings = rules.string_fields
    index = {name: i + 1 for i, name in enumerate(strings)}
    conditions = [f"array_to_string(k, chr(31)) = {_literal(chr(31).join(expected))}"]
    for i, (name, kind) in enumerate(rules.fields, start=1):
        allowed = [t for t in JSON_TYPES[kind] if rules.nullable or t != "NULL"]
        condition = f"t[{i}] IN ({', '.join(map(_literal, allowed))})"
        if kind in VALUE_PATTERNS:
            condition = f"({condition} AND (t[{i}] <> 'VARCHAR' OR regexp_full_match(s[{index[name]}], {_literal(VALUE_PATTERNS[kind].strip('^$'))})))"
        conditions.append(condition)
    conditions += [f"s[{index[name]}] IS NOT DISTINCT FROM {_literal(value)}" for name, value in rules.fixed]
    keys = [f's[{index[name]}] AS "{name}"' for name in dict.fromkeys(n for key in rules.unique for n in key)]
    paths = ", ".join(json_path(n) for n, _ in rules.fields)
    string_paths = ", ".join(json_path(n) for n in strings)
    return (
        f"SELECT coalesce({' AND '.join(conditions)}, false) AS ok{''.join(', ' + k for k in keys)} "
        f"FROM (SELECT _i, try(json_keys(text)) AS k, try(json_type(text, [{paths}])) AS t"
        + (f", try(json_extract_string(text, [{string_paths}])) AS s" if strings else "")
        + " FROM lines) ORDER BY _i"
    )


EVENT_RULES = LineRules(head=EVENT_FIELD_NAMES, fields=EVENT_FIELDS, allow_extras=True,
                        unique=(("uuid",), ("$insert_id", "device_id")), in_code_point_order=True)


def invalid_lines(lines: pl.Series, expected: list[str]) -> list[str]:
    """The lines (of one hour's events) that break the `schema` check's rules, with keys `expected`."""
    con = duck.connect()
    try:
        con.register("lines", pl.DataFrame({"text": lines}).with_row_index("_i")
                     .to_arrow(compat_level=pl.CompatLevel.newest()))
        ok = con.sql(scan_sql(EVENT_RULES, expected)).pl()["ok"]
    finally:
        con.close()
    return lines.filter(~ok).to_list()


class Validation:
    """What the writing step establishes about the exact text of the hour's lines (SPEC section 7).

    A line written as it came was validated as it was read: most by one anchored
    expression of the hour's keys and their fields' forms, with DuckDB's JSON parser
    reading the line (`transform.in_form`), the others by DuckDB's JSON functions and
    patterns (`line_form.canonical_rows`). A line the encoder wrote is validated after encoding,
    by the `schema` check's own rules on DuckDB (`invalid_lines`), which share
    nothing with the polars encoder. A line that fails means a bug: the export stops
    before anything in the container changes. The record goes into the marker, beside
    each part's MD5, which Azure verified block by block as it arrived; the checks compare
    that MD5 with the container's listing.
    """

    def __init__(self) -> None:
        self.lines = 0
        self.as_sent = 0

    def add(self, canon: pl.Series, lines: pl.DataFrame, keys: Sequence[str]) -> None:
        self.lines += lines.height
        as_sent = int(canon.sum())
        self.as_sent += as_sent
        if as_sent < lines.height:
            check(lines["line"].filter(~canon), keys)

    def record(self) -> dict:
        return {"lines": self.lines, "as_sent": self.as_sent, "encoded": self.lines - self.as_sent,
                "schema": True, "by": "duckdb"}


def check(lines: pl.Series, keys: Sequence[str]) -> None:
    """Raise if any of these exported lines breaks the schema for an hour with extra keys `keys`."""
    bad = invalid_lines(lines, line_keys(keys))
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(lines)} encoded lines fail the schema, such as: {bad[0][:300]}")
