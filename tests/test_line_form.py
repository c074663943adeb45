"""Amplitude's own line form (SPEC section 4): keys in code-point order, compact, and a line
already in that form written byte for byte, through both sources.

`in_the_form` is the oracle, written apart from the exporter with Python's json module: the
hour's keys in code-point order, no whitespace between tokens, every field of its JSON type,
timestamps and the uuid canonical, nothing to repair.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime

import polars as pl
import pytest

from amplitude_assets.line_form import insert_null_key, top_level_key_at
from amplitude_assets.schema import EVENT_FIELD_NAMES, EVENT_FIELDS, TIMESTAMP_PATTERN, UUID_PATTERN, Kind, line_keys
from amplitude_assets.shaping import process_hour
from tests.helpers import read_as_export_files
from tests.test_export_api import ExportServer, Reply, make_zip, source
from tests.test_fidelity import HOURS, PROJECT, assert_round_trip, corpus_lines, export, extras_of
from tests.test_fidelity import client  # noqa: F401  (the fixture)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
CORPUS = "2024-05-14_9.jsonl"


def _timestamp(value) -> bool:
    if not isinstance(value, str) or not re.fullmatch(TIMESTAMP_PATTERN, value):
        return False
    try:
        datetime.strptime(value, "%Y-%m-%d %H:%M:%S.%f")
    except ValueError:
        return False
    return True


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _typed(name: str, kind: Kind, value) -> bool:
    if kind is Kind.DICT:
        return isinstance(value, dict)
    if value is None:
        return True
    if kind is Kind.TIMESTAMP:
        return _timestamp(value)
    if kind is Kind.INT:
        return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    if kind is Kind.FLOAT:
        return _number(value)
    if kind is Kind.BOOL:
        return isinstance(value, bool)
    if kind is Kind.UUID:
        return isinstance(value, str) and re.fullmatch(UUID_PATTERN, value) is not None
    if kind is Kind.ARRAY_OR_STRING:
        return isinstance(value, (list, str))
    if kind is Kind.NUMBER:
        return _number(value) and math.isfinite(value)
    return isinstance(value, str) and not (value == "" and name in ("user_id", "device_id"))


def in_the_form(line: str, keys: list[str]) -> bool:
    """Whether `line` is already an exported line of an hour whose lines have `keys`."""
    if re.search(r"[ \t\r\n]", _STRING.sub("", line)):
        return False
    pairs = json.loads(line, object_pairs_hook=list)
    if [k for k, _ in pairs] != keys:
        return False
    event = json.loads(line)
    return all(_typed(name, kind, event[name]) for name, kind in EVENT_FIELDS)


def hour_keys(lines: list[str]) -> list[str]:
    return line_keys(extras_of(lines))


def written_by_files(client, tmp_path, lines: list[str], hour: datetime) -> list[str]:
    return export(client, read_as_export_files(tmp_path, PROJECT, lines, hour), hour)[2]


def written_by_export_api(client, lines: list[str], hour: datetime) -> list[str]:
    stem = f"{PROJECT}/{PROJECT}_{hour:%Y-%m-%d}_{hour.hour}"
    body = make_zip({f"{stem}#0.json.gz": ("\n".join(lines) + "\n").encode()})
    server = ExportServer()
    server.thread.start()
    try:
        server.script(hour, Reply(200, body, {"Content-Type": "application/zip"}))
        return export(client, source(server).iter_lines(hour), hour)[2]
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def assert_form(sent: list[str], written: list[str]) -> int:
    """Lines already in the form came back byte for byte; every line is in the form now."""
    keys = hour_keys(sent)
    assert_round_trip(sent, written)
    as_sent = 0
    for i, (line, out) in enumerate(zip(sent, written)):
        if in_the_form(line, keys):
            assert out == line, f"line {i} was in the form, yet was rewritten"
            as_sent += 1
        assert in_the_form(out, keys), f"line {i} is not in the form as written: {out[:200]}"
    return as_sent


def corpus_with_normalizing_lines() -> list[str]:
    """The real corpus, in the form, and the same events in shapes that need normalizing."""
    lines = corpus_lines(CORPUS)
    first = json.loads(lines[0])
    upper = {**first, "uuid": "9" + first["uuid"][1:].upper(), "$insert_id": "upper-1"}
    spaced = {**json.loads(lines[1]), "uuid": "7" + json.loads(lines[1])["uuid"][1:], "$insert_id": "spaced-1"}
    sparse = {k: v for k, v in json.loads(lines[2]).items() if k not in ("city", "paying", "data")}
    sparse.update(uuid="6" + sparse["uuid"][1:], **{"$insert_id": "sparse-1"})
    # Also in the form: tokens and escapes a JSON encoder would write otherwise, inside
    # a property object and at the top level.
    tokens = (lines[2].replace('"ratio":0.75', '"ratio":0.750,"big":1E3,"name":"caf\\u00e9 \\/ bar"')
              .replace('"location_lat":null', '"location_lat":47').replace('"location_lng":null', '"location_lng":8.50')
              .replace(json.loads(lines[2])["uuid"], "5" + json.loads(lines[2])["uuid"][1:])
              .replace(json.dumps(json.loads(lines[2])["$insert_id"]), '"tokens-1"'))
    assert "\\u00e9" in tokens and '"location_lng":8.50' in tokens
    return [
        *lines,
        tokens,
        json.dumps(dict(sorted(upper.items())), ensure_ascii=False, separators=(",", ":")),  # an uppercase uuid
        json.dumps(dict(sorted(spaced.items())), ensure_ascii=False),  # spaces between tokens
        json.dumps(dict(sorted(sparse.items())), ensure_ascii=False, separators=(",", ":")),  # missing keys
    ]


def test_the_oracle_tells_the_forms_apart():
    lines = corpus_with_normalizing_lines()
    keys = hour_keys(lines)
    assert [in_the_form(line, keys) for line in lines[-3:]] == [False, False, False]
    assert sum(in_the_form(line, keys) for line in lines[:-3]) >= 3


@pytest.mark.parametrize("path", ["files", "export_api"])
def test_real_lines_land_byte_for_byte_and_the_others_in_code_point_order(client, tmp_path, path):
    hour, lines = HOURS[CORPUS], corpus_with_normalizing_lines()
    written = (written_by_files(client, tmp_path, lines, hour) if path == "files"
               else written_by_export_api(client, lines, hour))
    assert assert_form(lines, written) >= 3
    assert lines[4] in written  # the line of odd tokens, as it came
    assert written[-3] != lines[-3] and json.loads(written[-3])["uuid"] == json.loads(lines[-3])["uuid"].lower()


def test_the_sparse_corpus_is_normalized_with_its_keys_in_order(client, tmp_path):
    hour, lines = HOURS["2016-02-03_21.jsonl"], corpus_lines("2016-02-03_21.jsonl")
    written = written_by_files(client, tmp_path, lines, hour)
    assert assert_form(lines, written) == 0  # sparse, and timestamps without six digits
    assert all(list(json.loads(w)) == sorted(EVENT_FIELD_NAMES) for w in written)


def test_the_pass_through_and_the_normalizing_path_give_the_same_values(client):
    hour = HOURS[CORPUS]
    line = corpus_lines(CORPUS)[0]
    event = json.loads(line)
    reordered = json.dumps({k: event[k] for k in reversed(list(event))}, ensure_ascii=False)
    t_form = line.replace(f'"event_time":"{event["event_time"]}"',
                          '"event_time":"' + event["event_time"].replace(" ", "T") + 'Z"')
    assert t_form != line
    outs = []
    for variant in (line, reordered, t_form):
        outs.append(process_hour([(variant + "\n").encode()], hour).lines.to_list())
    assert outs[0] == [line]  # as it came; the others were normalized, to the same values
    values = [json.loads(out[0]) for out in outs]
    assert values[0] == values[1] == values[2] == event
    assert [list(v) for v in values] == [sorted(event)] * 3


def test_a_key_first_seen_late_goes_into_its_place_in_lines_written_as_they_came(client):
    hour, lines = HOURS[CORPUS], corpus_with_normalizing_lines()[:5]  # the real lines and the odd tokens
    keys = hour_keys(lines)
    assert all(in_the_form(line, keys) for line in lines[:2]) and in_the_form(lines[4], keys)
    late = json.loads(lines[3])
    assert "city_code" not in late
    late["city_code"] = "SF"  # sorts between city and client_event_time
    late["uuid"], late["$insert_id"] = "1" + late["uuid"][1:], "late-1"
    sent = [*lines, json.dumps(dict(sorted(late.items())), ensure_ascii=False, separators=(",", ":"))]
    manifest, result, written = export(client, [(x + "\n").encode() for x in sent], hour, max_rows_per_file=2,
                                       lines_per_chunk=2)
    assert_round_trip(sent, written)
    for line, out in zip(lines, written):
        if in_the_form(line, keys):  # as it came, with the one new key where it sorts
            city = json.dumps(json.loads(line)["city"], ensure_ascii=False)
            assert out == line.replace(f'"city":{city},', f'"city":{city},"city_code":null,')


def test_insert_null_key_finds_the_top_level_key_when_it_is_also_nested():
    keys = sorted(["a", "b", "d"])
    lines = pl.Series([
        '{"a":1,"b":{"x":1,"d":2},"d":3}',  # ,"d": nested first
        '{"a":{"d":[1]},"b":"q,\\"d\\":","d":null}',
        '{"a":1,"b":2,"d":3}',
    ])
    got = insert_null_key(lines, keys, "c").to_list()
    assert got == [
        '{"a":1,"b":{"x":1,"d":2},"c":null,"d":3}',
        '{"a":{"d":[1]},"b":"q,\\"d\\":","c":null,"d":null}',
        '{"a":1,"b":2,"c":null,"d":3}',
    ]
    assert [json.loads(g)["c"] for g in got] == [None] * 3
    assert insert_null_key(lines.head(1), keys, "0").to_list() == ['{"0":null,"a":1,"b":{"x":1,"d":2},"d":3}']
    assert insert_null_key(lines.head(1), keys, "z").to_list() == ['{"a":1,"b":{"x":1,"d":2},"d":3,"z":null}']
    assert top_level_key_at('{"a":1,"b":{"x":1,"d":2},"d":3}', "d") == len('{"a":1,"b":{"x":1,"d":2}')


@pytest.mark.parametrize("spaced, inside_a_string", [
    ('"event_properties":{"duration_ms": 1250,', False),
    ('"event_properties":{"duration_ms":1250 ,', False),
    ('"event_properties":{"duration_ms":[ 1250],', False),
    ('"event_properties":{"duration_ms":[1250, 1],', False),
    ('"event_properties":{"duration_ms":"Suite 5, 100 Main St: [ x ]",', True),
    ('"event_properties":{"duration_ms":"a, true, {b}",', True),
])
def test_whitespace_between_tokens_is_normalized_and_inside_strings_kept(spaced, inside_a_string):
    hour, lines = HOURS[CORPUS], corpus_lines(CORPUS)
    line = lines[2]
    assert '"event_properties":{"duration_ms":1250,' in line
    sent = line.replace('"event_properties":{"duration_ms":1250,', spaced)
    (written,) = process_hour([(sent + "\n").encode()], hour).lines.to_list()
    assert json.loads(written) == json.loads(sent)
    assert in_the_form(sent, hour_keys(lines)) is inside_a_string
    assert (written == sent) is inside_a_string
