"""Values exactly as sent: the JSON text of a top-level key as it stands in its line."""

from __future__ import annotations

import json

import polars as pl


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
