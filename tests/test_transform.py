"""process_hour as a pure function: lenient parsing, rejects, dedup, exact round trips, counts."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import polars as pl
import pytest

from amplitude_assets.destination.writer import encode_lines, jsonl_bytes
from amplitude_assets.schema import DICT_FIELDS, EVENT_FIELD_NAMES
from amplitude_assets.shaping import HourSummary, ShapedHour, process_hour
from amplitude_assets.transform import NOT_UTF8, parse_timestamp

HOUR = datetime(2020, 1, 25, 17, tzinfo=timezone.utc)


def pairs(text: str):
    """JSON with every object as a list of (key, value) pairs: key order and types count."""
    return json.loads(text, object_pairs_hook=list)


def exported(result) -> list[str]:
    """The hour's exported lines exactly as the writer serializes them."""
    return jsonl_bytes(encode_lines(result.frame)).decode().splitlines()


def dumps(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False)


# A messy hour, in source order. `expect` lists the uuids exported, in order.
GOOD_UUID = "0a6e8a48-6c5e-4a1d-9d7a-0f0b7a1e2c01"
MESSY = [
    # 0: a full, clean row with extra fields and unicode/escapes in its properties
    dumps({"server_received_time": "2020-01-25 17:00:01.000001", "app": 187520, "uuid": GOOD_UUID,
           "event_time": "2020-01-25 16:59:59.5", "server_upload_time": "2020-01-25 17:00:01.123456",
           "user_id": "ユーザー1", "device_id": "d-1", "$insert_id": "i-1", "amplitude_id": 11,
           "event_type": "Search", "event_properties": {"query": "café ☕ \"quoted\" \\ back\nslash\ttab",
                                                        "results": 3, "emoji": "🎧"},
           "$insert_key": "k-0", "plan": {"branch": "main", "version": "7"}}),
    # 1: the same uuid again: a duplicate
    dumps({"server_upload_time": "2020-01-25 17:05:00", "uuid": GOOD_UUID, "event_type": "dup"}),
    # 2: T separator, Z suffix, no fraction; colon-date processed_time; epoch ms; an offset
    dumps({"server_upload_time": "2020-01-25T17:10:00Z", "uuid": "0a6e8a48-6c5e-4a1d-9d7a-0f0b7a1e2c02",
           "processed_time": "2020:01:25 17:10:02.047099", "client_upload_time": 1579972199123,
           "event_time": "2020-01-25T18:09:58.25+01:00", "user_creation_time": "2020-01-25T17:00:00+00:00",
           "data_type": "event", "user_id": "", "device_id": "", "app": "12x"}),
    # 3: an uppercase uuid that matches no other row
    dumps({"server_upload_time": "2020-01-25 17:20:00.1", "uuid": "0A6E8A48-6C5E-4A1D-9D7A-0F0B7A1E2C03",
           "device_id": "d-2", "$insert_id": "i-2"}),
    # 4: a malformed line
    '{"server_upload_time": "2020-01-25 17:30:00", "uuid": ',
    # 5: an out-of-hour row, with an extra key no in-hour row has
    dumps({"server_upload_time": "2020-01-25 18:00:00", "uuid": "0a6e8a48-6c5e-4a1d-9d7a-0f0b7a1e2c05",
           "only_outside": 1}),
    # 6: most keys absent
    dumps({"server_upload_time": "2020-01-25 17:40:00"}),
    # 7: the ($insert_id, device_id) pair of row 3 with a new uuid: a duplicate
    dumps({"server_upload_time": "2020-01-25 17:45:00", "uuid": "0a6e8a48-6c5e-4a1d-9d7a-0f0b7a1e2c07",
           "device_id": "d-2", "$insert_id": "i-2"}),
    # 8: the same uppercase uuid as row 3, uppercased differently: a duplicate
    dumps({"server_upload_time": "2020-01-25 17:50:00", "uuid": "0a6e8a48-6c5e-4a1d-9d7a-0F0B7A1E2C03"}),
    # 9: missing and unparseable server_upload_time
    dumps({"uuid": "0a6e8a48-6c5e-4a1d-9d7a-0f0b7a1e2c09"}),
    dumps({"server_upload_time": "yesterday", "uuid": "0a6e8a48-6c5e-4a1d-9d7a-0f0b7a1e2c10"}),
    # 11: a JSON value that is not an object
    "[1, 2, 3]",
    # 12: the last in-hour row, 59:59.999999
    dumps({"server_upload_time": "2020-01-25 17:59:59.999999", "uuid": "0a6e8a48-6c5e-4a1d-9d7a-0f0b7a1e2c12",
           "$insert_key": "k-12"}),
]


def messy_bytes() -> bytes:
    return ("\n".join(MESSY) + "\n").encode()


def test_messy_hour_exports_what_the_contract_says():
    result = process_hour([messy_bytes()], HOUR)
    lines = exported(result)
    rows = [json.loads(line) for line in lines]

    assert [r["server_upload_time"] for r in rows] == [
        "2020-01-25 17:00:01.123456", "2020-01-25 17:10:00.000000", "2020-01-25 17:20:00.100000",
        "2020-01-25 17:40:00.000000", "2020-01-25 17:59:59.999999",
    ]
    assert [r["uuid"] for r in rows] == [
        GOOD_UUID, "0a6e8a48-6c5e-4a1d-9d7a-0f0b7a1e2c02", "0a6e8a48-6c5e-4a1d-9d7a-0f0b7a1e2c03", None,
        "0a6e8a48-6c5e-4a1d-9d7a-0f0b7a1e2c12",
    ]
    # Every line has the 49 fields, then the extras in order of first appearance in the
    # hour's own rows (the key only a rejected row had is not one of them).
    for line in lines:
        assert [k for k, _ in pairs(line)] == [*EVENT_FIELD_NAMES, "$insert_key", "plan", "data_type"]

    lenient = rows[1]
    assert lenient["processed_time"] == "2020-01-25 17:10:02.047099"
    assert lenient["client_upload_time"] == "2020-01-25 17:09:59.123000"
    assert lenient["event_time"] == "2020-01-25 17:09:58.250000"
    assert lenient["user_creation_time"] == "2020-01-25 17:00:00.000000"
    assert lenient["user_id"] is None and lenient["device_id"] is None
    assert lenient["app"] is None  # "12x" cannot be an integer: a repair
    assert lenient["data_type"] == "event" and lenient["$insert_key"] is None

    sparse = rows[3]
    assert {k: v for k, v in sparse.items() if v not in (None, {})} == {
        "server_upload_time": "2020-01-25 17:40:00.000000"
    }
    assert all(sparse[f] == {} for f in DICT_FIELDS)

    first = pairs(lines[0])
    original = pairs(MESSY[0])
    assert dict(first)["event_properties"] == dict(original)["event_properties"]
    assert dict(first)["plan"] == dict(original)["plan"]
    assert rows[0]["event_properties"]["query"] == "café ☕ \"quoted\" \\ back\nslash\ttab"
    assert rows[0]["user_id"] == "ユーザー1"

    # Rejected lines are kept verbatim, in source order, each with its reason.
    rejects = result.rejects.to_dicts()
    assert [r["line"] for r in rejects] == [MESSY[4], MESSY[5], MESSY[9], MESSY[10], MESSY[11]]
    reasons = [r["reason"] for r in rejects]
    assert reasons[0] == "not valid JSON"
    assert "outside the hour" in reasons[1]
    assert reasons[2] == "missing server_upload_time"
    assert reasons[3] == "unparseable server_upload_time"
    assert reasons[4] == "not a JSON object"

    counts = result.counts
    assert counts.source_rows == len(MESSY) == 13
    assert (counts.exported, counts.duplicates, counts.filtered, counts.rejected) == (5, 3, 0, 5)
    assert counts.repaired == 1
    assert counts.reconciles()


def test_the_event_filter_counts_as_filtered_and_still_reconciles():
    keep = pl.col("event_type").is_null() | (pl.col("event_type") != "Search")
    counts = process_hour([messy_bytes()], HOUR, keep).counts
    assert (counts.exported, counts.duplicates, counts.filtered, counts.rejected) == (4, 3, 1, 5)
    assert counts.reconciles()


def test_chunking_does_not_change_the_result():
    data = messy_bytes()
    lines = data.splitlines(keepends=True)
    whole = process_hour([data], HOUR)
    per_line = process_hour(lines, HOUR)
    assert exported(whole) == exported(per_line)
    assert whole.counts == per_line.counts
    assert whole.rejects.equals(per_line.rejects)


def test_the_hour_s_summary_comes_once_its_chunks_were_read():
    shaped = ShapedHour(messy_bytes().splitlines(keepends=True), HOUR, keep=None, lines_per_chunk=3)
    with pytest.raises(RuntimeError, match="iterate the ShapedHour to its end first"):
        shaped.summary()
    assert shaped.counts is None and shaped.extras is None  # the old attributes, before the end
    rows = sum(chunk.frame.height for chunk in shaped)
    summary = shaped.summary()
    assert isinstance(summary, HourSummary)
    whole = process_hour([messy_bytes()], HOUR)
    assert summary.counts == whole.counts and summary.counts.exported == rows
    assert summary.rejects.equals(whole.rejects) and summary.repairs.equals(whole.repairs)
    assert list(summary.extras) == [c for c in whole.frame.columns if c not in EVENT_FIELD_NAMES]
    # The old attributes read the same summary.
    assert (shaped.counts, shaped.identities, shaped.extras) == (summary.counts, summary.identities, list(summary.extras))
    assert shaped.rejects is summary.rejects and shaped.repairs is summary.repairs


def test_property_objects_round_trip_exactly_per_event():
    """Events whose objects differ in keys and value types come out as they went in."""
    props = [
        {"z": 1, "a": "x", "nested": {"b": [1, "two", None, {"c": 1.5}], "a": True}},
        {"results": "many", "a": 2.0},
        {"results": 7, "empty_list": [], "empty_obj": {}, "null": None},
        {},
        {"big": 12345678901234567890, "neg": -0.5, "exp": 1e-07, "unicode": "東京 \u00e9 \\u00e9 😀", "bool": False},
    ]
    extras = [
        {"$insert_key": "k", "plan": {"version": "7", "branch": "main"}},
        {"plan": None, "partner_id": 42},
        {"partner_id": "p-42", "global_user_properties": {"x": [1]}},
        {"source_id": ["a", 1]},
        {"$insert_key": {"odd": "object"}},
    ]
    rows = []
    for i, (p, extra) in enumerate(zip(props, extras)):
        row = {"server_upload_time": f"2020-01-25 17:0{i}:00", "uuid": f"0a6e8a48-6c5e-4a1d-9d7a-0f0b7a1e2d0{i}",
               "event_properties": p, "user_properties": {"n": i} if i % 2 else {"s": str(i), "l": [i]},
               "groups": {"company": [f"c{i}"]} if i else {}, "group_properties": {"company": {"c0": {"plan": i}}},
               "data": {"path": "/2/httpapi", "i": i}, **extra}
        rows.append(dumps(row))
    result = process_hour([("\n".join(rows) + "\n").encode()], HOUR)
    out = exported(result)
    assert len(out) == len(rows)
    extra_keys = ["$insert_key", "plan", "partner_id", "global_user_properties", "source_id"]
    for line, source in zip(out, rows):
        got, sent = dict(pairs(line)), dict(pairs(source))
        for name in DICT_FIELDS:
            assert got[name] == sent[name], name
        for name in extra_keys:
            assert got[name] == sent.get(name), name  # absent keys are null
        assert [k for k, _ in pairs(line)][49:] == extra_keys


@pytest.mark.parametrize("text,expected", [
    ("2020-01-25 17:03:01.123456", "2020-01-25 17:03:01.123456"),
    ("2020-01-25 17:03:01", "2020-01-25 17:03:01.000000"),
    ("2020-01-25T17:03:01.1", "2020-01-25 17:03:01.100000"),
    ("2020-01-25T17:03:01.12345Z", "2020-01-25 17:03:01.123450"),
    ("2020-01-25 17:03:01.123+00:00", "2020-01-25 17:03:01.123000"),
    ("2020-01-25T19:03:01+02:00", "2020-01-25 17:03:01.000000"),
    ("2020-01-25T12:33:01.5-04:30", "2020-01-25 17:03:01.500000"),
    ("2020:01:25 17:03:01.047099", "2020-01-25 17:03:01.047099"),
    ("1579971781123", "2020-01-25 17:03:01.123000"),
    ("not a time", None),
    ("2020-13-45 17:03:01", None),
])
def test_lenient_timestamps(text, expected):
    parsed = pl.DataFrame({"t": [text]}).select(parse_timestamp(pl.col("t")).dt.strftime("%Y-%m-%d %H:%M:%S%.6f"))
    assert parsed.item() == expected


def test_empty_input_is_an_empty_hour():
    result = process_hour([], HOUR)
    assert result.frame.height == 0 and result.rejects.height == 0
    assert result.counts.source_rows == 0 and result.counts.reconciles()


def test_invalid_utf8_rejects_the_line_not_the_hour():
    good = b'{"server_upload_time": "2020-01-25 17:00:00", "city": "ok"}'
    bad = b'{"server_upload_time": "2020-01-25 17:00:00", "city": "\xff"}'
    result = process_hour([good + b"\r\n" + bad + b"\r\n"], HOUR)
    assert result.frame["city"].to_list() == ["ok"]
    # The line is kept as its exact bytes (base64), not with replacement characters.
    assert result.rejects.to_dicts() == [
        {"reason": "not valid UTF-8", "line": NOT_UTF8 + base64.b64encode(bad).decode()}
    ]
    assert result.counts.reconciles() and result.counts.rejected == 1


def test_an_object_or_array_in_a_string_field_becomes_null_and_counts_as_repaired():
    lines = [
        {"server_upload_time": "2020-01-25 17:10:00", "city": {"x": 1}, "country": [1, 2],
         "region": "[a string that only looks like JSON", "user_id": "{not an object}"},
        {"server_upload_time": "2020-01-25 17:11:00", "city": "Paris"},
    ]
    result = process_hour([("\n".join(dumps(r) for r in lines) + "\n").encode()], HOUR)
    rows = [json.loads(line) for line in exported(result)]
    assert [(r["city"], r["country"], r["region"], r["user_id"]) for r in rows] == [
        (None, None, "[a string that only looks like JSON", "{not an object}"),
        ("Paris", None, None, None),
    ]
    assert result.counts.repaired == 2


def test_lines_duckdb_accepts_but_are_not_json_are_rejected_not_fatal():
    good = '{"server_upload_time": "2020-01-25 17:10:00.000000", "city": "Paris"}'
    odd = [
        '{"server_upload_time": "2020-01-25 17:10:00.000000", "location_lat": NaN}',
        '{"server_upload_time": "2020-01-25 17:10:00.000000", "city": "x",}',
        '{"server_upload_time": "2020-01-25 17:10:00.000000", "event_properties": {"a": [1, -Infinity]}}',
        '{"server_upload_time": "2020-01-25 17:10:00.000000", "event_properties": {"a": [1, 2,]}}',
    ]
    # Look-alikes inside strings are JSON: the strict reader takes them.
    fine = '{"server_upload_time": "2020-01-25 17:10:00.000000", "city": "Infinity, NaN,]", "region": "info"}'
    result = process_hour([("\n".join([good, *odd, fine, good.replace("Paris", "Rome")]) + "\n").encode()], HOUR)
    assert [json.loads(line)["city"] for line in exported(result)] == ["Paris", "Infinity, NaN,]", "Rome"]
    assert result.rejects["line"].to_list() == odd
    assert result.rejects["reason"].to_list() == ["not readable JSON"] * 4
    assert result.counts.rejected == 4 and result.counts.source_rows == 7


def test_numbers_beyond_double_range_are_json_kept_in_objects_and_repaired_in_floats():
    line = '{"server_upload_time": "2020-01-25 17:10:00.000000", "location_lat": 1e400, "event_properties": {"big": 1e400}}'
    result = process_hour([(line + "\n").encode()], HOUR)
    (out,) = exported(result)
    assert '"event_properties":{"big":1e400}' in out
    assert '"location_lat":null' in out
    assert result.counts.repaired == 1 and result.counts.rejected == 0


def test_out_of_range_epochs_and_non_finite_floats_become_null_and_count_as_repairs():
    row = {"server_upload_time": "2020-01-25 17:10:00.000000", "location_lat": "NaN", "location_lng": "-Infinity",
           "user_creation_time": 1700000000000000, "event_time": "9999999999999999", "client_event_time": 1579972200000}
    result = process_hour([(dumps(row) + "\n").encode()], HOUR)
    (line,) = [json.loads(line) for line in exported(result)]
    assert (line["location_lat"], line["location_lng"], line["user_creation_time"], line["event_time"]) == (None, None, None, None)
    assert line["client_event_time"] == "2020-01-25 17:10:00.000000"
    assert result.counts.repaired == 4


def test_extra_keys_a_struct_cannot_name_are_read_by_pointer():
    # An empty key, and keys that differ only in case (from each other, or from one of
    # the 49) with `/` and `~` in them.
    row = {"server_upload_time": "2020-01-25 17:10:00.000000", "city": "Paris", "": 5, "City": {"x": [1]},
           "A/~": "up", "a/~": None}
    result = process_hour([(dumps(row) + "\n").encode()], HOUR)
    (line,) = exported(result)
    assert line.endswith(',"":5,"City":{"x":[1]},"A/~":"up","a/~":null}')
    assert json.loads(line)["city"] == "Paris"


def test_extra_keys_named_like_the_parser_s_own_columns_are_kept_as_sent():
    rows = [
        {"server_upload_time": "2020-01-25 17:10:00.000000", "line": 1, "_pos": "hello"},
        {"server_upload_time": "2020-01-25 17:11:00.000000"},
        {"server_upload_time": "2020-01-25 18:11:00.000000", "reason": "outside"},  # rejected: not a key of the hour
    ]
    result = process_hour([("\n".join(dumps(r) for r in rows) + "\n").encode()], HOUR)
    first, second = exported(result)
    assert first.endswith(',"line":1,"_pos":"hello"}') and second.endswith(',"line":null,"_pos":null}')
    assert result.rejects["line"].to_list() == [dumps(rows[2])]


def test_a_line_with_a_key_the_parser_reserves_is_rejected_not_lost():
    odd = '{"server_upload_time": "2020-01-25 17:10:00.000000", "\\u0000line": 1}'
    good = '{"server_upload_time": "2020-01-25 17:11:00.000000"}'
    result = process_hour([(odd + "\n" + good + "\n").encode()], HOUR)
    assert len(exported(result)) == 1
    assert result.rejects.rows() == [("has a key that the exporter reserves", odd)]
    assert result.counts.reconciles()


def test_parsing_in_parts_side_by_side_gives_what_one_query_gives(monkeypatch):
    from amplitude_assets import transform
    from amplitude_assets.transform import parsing
    from amplitude_assets.sources.synthetic import SyntheticSource

    rows = SyntheticSource("187520", 300, 5).events(HOUR)
    lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in rows]
    lines[7:7] = ["not json", "[1]", "{}", '{"uuid": NaN}', '{"plan":{"a":1},"uuid":"X"}']
    series = transform.read_lines([("\n".join(lines) + "\n").encode()])
    whole = [transform.parse(series, all_dicts=flag) for flag in (True, False)]
    shares = []
    connect = transform.duck.connect

    def counted(threads=None):
        shares.append(threads)
        return connect(threads=threads)

    monkeypatch.setattr(transform.duck, "limits", lambda: {"memory_limit": "512MB", "threads": 3})
    monkeypatch.setattr(parsing, "SIDE_BY_SIDE_ROWS", 50)
    monkeypatch.setattr(transform.duck, "connect", counted)
    parts = [transform.parse(series, all_dicts=flag) for flag in (True, False)]
    assert shares.count(1) == 12  # the scan and the transform, in three parts of one thread each, twice
    for (a_fields, a_rejects, a_extras), (b_fields, b_rejects, b_extras) in zip(whole, parts):
        assert a_fields.equals(b_fields) and a_rejects.equals(b_rejects) and a_extras == b_extras
