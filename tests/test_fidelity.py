"""Real Amplitude export lines round-trip exactly, through the `files` and `export_api` sources.

The corpus in `tests/fidelity/` has the shapes of Amplitude's Export API and S3/GCS/Azure
export files: keys in alphabetical order, all 49 documented fields plus Amplitude's own
extra keys, uppercase `$insert_id`/`device_id`, an `R`-suffixed device id, `$schema` as an
integer, `data` with nested objects, arrays in `groups` and `data.group_ids`,
`amplitude_attribution_ids` as an array and as a string, a numeric `sample_rate`, number
tokens such as `6396.0` and `643022056303`, non-ASCII text, and sparse older events.

Every key and value must come back as sent, number tokens included, except the documented
normalizations: timestamps as `YYYY-MM-DD HH:MM:SS.ffffff` UTC, the uuid in lowercase, an
absent key as `null` (`{}` for the five objects), and the keys in code-point order. A line
already in that form comes back byte for byte. The oracle is independent of the exporter:
Python's json module, numbers kept as tokens.
"""

from __future__ import annotations

import base64
import gzip
import json
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from amplitude_assets.filters import filter_expression, parse_filter
from amplitude_assets.destination.io_manager import column_schema, read_events_hour
from amplitude_assets.layout import EventsLayout
from amplitude_assets.destination.writer import (
    export_events_hour,
    gzip_bytes,
    jsonl_bytes,
)
from amplitude_assets.schema import (
    DICT_FIELDS,
    EVENT_FIELD_NAMES,
    EVENT_KINDS,
    TIMESTAMP_FIELDS,
    Kind,
    line_keys,
)
from amplitude_assets.sources.files import FilesSource
from amplitude_assets.transform import raw_json_value, sent_json
from amplitude_assets.shaping import process_hour
from tests.reference import whole_hour
from tests.helpers import part_slices, read_as_export_files
from tests.test_export_api import ExportServer, Reply, make_zip, source

CORPUS = Path(__file__).parent / "fidelity"
PROJECT = "187520"
HOURS = {
    "2024-05-14_9.jsonl": datetime(2024, 5, 14, 9, tzinfo=timezone.utc),
    "2016-02-03_21.jsonl": datetime(2016, 2, 3, 21, tzinfo=timezone.utc),
}


def number(token: str) -> tuple[str, str]:
    return ("number", token)


def tokens(text: str):
    """JSON with each number as ("number", its token) and objects as lists of (key, value)
    pairs: key order, types and the digits as written all count, at every depth."""
    return json.loads(text, parse_float=number, parse_int=number, object_pairs_hook=list)


def top_level(line: str) -> list[tuple[str, object]]:
    return [(k, v) for k, v in tokens(line)]


def canonical_timestamp(value: str) -> str:
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S.%f")


def expected_line(line: str, extras: list[str]) -> list[tuple[str, object]]:
    """What the export must write for a source line: its values, normalized only as documented."""
    sent = dict(top_level(line))
    out = []
    for name in line_keys(extras):
        if name not in sent:
            out.append((name, [] if name in DICT_FIELDS else None))  # {} parses to [] as pairs
            continue
        value = sent[name]
        if name in TIMESTAMP_FIELDS and value is not None:
            value = canonical_timestamp(value)
        elif name == "uuid" and value is not None:
            value = value.lower()
        out.append((name, value))
    return out


def corpus_lines(name: str) -> list[str]:
    return (CORPUS / name).read_text(encoding="utf-8").splitlines()


def extras_of(lines: list[str]) -> list[str]:
    """Extra keys in order of first appearance in the hour."""
    seen: dict[str, None] = {}
    for line in lines:
        seen.update((k, None) for k, _ in top_level(line) if k not in EVENT_KINDS)
    return list(seen)


@pytest.fixture
def client(fresh_container):
    return fresh_container("fid")


def export(client, chunks, hour, **kwargs):
    manifest, result = export_events_hour(
        client, EventsLayout("", PROJECT), chunks, hour, keep=None, source="test",
        max_rows_per_file=kwargs.pop("max_rows_per_file", 3), **kwargs,
    )
    text = b"".join(gzip.decompress(client.download_blob(f"{PROJECT}/{p.name}").readall()) for p in manifest.parts)
    return manifest, result, text.decode("utf-8").splitlines()


def assert_round_trip(sent: list[str], written: list[str]) -> None:
    extras = extras_of(sent)
    assert len(written) == len(sent)
    for i, (line, out) in enumerate(zip(sent, written)):
        got, want = top_level(out), expected_line(line, extras)
        assert [k for k, _ in got] == [k for k, _ in want], f"line {i}: keys"
        for (key, value), (_, expected) in zip(got, want):
            # Equal as tokens: 6396.0 stays 6396.0, and a number never turns into a string.
            assert value == expected, f"line {i}, {key}: wrote {value!r}, sent {expected!r}"


def blob_names(client) -> list[str]:
    return sorted(b.name for b in client.list_blobs())


def test_the_corpus_has_the_shapes_of_real_exports():
    full = [dict(top_level(line)) for line in corpus_lines("2024-05-14_9.jsonl")]
    for event in full:
        assert list(event) == sorted(event)  # alphabetical, as Amplitude writes them
        assert set(EVENT_FIELD_NAMES) | {"$insert_key", "data_type", "global_user_properties", "partner_id",
                                         "plan", "source_id"} == set(event)
        assert event["$schema"] == number("12")
    assert any(isinstance(e["amplitude_attribution_ids"], list) for e in full)
    assert any(isinstance(e["amplitude_attribution_ids"], str) for e in full)
    assert any(e["device_id"].endswith("R") for e in full)
    assert any(e["$insert_id"] == e["$insert_id"].upper() and e["device_id"] == e["device_id"].upper() for e in full)
    raw = (CORPUS / "2024-05-14_9.jsonl").read_text(encoding="utf-8")
    assert "6396.0" in raw and "643022056303" in raw and '"group_ids":{"391":[1048576,2097152]}' in raw
    sparse = [dict(top_level(line)) for line in corpus_lines("2016-02-03_21.jsonl")]
    assert all(len(event) < 12 for event in sparse)


@pytest.mark.parametrize("name", list(HOURS))
def test_files_source_round_trips_every_key_and_value(client, tmp_path, name):
    hour, lines = HOURS[name], corpus_lines(name)
    manifest, result, written = export(client, read_as_export_files(tmp_path, PROJECT, lines, hour), hour)
    assert_round_trip(lines, written)
    assert manifest.counts == {"source_rows": len(lines), "exported": len(lines), "duplicates": 0, "filtered": 0,
                               "rejected": 0, "repaired": 0}
    assert not any(n.startswith(("_rejected/", "_repaired/")) for n in blob_names(client))


@pytest.mark.parametrize("name", list(HOURS))
def test_export_api_source_round_trips_every_key_and_value(client, name):
    hour, lines = HOURS[name], corpus_lines(name)
    stem = f"{PROJECT}/{PROJECT}_{hour:%Y-%m-%d}_{hour.hour}"
    body = make_zip({
        f"{stem}#1.json.gz": ("\n".join(lines[1:])).encode(),  # the last line has no newline
        f"{stem}#0.json.gz": (lines[0] + "\n").encode(),
    })
    with ExportServer() as server:
        server.script(hour, Reply(200, body, {"Content-Type": "application/zip"}))
        manifest, result, written = export(client, source(server).iter_lines(hour), hour)
    assert_round_trip(lines, written)
    assert manifest.counts["repaired"] == 0 and manifest.counts["rejected"] == 0


def test_the_two_as_sent_fields_are_written_exactly():
    lines = corpus_lines("2024-05-14_9.jsonl")
    shaped = process_hour([("\n".join(lines) + "\n").encode()], HOURS["2024-05-14_9.jsonl"])
    written = jsonl_bytes(shaped.lines.to_frame()).decode().splitlines()
    assert '"amplitude_attribution_ids":["c37ee2320953c639c7240c033f12d2c6"],' in written[0]
    assert '"amplitude_attribution_ids":"c37ee2320953c639c7240c033f12d2c6",' in written[3]
    assert '"sample_rate":0.5,' in written[1] and '"sample_rate":1,' in written[2] and '"sample_rate":null,' in written[0]


# -- values that are not JSON DuckDB writes back the same way --------------------------------

HOUR = datetime(2020, 1, 25, 17, tzinfo=timezone.utc)


def event(i: int, **fields: str) -> str:
    """A line with raw JSON text per field (so tokens and spaces are exactly as given)."""
    head = f'"server_upload_time":"2020-01-25 17:00:{i:02d}.000000","uuid":"{uid(i)}","$insert_id":"I-{i}"'
    return "{" + ",".join([head, *(f'"{k}":{v}' for k, v in fields.items())]) + "}"


def uid(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


def test_as_sent_values_keep_their_exact_text_and_odd_tokens(client):
    lines = [
        event(1, amplitude_attribution_ids='["a", "b"]', sample_rate="1.50"),
        event(2, amplitude_attribution_ids='"x\\u00e9"', sample_rate="1E-3"),
        event(3, amplitude_attribution_ids="[]", sample_rate='"0.25"', event_properties='{"sample_rate":0.5}'),
        # the same key nested with another token: the top-level one is taken
        event(4, event_properties='{"sample_rate":2.0}', sample_rate="2.00"),
        event(5, sample_rate=" 7 ", amplitude_attribution_ids=" [ 1 , 2 ] "),
    ]
    manifest, result, written = export(client, [("\n".join(lines) + "\n").encode()], HOUR)
    values = [(raw_field(w, "amplitude_attribution_ids"), raw_field(w, "sample_rate")) for w in written]
    assert values == [
        ('["a", "b"]', "1.50"),
        ('"x\\u00e9"', "1E-3"),
        ("[]", "0.25"),  # a number sent as a string becomes the number
        ("null", "2.00"),
        ("[ 1 , 2 ]", "7"),
    ]
    assert manifest.counts["repaired"] == 0


def raw_field(line: str, key: str) -> str:
    """The text of a top-level value as it stands in the line."""
    return raw_json_value(line, key)


def test_repaired_values_are_kept_beside_the_hour_as_sent(client, blobs):
    lines = [
        event(1, event_id='"12x"', amplitude_id="9223372036854775808"),
        event(2, sample_rate="1e400", amplitude_attribution_ids="5"),
        event(3, version_name='{"a": 1}', paying='"yes"', user_properties='[1, 2.50]'),
        event(4, event_id="7", sample_rate="0.5"),  # nothing to repair
        event(5, session_id="true").replace(uid(5), "not-a-uuid"),
    ]
    manifest, result, written = export(client, [("\n".join(lines) + "\n").encode()], HOUR)
    stored = gzip.decompress(client.download_blob(f"_repaired/{PROJECT}/{PROJECT}_2020-01-25_17.jsonl.gz").readall())
    assert stored == (
        '{"uuid":"00000000-0000-4000-8000-000000000001","$insert_id":"I-1","field":"amplitude_id","value":9223372036854775808}\n'
        '{"uuid":"00000000-0000-4000-8000-000000000001","$insert_id":"I-1","field":"event_id","value":"12x"}\n'
        '{"uuid":"00000000-0000-4000-8000-000000000002","$insert_id":"I-2","field":"amplitude_attribution_ids","value":5}\n'
        '{"uuid":"00000000-0000-4000-8000-000000000002","$insert_id":"I-2","field":"sample_rate","value":1e400}\n'
        '{"uuid":"00000000-0000-4000-8000-000000000003","$insert_id":"I-3","field":"version_name","value":{"a": 1}}\n'
        '{"uuid":"00000000-0000-4000-8000-000000000003","$insert_id":"I-3","field":"paying","value":"yes"}\n'
        '{"uuid":"00000000-0000-4000-8000-000000000003","$insert_id":"I-3","field":"user_properties","value":[1, 2.50]}\n'
        '{"uuid":null,"$insert_id":"I-5","field":"uuid","value":"not-a-uuid"}\n'
        '{"uuid":null,"$insert_id":"I-5","field":"session_id","value":true}\n'
    ).encode()
    assert manifest.counts["repaired"] == 9 == result.repairs.height
    out = [json.loads(w) for w in written]
    assert [o["event_id"] for o in out] == [None, None, None, 7, None]
    assert out[2]["user_properties"] == {} and out[2]["version_name"] is None
    # The whole-hour path keeps the same repairs.
    assert whole_hour([("\n".join(lines) + "\n").encode()], HOUR).repairs.equals(result.repairs)

    # A re-export without repairs deletes the stale file, as for rejected lines.
    export(client, [(lines[3] + "\n").encode()], HOUR)
    assert f"_repaired/{PROJECT}/{PROJECT}_2020-01-25_17.jsonl.gz" not in blob_names(client)


def test_a_line_that_is_not_utf8_is_kept_byte_for_byte(client):
    bad = b'{"server_upload_time":"2020-01-25 17:00:01","city":"M\xfcnchen"}'
    worse = b"\xff\xfe{\x00}"
    good = event(1).encode()
    nul = b'\x00{"a":1}'
    manifest, result, written = export(client, [good + b"\n" + bad + b"\r\n" + worse + b"\n" + nul + b"\n"], HOUR)
    assert len(written) == 1
    stored = gzip.decompress(client.download_blob(f"_rejected/{PROJECT}/{PROJECT}_2020-01-25_17.jsonl.gz").readall())
    records = [json.loads(x) for x in stored.decode().splitlines()]
    assert records == [
        {"reason": "not valid UTF-8", "line_base64": base64.b64encode(bad).decode(), "encoding": "base64"},
        {"reason": "not valid UTF-8", "line_base64": base64.b64encode(worse).decode(), "encoding": "base64"},
        {"reason": "not valid JSON", "line": '\x00{"a":1}'},
    ]
    assert base64.b64decode(records[0]["line_base64"]) == bad
    # A valid line that starts with NUL, in a chunk that is all UTF-8, is kept as its text.
    alone = process_hour([nul + b"\n"], HOUR)
    assert alone.rejects.to_dicts() == [{"reason": "not valid JSON", "line": '\x00{"a":1}'}]
    assert manifest.counts["rejected"] == 3 and result.counts.reconciles()


def test_a_byte_order_mark_is_not_a_reason_to_reject(client, tmp_path):
    folder = tmp_path / PROJECT
    folder.mkdir()
    lines = [event(1), event(2), event(3)]
    # One at the start of the file, one at the start of a line in the middle.
    text = b"\xef\xbb\xbf" + lines[0].encode() + b"\n" + b"\xef\xbb\xbf" + lines[1].encode() + b"\n" + lines[2].encode() + b"\n"
    (folder / f"{PROJECT}_2020-01-25_17#0.json.gz").write_bytes(gzip.compress(text))
    manifest, result, written = export(client, FilesSource(str(tmp_path), PROJECT).iter_lines(HOUR), HOUR)
    assert [json.loads(w)["$insert_id"] for w in written] == ["I-1", "I-2", "I-3"]
    assert manifest.counts["rejected"] == 0


def test_streaming_and_whole_hour_paths_agree_byte_for_byte_on_as_sent_values(client):
    # Small chunks and a key first seen late make the streaming export rebuild earlier parts
    # from their own text; the as-sent values must come back exactly.
    lines = [event(i, amplitude_attribution_ids='["a", "b"]', sample_rate="1.50") for i in range(6)]
    lines.append(event(6, amplitude_attribution_ids='"s"', sample_rate="2E+1", n6="0"))
    manifest, result, _ = export(client, [(x + "\n").encode() for x in lines], HOUR, max_rows_per_file=2,
                                 lines_per_chunk=2)
    whole = whole_hour([("\n".join(lines) + "\n").encode()], HOUR)
    expected = [gzip_bytes(jsonl_bytes(whole.lines.slice(o, n).to_frame())) for o, n in part_slices(whole.frame.height, 2)]
    parts = [client.download_blob(f"{PROJECT}/{p.name}").readall() for p in manifest.parts]
    assert parts == expected
    first = gzip.decompress(parts[0]).decode().splitlines()[0]
    assert '"amplitude_attribution_ids":["a", "b"],' in first and '"sample_rate":1.50,' in first and '"n6":null,' in first
    assert EVENT_KINDS["amplitude_attribution_ids"] is Kind.ARRAY_OR_STRING and EVENT_KINDS["sample_rate"] is Kind.NUMBER


def test_sent_json_finds_the_top_level_key_and_not_a_nested_one():
    lines = pl.Series([
        # the top-level key written with an escape, the same name nested deeper
        '{"amplitude\\u005fattribution_ids":[1, 1],"x":{"amplitude_attribution_ids":[2]}}',
        '{"x":{"amplitude_attribution_ids":[2]},"amplitude_attribution_ids" : [1,1] }',
        '{"amplitude_attribution_ids":[1,1]}',
    ])
    assert sent_json(lines, "amplitude_attribution_ids", pl.Series(["[1,1]"] * 3)).to_list() == [
        "[1, 1]", "[1,1]", "[1,1]",
    ]


def test_an_exported_hour_reads_back_with_the_as_sent_fields(client):
    hour, lines = HOURS["2024-05-14_9.jsonl"], corpus_lines("2024-05-14_9.jsonl")
    export(client, [("\n".join(lines) + "\n").encode()], hour)
    frame = read_events_hour(client, EventsLayout("", PROJECT), hour)
    assert frame["sample_rate"].dtype == pl.Float64
    assert frame["sample_rate"].to_list() == [None, 0.5, 1.0, None]
    assert frame["amplitude_attribution_ids"].to_list() == [
        '["c37ee2320953c639c7240c033f12d2c6"]', None, None, '"c37ee2320953c639c7240c033f12d2c6"',
    ]
    schema = {c.name: c.type for c in column_schema(frame).columns}
    assert schema["sample_rate"] == "number" and schema["amplitude_attribution_ids"] == "json"


@pytest.mark.parametrize("condition, expected", [
    ({"field": "sample_rate", "op": "gt", "value": 0.4}, [1, 2]),
    ({"field": "sample_rate", "op": "is", "value": 0.5}, [1]),
    ({"field": "sample_rate", "op": "exists", "value": False}, [0, 3]),
    ({"field": "amplitude_attribution_ids", "op": "contains", "value": "c37ee2320953c639c7240c033f12d2c6"}, [0, 3]),
    ({"field": "amplitude_attribution_ids", "op": "is", "value": "c37ee2320953c639c7240c033f12d2c6"}, [3]),
])
def test_filters_read_the_as_sent_fields_as_json(condition, expected):
    lines = corpus_lines("2024-05-14_9.jsonl")
    keep = filter_expression(parse_filter(json.dumps([condition])))
    result = process_hour([("\n".join(lines) + "\n").encode()], HOURS["2024-05-14_9.jsonl"], keep)
    order = [json.loads(line)["$insert_id"] for line in lines]
    assert [order.index(i) for i in result.frame["$insert_id"].to_list()] == expected
