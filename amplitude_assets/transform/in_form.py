"""Lines already in Amplitude's form, recognized by their text in one pass (SPEC section 4).

Most of an hour's lines came from Amplitude in the exported form: the same keys on every
line, in code-point order, compact, every field of its JSON type and canonical form. Such
a line is written as it came, so only a few of its fields are ever read: the upload
time (the hour), the dedup keys, the identities `merged_ids` needs and the filter's
fields. `split_in_form` finds these lines and reads just those fields; every other line
goes through the full parse (`parsing.parse`), which decides what it is as before.

A line is taken here when one anchored regular expression, built from the chunk's keys
(`form_pattern`), matches its exact text and DuckDB's JSON parser reads it:

- the expression spells out the keys, in order, each followed by a value of its field's
  form: a canonical timestamp on a valid date, a lowercase uuid, an integer within int64,
  a finite number, a boolean, a string (non-empty for `user_id` and `device_id`), an
  object for the dict fields, or null where the field may be null. Objects and arrays are
  matched by their brackets, with strings taken whole, so the expression follows the
  line's top level exactly; no whitespace is allowed between tokens, and outside strings
  only numbers and `true`, `false` and `null`;
- the parse that reads the few fields also rejects what is not JSON, and a trailing comma
  (which DuckDB's reader would let pass) sends the line to the full parse.

So a line taken here is one the full parse would find in the form, with the same field
values; the tests hold the two paths to the same exported bytes. A line that nests
deeper than `FORM_DEPTH`, or has another key set than the chunk's first line in the form,
takes the full parse.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import polars as pl

from amplitude_assets import duck
from amplitude_assets.schema import EVENT_FIELD_NAMES, EVENT_FIELDS, EVENT_KINDS, Kind
from amplitude_assets.transform.columns import CANON, EXTRA, KEY_SEPARATOR, LINE, POS, RESERVED, _arrow, _json_path, _sql_text
from amplitude_assets.transform.normalizing import _canonical

FORM_DEPTH = 4  # objects and arrays nested this deep inside a field are matched here
PROBE_LINES = 16  # lines looked at for the chunk's keys
PART_ROWS = 16_384  # a part smaller than this is not worth a thread of its own

# Fields this path can give the value of: their text in the line is their value (strings
# unescaped, numbers and booleans as their JSON text), as the full parse reads them.
PLAIN_KINDS = frozenset({Kind.TIMESTAMP, Kind.INT, Kind.FLOAT, Kind.BOOL, Kind.UUID, Kind.STRING})

_STRING = r'"(?:[^"\\\x00-\x1f]|\\.)*"'
_FILLED = r'"(?:[^"\\\x00-\x1f]|\\.)+"'
_BARE = r"[-+.,:0-9eE]|true|false|null"  # what may stand outside strings inside an object or array


def _nested(depth: int) -> str:
    """The text inside an object's or array's brackets, nested up to `depth` more levels."""
    inner = f"(?:{_STRING}|{_BARE})*"
    for _ in range(depth):
        inner = f"(?:{_STRING}|{_BARE}|[{{\\[]{inner}[}}\\]])*"
    return inner


_INSIDE = _nested(FORM_DEPTH - 1)
_OBJECT = f"\\{{{_INSIDE}\\}}"
_ARRAY = f"\\[{_INSIDE}\\]"
# Within int64 by its digits; finite as a double by its digits and exponent.
_INT = r"-?(?:0|[1-9][0-9]{0,17})"
_FINITE = r"-?(?:0|[1-9][0-9]{0,15})(?:\.[0-9]+)?(?:[eE][+-]?[0-9]{1,2})?"
_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
# A valid date (29 February in leap years only), a time of day without leap seconds.
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)"
_DATE = (r"(?:[0-9]{4}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)"
         rf"|(?:0[13578]|1[02])-31)|{_LEAP_YEAR}-02-29)")
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}"
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

_VALUES: dict[Kind, str] = {
    Kind.TIMESTAMP: f'"{_DATE} {_TIME}"|null',
    Kind.INT: f"{_INT}|null",
    Kind.FLOAT: f"{_FINITE}|null",
    Kind.BOOL: "true|false|null",
    Kind.UUID: f'"{_UUID}"|null',
    Kind.STRING: f"{_STRING}|null",
    Kind.DICT: _OBJECT,  # never null
    Kind.ARRAY_OR_STRING: f"{_ARRAY}|{_STRING}|null",
    Kind.NUMBER: f"{_FINITE}|null",
}
_ANY = f"{_STRING}|{_NUMBER}|true|false|null|{_OBJECT}|{_ARRAY}"  # an extra key's value
_NON_EMPTY = ("user_id", "device_id")  # the full parse nulls an empty one: not in the form


def _value(key: str) -> str:
    kind = EVENT_KINDS.get(key)
    if key in _NON_EMPTY:
        return f"{_FILLED}|null"
    return _VALUES[kind] if kind is not None else _ANY


@functools.lru_cache(maxsize=16)
def form_pattern(keys: tuple[str, ...]) -> str:
    """The expression a line in the form with exactly `keys` (in code-point order) matches."""
    fields = [("," if i else "") + re.escape(json.dumps(key, ensure_ascii=False)) + f":(?:{_value(key)})"
              for i, key in enumerate(keys)]
    return "^\\{" + "".join(fields) + "\\}$"


def form_keys(lines: pl.Series) -> tuple[str, ...] | None:
    """The keys of the first line (of the first few) that has the 49 fields and its keys in
    code-point order: the key set this chunk's lines in the form are looked for with."""
    for text in lines.head(PROBE_LINES).to_list():
        try:
            keys = tuple(json.loads(text))
        except (ValueError, TypeError):
            continue
        if (keys == tuple(sorted(set(keys))) and set(EVENT_FIELD_NAMES) <= set(keys)
                and not set(keys) & set(RESERVED)):
            return keys
    return None


def readable(fields: Sequence[str]) -> bool:
    """Whether this path can give these fields' values (else every line takes the full parse)."""
    return all(EVENT_KINDS.get(name) in PLAIN_KINDS for name in fields)


@dataclass(frozen=True)
class InForm:
    """A chunk's lines in the form: their positions and text, their fields' text, their extra keys."""

    frame: pl.DataFrame  # POS, LINE and the text of each asked-for field, in source order
    extras: tuple[str, ...]  # the lines' keys beyond the 49, in code-point order

    @property
    def height(self) -> int:
        return self.frame.height


def split_in_form(lines: pl.Series, fields: Sequence[str]) -> tuple[InForm | None, pl.Series]:
    """The chunk's lines in the form with `fields` read, and the positions of the others.

    The lines are looked at in one part per DuckDB thread, side by side (the expression and
    DuckDB both release the GIL).
    """
    everything = pl.int_range(len(lines), eager=True, dtype=pl.Int64)
    keys = form_keys(lines) if len(lines) else None
    if keys is None:
        return None, everything
    pattern = form_pattern(keys)
    names = list(dict.fromkeys(fields))
    workers = max(1, min(int(duck.limits()["threads"]), len(lines) // PART_ROWS))
    size = -(-len(lines) // workers)

    def look(start: int) -> pl.DataFrame:
        part = lines.slice(start, size)
        taken = part.str.contains(pattern) & ~part.str.contains(",}", literal=True) & ~part.str.contains(",]", literal=True)
        found = pl.DataFrame({POS: pl.int_range(start, start + len(part), eager=True, dtype=pl.Int64).filter(taken),
                              LINE: part.filter(taken)})
        return _read_fields(found, names)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="amplitude-form") as pool:
        found = pl.concat(list(pool.map(look, range(0, len(lines), size))))
    extras = tuple(k for k in keys if k not in EVENT_KINDS)
    others = everything.filter(~everything.is_in(found[POS])) if found.height else everything
    return InForm(found, extras), others


def _read_fields(found: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """`found` with each field's text, for the lines DuckDB parses (the others are dropped)."""
    if not found.height:
        return found.with_columns(pl.lit(None, pl.String).alias(n) for n in names)
    paths = ", ".join(_sql_text(_json_path(n)) for n in names)
    con = duck.connect(threads=1)
    try:
        con.register("found", _arrow(found.select(pl.col(LINE).alias("line"))))
        values = con.sql(f"SELECT try(json_extract_string(line, [{paths}])) AS v FROM found").pl()["v"]
    finally:
        con.close()
    parsed = values.is_not_null()
    found = found.with_columns(values.list.get(i).alias(n) for i, n in enumerate(names))
    return found.filter(parsed) if not parsed.all() else found


def normalized_in_form(in_form: InForm, names: Sequence[str]) -> pl.DataFrame:
    """The lines' fields in their contract types (they are canonical: a single exact pass),
    with POS, LINE, EXTRA and CANON as the full path's normalized rows carry them."""
    kinds = dict(EVENT_FIELDS)
    frame = in_form.frame
    return frame.select(
        *[_canonical(n, kinds[n]).alias(n) for n in dict.fromkeys(names)],
        pl.col(POS), pl.col(LINE),
        pl.lit(KEY_SEPARATOR.join(in_form.extras), pl.String).alias(EXTRA),
        pl.lit(True).alias(CANON),
    )
