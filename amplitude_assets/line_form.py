"""Amplitude's line form (SPEC section 4): which lines already have it, and the exported lines.

Every exported line holds the 49 fields and the hour's extra keys together, in code-point
order of their names, compactly. A line that came in that form (`canonical_rows`) is
written as it came, byte for byte, with `"key":null` put in its place for any of the
hour's extra keys it lacks (`insert_null_key`); the others are encoded from their
normalized fields (`encode_events`). `event_lines` makes a chunk's lines from both.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

import polars as pl

from amplitude_assets.schema import (
    EVENT_FIELDS,
    EVENT_KINDS,
    JSON_TEXT_KINDS,
    TIMESTAMP_FORMAT,
    TIMESTAMP_PATTERN,
    UUID_PATTERN,
    Kind,
    line_keys,
)
from amplitude_assets.transform import CANON, EXTRA, KEY_SEPARATOR, LINE, SORTED, TYPED

# -- which lines are already in the form ------------------------------------------------

# JSON whitespace between tokens, or text that looks like it: after a value and before
# `,` `}` `]`; after a comma and before a key or a value; around a key's colon; after
# `{` `[`; at either end. Inside a string such text is rare ("Suite 5, 100 Main St"), so
# the few lines this finds are looked at again with their strings taken out.
_WS = "[ \\t\\r\\n]"
_MAYBE_SPACED = "|".join([
    f'["0-9el}}\\]]{_WS}+[,}}\\]]',
    f',{_WS}+(?:["\\-0-9{{\\[]|true|false|null)',
    f'"{_WS}+:', f'":{_WS}', f'[{{\\[]{_WS}', f"^{_WS}", f"{_WS}$",
])
_JSON_STRING = r'"(?:[^"\\]|\\.)*"'
_CHECKED_FORM = {Kind.TIMESTAMP: TIMESTAMP_PATTERN, Kind.UUID: UUID_PATTERN}


def canonical_rows(parsed: pl.DataFrame, normalized: pl.DataFrame) -> pl.Series:
    """Which parsed lines are already in the exported form, but perhaps for extra keys they lack.

    Such a line (SPEC section 4) has its keys (the 49 and its extra keys) in code-point
    order (`line_keys`), each once, every field of its JSON type, timestamps and the uuid
    in their canonical forms, nothing to repair (no value that normalizing nulls, no
    empty `user_id` or `device_id`), and no whitespace between its tokens. It is written
    as it came, with `"key":null` put in its place for each of the hour's extra keys it
    lacks (`writer.event_lines`). `normalized` is `parsed` normalized, row for row.
    """
    if not parsed.height:
        return pl.Series(CANON, [], dtype=pl.Boolean)
    conditions = [pl.col(TYPED), pl.col(SORTED)]
    for name, kind in EVENT_FIELDS:
        raw = pl.col(name)
        if kind in _CHECKED_FORM:
            conditions.append(raw.is_null() | raw.str.contains(_CHECKED_FORM[kind]))
        if name in ("user_id", "device_id"):
            conditions.append(raw.is_null() | (raw != ""))
        if kind not in (Kind.STRING, Kind.DICT):
            conditions.append(raw.is_null() | normalized[name].is_not_null())
    canon = parsed.select(pl.all_horizontal(conditions).fill_null(False).alias(CANON)).to_series()
    candidates = canon.arg_true()
    looked = parsed[LINE].gather(candidates).str.contains(_MAYBE_SPACED)
    if looked.any():
        rows = candidates.filter(looked)
        spaced = parsed[LINE].gather(rows).str.replace_all(_JSON_STRING, "").str.contains(r"[ \t\r\n]")
        canon = canon.scatter(rows, ~spaced)
    return canon


# -- the exported lines -----------------------------------------------------------------


def _json_scalar(expr: pl.Expr) -> pl.Expr:
    """A column's values as JSON literals (`"text"`, `12`, `1.5`, `true`, `null`)."""
    return pl.struct(expr.alias("v")).struct.json_encode().str.slice(5).str.head(-1)


def json_fragment(name: str, kind: Kind | None) -> pl.Expr:
    """The JSON text of field `name`; `kind` None means an extra field already held as JSON."""
    col = pl.col(name)
    if kind is None or kind is Kind.ARRAY_OR_STRING or kind is Kind.NUMBER:
        return col.fill_null("null")  # JSON text, as sent
    if kind is Kind.DICT:
        return col.fill_null("{}")
    if kind is Kind.TIMESTAMP:
        return pl.concat_str(pl.lit('"'), col.dt.strftime(TIMESTAMP_FORMAT), pl.lit('"')).fill_null("null")
    return _json_scalar(col)


@functools.lru_cache(maxsize=64)
def _event_line(keys: tuple[str, ...], present: frozenset[str]) -> pl.Expr:
    """`{...}`: the 49 fields and the extra `keys`, in code-point order (`line_keys`).

    The scalar fields between two fields held as JSON text are encoded as one struct (one
    JSON encoder call, not one per field), and only the JSON-text fields (dicts, the
    as-sent ones and the extra fields) are spliced in. An extra key the frame lacks
    (`present` are those it has) is `null`.
    """
    parts: list[pl.Expr] = []
    run: list[pl.Expr] = []

    def close_run() -> None:
        if run:
            parts.append(pl.struct(run).struct.json_encode().str.slice(1).str.head(-1))
            run.clear()

    for name in line_keys(keys):
        kind = EVENT_KINDS.get(name)
        if kind is None or kind in JSON_TEXT_KINDS:
            close_run()
            key = pl.lit(json.dumps(name, ensure_ascii=False) + ":")
            value = json_fragment(name, kind) if kind is not None or name in present else pl.lit("null")
            parts.append(pl.concat_str(key, value))
        else:
            value = pl.col(name).dt.strftime(TIMESTAMP_FORMAT) if kind is Kind.TIMESTAMP else pl.col(name)
            run.append(value.alias(name))
    close_run()
    pieces: list[pl.Expr] = [pl.lit("{")]
    for i, part in enumerate(parts):
        pieces.extend([pl.lit(","), part] if i else [part])
    pieces.append(pl.lit("}"))
    return pl.concat_str(pieces)


def encode_events(frame: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """Exported lines of normalized rows: the 49 fields and `keys` as extra fields, in code-point order."""
    present = frozenset(k for k in keys if k in frame.columns)
    return frame.select(_event_line(tuple(keys), present).alias("line"))


def event_lines(frame: pl.DataFrame, keys: Sequence[str]) -> pl.Series:
    """The exported lines of a shaped chunk whose hour has extra keys `keys` (so far).

    A line already in the form (`CANON`) is written as it came, byte for byte, with
    `"key":null` put in its place for each of `keys` it lacks; the others are encoded from
    their normalized fields (`encode_events`). Only the lines that need it are encoded;
    they are put back in their places.
    """
    canon = frame[CANON]
    lines = frame[LINE].rename("line")
    if not canon.all():
        todo = (~canon).arg_true()
        encoded = encode_events(frame.filter(~canon), keys)["line"]
        lines = lines.scatter(todo, encoded) if len(todo) < len(lines) else encoded
    hour = sorted(keys)
    short = canon & (frame[EXTRA] != KEY_SEPARATOR.join(hour))
    if short.any():
        rows = short.arg_true()
        extras = frame[EXTRA].gather(rows)
        fixed = lines.gather(rows)
        for have in extras.unique().to_list():
            group = (extras == have).arg_true()
            had = have.split(KEY_SEPARATOR) if have else []
            fixed = fixed.scatter(group, with_keys(fixed.gather(group), had, hour)["line"])
        lines = lines.scatter(rows, fixed)
    return lines


def with_keys(lines: pl.Series, keys: list[str], extras: list[str]) -> pl.DataFrame:
    """Lines written with extra keys `keys`, as they are with the hour's `extras`: each key
    they lack goes in as `null`, in its code-point place. The rest of each line stays as it is."""
    have = line_keys(keys)
    for key in sorted(set(extras) - set(keys)):
        lines = insert_null_key(lines, have, key)
        have = line_keys([*have, key])
    return pl.DataFrame({"line": lines})


def insert_null_key(lines: pl.Series, keys: list[str], key: str) -> pl.Series:
    """Compact JSON lines whose keys are `keys` (in code-point order), with `"key":null` in its place.

    The key goes before the first of `keys` that sorts after it, or at the end. That
    key's quoted name, after a comma, is found by text where it occurs once in the line
    (inside a string the quotes would be escaped, so the one occurrence is the top-level
    key); a line that also has it nested is walked key by key (`top_level_key_at`).
    """
    new = json.dumps(key, ensure_ascii=False) + ":null"
    after = next((k for k in keys if k > key), None)
    if after is None:
        return lines.str.head(-1) + ("," + new + "}")
    if after == keys[0]:
        return "{" + new + "," + lines.str.slice(1)
    marker = "," + json.dumps(after, ensure_ascii=False) + ":"
    once = lines.str.count_matches(marker, literal=True) == 1
    result = lines.str.replace(marker, "," + new + marker, literal=True, n=1)
    if once.all():
        return result
    rows = (~once).arg_true()
    fixed = []
    for text in lines.gather(rows).to_list():
        at = top_level_key_at(text, after)
        fixed.append(text[:at] + "," + new + text[at:])
    return result.scatter(rows, pl.Series(fixed, dtype=pl.String))


def top_level_key_at(line: str, key: str) -> int:
    """The index of the comma before the top-level `key` of a compact JSON object line."""
    scan = json.JSONDecoder().scan_once
    i = 1
    while True:
        name, end = json.decoder.scanstring(line, i + 1)
        if name == key:
            return i - 1
        _, i = scan(line, end + 1)  # past the colon, then the value
        if line[i] != ",":
            raise ValueError(f"no top-level key {key!r} in the line")
        i += 1
