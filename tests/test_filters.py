"""AMPLITUDE_EVENT_FILTER: each operator, dotted paths into the property dicts, bad filters."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from amplitude_assets.filters import filter_expression, parse_filter
from amplitude_assets.settings import Settings, SettingsError
from amplitude_assets.shaping import process_hour

HOUR = datetime(2020, 1, 25, 17, tzinfo=timezone.utc)

EVENTS = [
    {"event_type": "purchase", "user_id": "u1", "amplitude_id": 10, "paying": True, "location_lat": 1.5,
     "event_properties": {"plan": "pro", "price": 20, "tags": ["a", "b"], "nested": {"level": 3}},
     "user_properties": {"country": "DE"}, "groups": {"company": "acme"}, "data": {"path": "/x"},
     "plan": "enterprise"},
    {"event_type": "view", "user_id": None, "amplitude_id": 11, "paying": False,
     "event_properties": {"plan": "free", "price": "20", "tags": "a b", "nested": {"level": "3"}},
     "user_properties": {}, "groups": {}, "data": {}},
    {"event_type": "test event", "user_id": "u3", "amplitude_id": 12,
     "event_properties": {"plan": None, "price": 5.5, "tags": [1, 2]},
     "user_properties": {"country": "FR"}, "groups": {"company": None}, "data": {"path": "/y"}},
    {"event_type": "purchase", "user_id": "u4", "amplitude_id": 13,
     "event_properties": {"price": 1, "tags": []},
     "user_properties": {"country": "DE"}, "groups": {}, "data": {}},
]


def lines() -> bytes:
    out = []
    for i, event in enumerate(EVENTS):
        row = {"uuid": f"00000000-0000-0000-0000-00000000000{i}", "server_upload_time": f"2020-01-25 17:0{i}:00.000000",
               "device_id": f"d{i}", "$insert_id": f"i{i}", **event}
        out.append(json.dumps(row))
    return ("\n".join(out) + "\n").encode()


def kept(conditions: list[dict]) -> list[int]:
    """The amplitude_ids the filter keeps, through the real transform."""
    keep = filter_expression(parse_filter(json.dumps(conditions)))
    result = process_hour([lines()], HOUR, keep)
    assert result.counts.filtered == len(EVENTS) - result.frame.height
    assert result.counts.reconciles()
    return result.frame["amplitude_id"].to_list()


@pytest.mark.parametrize("conditions,expected", [
    ([], [10, 11, 12, 13]),
    # is / is_not on typed columns; null matches only null
    ([{"field": "event_type", "op": "is", "value": "purchase"}], [10, 13]),
    ([{"field": "event_type", "op": "is_not", "value": "purchase"}], [11, 12]),
    ([{"field": "user_id", "op": "is", "value": None}], [11]),
    ([{"field": "user_id", "op": "is_not", "value": None}], [10, 12, 13]),
    ([{"field": "paying", "op": "is", "value": True}], [10]),
    ([{"field": "amplitude_id", "op": "is", "value": 12}], [12]),
    ([{"field": "amplitude_id", "op": "is", "value": "12"}], []),
    ([{"field": "server_upload_time", "op": "is", "value": "2020-01-25 17:01:00"}], [11]),
    # in / not_in
    ([{"field": "event_type", "op": "in", "value": ["view", "test event"]}], [11, 12]),
    ([{"field": "event_type", "op": "not_in", "value": ["view", "test event"]}], [10, 13]),
    ([{"field": "user_id", "op": "in", "value": [None, "u4"]}], [11, 13]),
    # contains: substring on strings
    ([{"field": "event_type", "op": "contains", "value": "test"}], [12]),
    # exists
    ([{"field": "location_lat", "op": "exists", "value": True}], [10]),
    ([{"field": "location_lat", "op": "exists", "value": False}], [11, 12, 13]),
    # gt / lt: numbers only
    ([{"field": "amplitude_id", "op": "gt", "value": 11}], [12, 13]),
    ([{"field": "amplitude_id", "op": "lt", "value": 11}], [10]),
    ([{"field": "event_type", "op": "gt", "value": 1}], []),
    # ANDed
    ([{"field": "event_type", "op": "is", "value": "purchase"},
      {"field": "user_properties.country", "op": "is", "value": "DE"},
      {"field": "amplitude_id", "op": "gt", "value": 10}], [13]),
])
def test_top_level_operators(conditions, expected):
    assert kept(conditions) == expected


@pytest.mark.parametrize("conditions,expected", [
    ([{"field": "event_properties.plan", "op": "is", "value": "pro"}], [10]),
    ([{"field": "event_properties.plan", "op": "is_not", "value": "pro"}], [11, 12, 13]),
    # null matches only null: a JSON null and an absent key
    ([{"field": "event_properties.plan", "op": "is", "value": None}], [12, 13]),
    ([{"field": "event_properties.plan", "op": "in", "value": ["pro", "free"]}], [10, 11]),
    ([{"field": "event_properties.plan", "op": "not_in", "value": ["pro", "free"]}], [12, 13]),
    # a number is not the string "20"; gt/lt are false for strings
    ([{"field": "event_properties.price", "op": "is", "value": 20}], [10]),
    ([{"field": "event_properties.price", "op": "is", "value": "20"}], [11]),
    ([{"field": "event_properties.price", "op": "gt", "value": 5}], [10, 12]),
    ([{"field": "event_properties.price", "op": "lt", "value": 6}], [12, 13]),
    ([{"field": "event_properties.price", "op": "gt", "value": 5.4}], [10, 12]),
    # contains: membership on lists, substring on strings
    ([{"field": "event_properties.tags", "op": "contains", "value": "a"}], [10, 11]),
    ([{"field": "event_properties.tags", "op": "contains", "value": 2}], [12]),
    ([{"field": "event_properties.tags", "op": "contains", "value": "b"}], [10, 11]),
    # nested paths
    ([{"field": "event_properties.nested.level", "op": "gt", "value": 2}], [10]),
    ([{"field": "event_properties.nested.level", "op": "is", "value": "3"}], [11]),
    # exists: present and not null
    ([{"field": "event_properties.plan", "op": "exists", "value": True}], [10, 11]),
    ([{"field": "groups.company", "op": "exists", "value": True}], [10]),
    ([{"field": "groups.company", "op": "exists", "value": False}], [11, 12, 13]),
    ([{"field": "data.path", "op": "is", "value": "/y"}], [12]),
    ([{"field": "user_properties.country", "op": "is", "value": "DE"}], [10, 13]),
    # an extra top-level field, present in some events only
    ([{"field": "plan", "op": "is", "value": "enterprise"}], [10]),
    ([{"field": "plan", "op": "exists", "value": False}], [11, 12, 13]),
    ([{"field": "no_such_field", "op": "exists", "value": True}], []),
    ([{"field": "no_such_field", "op": "is", "value": None}], [10, 11, 12, 13]),
])
def test_dotted_paths_into_property_dicts(conditions, expected):
    assert kept(conditions) == expected


@pytest.mark.parametrize("text,message", [
    ("[{", "AMPLITUDE_EVENT_FILTER is not valid JSON"),
    ('"event_type"', "AMPLITUDE_EVENT_FILTER must be a JSON list of conditions"),
    ('[{"field": "event_type", "op": "is", "value": "a"}, {"field": "x", "op": "equals", "value": 1}]',
     "AMPLITUDE_EVENT_FILTER: condition 2: op 'equals' is not one of is, is_not, in, not_in, contains, exists, gt, lt"),
    ('[{"field": "x", "op": "is"}]', "condition 1 lacks value"),
    ('[{"field": "x", "op": "is", "value": 1, "extra": 2}]', "condition 1 has unknown key(s) extra"),
    ('[{"field": "x", "op": "in", "value": "a"}]', "condition 1: op 'in' takes a list"),
    ('[{"field": "x", "op": "gt", "value": "5"}]', "condition 1: op 'gt' takes a number"),
    ('[{"field": "x", "op": "exists", "value": "yes"}]', "condition 1: op 'exists' takes true or false"),
    ('[{"field": "city.name", "op": "is", "value": "x"}]', "dotted paths go into event_properties"),
    ('[{"field": "event_properties..a", "op": "is", "value": "x"}]', "empty path segment"),
    ('[{"field": "", "op": "is", "value": "x"}]', "field must be a non-empty string"),
    ('[3]', "condition 1 must be an object"),
])
def test_malformed_filter_message(text, message):
    with pytest.raises(SettingsError) as raised:
        parse_filter(text)
    assert message in str(raised.value)


def test_malformed_filter_fails_when_definitions_load(settings_env):
    settings_env(AMPLITUDE_EVENT_FILTER='[{"field": "event_type", "op": "equals", "value": "x"}]')
    with pytest.raises(SettingsError, match=r"AMPLITUDE_EVENT_FILTER: condition 1: op 'equals'"):
        Settings.from_env()


@pytest.mark.parametrize("text", [
    '[{"field": "event_properties.price", "op": "gt", "value": NaN}]',
    '[{"field": "event_properties.price", "op": "lt", "value": Infinity}]',
    '[{"field": "event_properties.price", "op": "gt", "value": 1e400}]',
])
def test_non_finite_numbers_are_refused_at_load(text):
    with pytest.raises(SettingsError, match="AMPLITUDE_EVENT_FILTER"):
        parse_filter(text)


def test_a_filter_on_an_extra_field_the_hour_lacks_exports_through_dagster(container, settings_env, blobs):
    from tests.helpers import definitions, lines_of, materialize

    settings_env(AMPLITUDE_START="2020-01-25-00:00", AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR=100,
                 AMPLITUDE_EVENT_FILTER='[{"field": "partner_id", "op": "exists", "value": false}]')
    assert materialize(definitions(), ["events"], partition="2020-01-25-03:00").success
    manifest = json.loads(blobs(container)["187520/187520_2020-01-25_3_complete"])
    assert manifest["counts"]["filtered"] == 0 and manifest["rows"] == manifest["counts"]["exported"] > 0
    assert len(lines_of(blobs(container)["187520/187520_2020-01-25_3#0.json.gz"])) == manifest["rows"]


def test_equality_with_a_string_that_looks_like_a_list_or_object():
    rows = [{"s": "[x]"}, {"s": ["x"]}, {"s": "{y}"}, {"s": "[1]"}, {"s": [1]}, {"s": "it's"}]
    lines = "".join(
        json.dumps({"server_upload_time": "2020-01-25 17:10:00.000000", "uuid": None, "event_properties": p}) + "\n"
        for p in rows
    ).encode()
    for value, expected in (("[x]", [{"s": "[x]"}]), ("{y}", [{"s": "{y}"}]), ("[1]", [{"s": "[1]"}]), ("it's", [{"s": "it's"}])):
        keep = filter_expression(parse_filter(json.dumps([{"field": "event_properties.s", "op": "is", "value": value}])))
        result = process_hour([lines], datetime(2020, 1, 25, 17, tzinfo=timezone.utc), keep)
        assert [json.loads(p) for p in result.frame["event_properties"].to_list()] == expected, value
