"""AMPLITUDE_EVENT_FILTER: a JSON list of conditions, compiled to one polars expression.

    [{"field": "event_type", "op": "not_in", "value": ["test", "debug"]},
     {"field": "event_properties.plan", "op": "is", "value": "pro"},
     {"field": "event_properties.price", "op": "gt", "value": 10}]

Conditions are ANDed. The expression runs over the normalized frame (transform.py): the
49 typed columns, the dict fields and the extra fields as exact JSON text. Values inside
JSON text are reached with JSONPath: `json_path_match` returns a string without its JSON
type, so type-sensitive tests (numbers, booleans) use JSONPath filters such as
`$['v'][?(@['price'] > 10)]`, which compare with the JSON type of the value.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from functools import reduce

import polars as pl
import polars.selectors as cs

from amplitude_assets.schema import EVENT_KINDS, JSON_TEXT_KINDS, Kind
from amplitude_assets.errors import SettingsError

OPS = ("is", "is_not", "in", "not_in", "contains", "exists", "gt", "lt")
PATH_ROOTS = ("event_properties", "user_properties", "groups", "data", "group_properties")
_VARIABLE = "AMPLITUDE_EVENT_FILTER"
_BAD_SEGMENT = re.compile(r"""['"\\\[\]]""")


def _fail(message: str) -> SettingsError:
    return SettingsError(f"{_VARIABLE}: {message}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _not_json(constant: str) -> float:
    raise json.JSONDecodeError(f"{constant} is not a JSON number", constant, 0)


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _check_condition(i: int, condition: object) -> dict:
    where = f"condition {i}"
    if not isinstance(condition, dict):
        raise _fail(f"{where} must be an object with field, op and value, got {json.dumps(condition)}")
    missing = [k for k in ("field", "op", "value") if k not in condition]
    if missing:
        raise _fail(f"{where} lacks {', '.join(missing)} (each condition is {{\"field\", \"op\", \"value\"}})")
    unknown = sorted(set(condition) - {"field", "op", "value"})
    if unknown:
        raise _fail(f"{where} has unknown key(s) {', '.join(unknown)}; only field, op and value are allowed")
    field, op, value = condition["field"], condition["op"], condition["value"]
    if not isinstance(field, str) or not field.strip():
        raise _fail(f"{where}: field must be a non-empty string, got {json.dumps(field)}")
    segments = field.split(".")
    if any(s == "" or _BAD_SEGMENT.search(s) for s in segments):
        raise _fail(f"{where}: field {field!r} has an empty path segment or one with quotes, backslashes or brackets")
    if len(segments) > 1 and segments[0] not in PATH_ROOTS:
        raise _fail(
            f"{where}: field {field!r} is a dotted path, but dotted paths go into "
            f"{', '.join(PATH_ROOTS)} only"
        )
    if op not in OPS:
        shown = repr(op) if isinstance(op, str) else json.dumps(op)
        raise _fail(f"{where}: op {shown} is not one of {', '.join(OPS)}")
    if op == "exists" and not isinstance(value, bool):
        raise _fail(f"{where}: op 'exists' takes true or false, got {json.dumps(value)}")
    if op in ("gt", "lt") and not _is_number(value):
        raise _fail(f"{where}: op {op!r} takes a number, got {json.dumps(value)}")
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not all(_is_scalar(v) for v in value):
            raise _fail(f"{where}: op {op!r} takes a list of strings, numbers, booleans or null, got {json.dumps(value)}")
    if op in ("is", "is_not") and not _is_scalar(value):
        raise _fail(f"{where}: op {op!r} takes a string, number, boolean or null, got {json.dumps(value)}")
    if op == "contains" and (value is None or not _is_scalar(value)):
        raise _fail(f"{where}: op 'contains' takes a string, number or boolean, got {json.dumps(value)}")
    return {"field": field, "op": op, "value": value}


def parse_filter(text: str) -> list[dict]:
    """Parse and validate the filter; raises SettingsError saying what is wrong and where."""
    try:
        conditions = json.loads(text, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{_VARIABLE} is not valid JSON: {exc}") from None
    if isinstance(conditions, dict):
        conditions = [conditions]  # a single condition is a one-element list
    if not isinstance(conditions, list):
        raise SettingsError(f"{_VARIABLE} must be a JSON list of conditions, got {type(conditions).__name__}")
    return [_check_condition(i, c) for i, c in enumerate(conditions, start=1)]


# -- typed top-level columns ---------------------------------------------------------------


def _typed_equals(name: str, kind: Kind, value: object) -> pl.Expr:
    col = pl.col(name)
    if value is None:
        return col.is_null()
    if kind in (Kind.INT, Kind.FLOAT):
        return col.cast(pl.Float64) == float(value) if _is_number(value) else pl.lit(False)
    if kind is Kind.BOOL:
        return col == value if isinstance(value, bool) else pl.lit(False)
    if kind is Kind.TIMESTAMP:
        try:
            when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return pl.lit(False)
        if when.tzinfo is not None:
            when = when.astimezone(timezone.utc).replace(tzinfo=None)
        return col == pl.lit(when, pl.Datetime("us"))
    return col == value if isinstance(value, str) else pl.lit(False)


def _typed_condition(name: str, kind: Kind, op: str, value: object) -> pl.Expr:
    col = pl.col(name)
    if op == "exists":
        return col.is_not_null() if value else col.is_null()
    if op in ("gt", "lt"):
        if kind not in (Kind.INT, Kind.FLOAT):
            return pl.lit(False)
        return col > value if op == "gt" else col < value
    if op == "contains":
        if kind is Kind.TIMESTAMP and isinstance(value, str):
            return col.dt.strftime("%Y-%m-%d %H:%M:%S%.6f").str.contains(value, literal=True)
        if kind in (Kind.STRING, Kind.UUID) and isinstance(value, str):
            return col.str.contains(value, literal=True)
        return pl.lit(False)
    raise AssertionError(op)


# -- values inside JSON text --------------------------------------------------------------


def _json_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(float(value)) if isinstance(value, float) else str(value)


def _jsonpath_string(value: str) -> str | None:
    """`value` as a JSONPath string literal, or None when it cannot be quoted safely."""
    if "\\" in value:
        return None
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


class _JsonValue:
    """The value at `path` inside JSON text `text` (an expression), with type-aware tests."""

    def __init__(self, text: pl.Expr, path: list[str]):
        self.text = text
        self.parent = "$" + "".join(f"['{s}']" for s in path[:-1])
        self.key = path[-1]
        self.raw = text.str.json_path_match(f"{self.parent}['{self.key}']")  # unquoted; null for null

    def where(self, comparison: str) -> pl.Expr:
        """True where the JSONPath filter `@[key] {comparison}` holds (typed comparison)."""
        return self.text.str.json_path_match(f"{self.parent}[?(@['{self.key}'] {comparison})]").is_not_null()

    @property
    def is_number(self) -> pl.Expr:
        return self.where(">= 0") | self.where("< 0")

    @property
    def is_bool(self) -> pl.Expr:
        return self.where("== true") | self.where("== false")

    @property
    def is_string(self) -> pl.Expr:
        container = self.raw.str.starts_with("[") | self.raw.str.starts_with("{")
        return self.raw.is_not_null() & ~self.is_number & ~self.is_bool & ~container

    def equals(self, value: object) -> pl.Expr:
        if value is None:
            return self.raw.is_null()
        if isinstance(value, str):
            literal = _jsonpath_string(value)
            if literal is not None:  # a typed comparison: a list or object never equals a string
                return self.where(f"== {literal}")
            return (self.raw == value) & self.is_string
        return self.where(f"== {_json_literal(value)}")

    def contains(self, value: object) -> pl.Expr:
        # On a list: membership, matched on the list's compact JSON text.
        token = re.escape(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
        in_list = self.raw.str.starts_with("[") & self.raw.str.contains(rf"(^\[|,){token}(,|\]$)")
        if isinstance(value, str):
            return (self.is_string & self.raw.str.contains(value, literal=True)) | in_list
        return in_list

    def condition(self, op: str, value: object) -> pl.Expr:
        if op == "exists":
            return self.raw.is_not_null() if value else self.raw.is_null()
        if op == "gt":
            return self.where(f"> {_json_literal(value)}")
        if op == "lt":
            return self.where(f"< {_json_literal(value)}")
        if op == "contains":
            return self.contains(value)
        raise AssertionError(op)


def _json_root(name: str) -> pl.Expr:
    """A field held as JSON text, wrapped as `{"v": ...}`; null when the hour lacks the column.

    Extra fields appear only in hours whose source carried them, so the column is picked
    with a selector that may match nothing.
    """
    value = pl.coalesce(cs.by_name(name, require_all=False), pl.lit(None, pl.String))
    return pl.concat_str(pl.lit('{"v":'), value, pl.lit("}"))


def _condition(condition: dict) -> pl.Expr:
    field, op, value = condition["field"], condition["op"], condition["value"]
    segments = field.split(".")
    kind = EVENT_KINDS.get(field)
    if kind is not None and kind not in JSON_TEXT_KINDS:  # JSON text is tested as JSON, like extras
        if op in ("is", "is_not", "in", "not_in"):
            items = value if op in ("in", "not_in") else [value]
            matched = reduce(lambda a, b: a | b, [_typed_equals(field, kind, v).fill_null(False) for v in items], pl.lit(False))
            return ~matched if op in ("is_not", "not_in") else matched
        return _typed_condition(field, kind, op, value)
    target = _JsonValue(_json_root(segments[0]), ["v", *segments[1:]])
    if op in ("is", "is_not", "in", "not_in"):
        items = value if op in ("in", "not_in") else [value]
        matched = reduce(lambda a, b: a | b, [target.equals(v).fill_null(False) for v in items], pl.lit(False))
        return ~matched if op in ("is_not", "not_in") else matched
    return target.condition(op, value)


def filter_expression(conditions: list[dict]) -> pl.Expr:
    """One boolean expression over the normalized frame: True keeps the event."""
    if not conditions:
        return pl.lit(True)
    return pl.all_horizontal([_condition(c).fill_null(False) for c in conditions]).alias("keep")
