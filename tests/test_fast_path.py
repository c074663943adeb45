"""The streaming export (`export_events_hour`) against a straightforward reference writer.

The fast path reads an hour in chunks, writes parts as they fill and rebuilds any part
that a later extra key makes stale.
Here it runs with tiny chunks and parts, so duplicates, new extra keys and rejects fall
across chunk and part boundaries, and its decompressed output must equal, line for line,
what a json.loads/json.dumps writer makes of the same input: same keys in the same
order, same value types. It must also be byte-identical to the whole-hour path.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import threading
import uuid
from datetime import datetime, timezone

import polars as pl
import pytest

from amplitude_assets.layout import EventsLayout
from amplitude_assets.destination.writer import (
    export_events_hour,
    gzip_bytes,
    jsonl_bytes,
)
from amplitude_assets.schema import EVENT_FIELDS, EVENT_KINDS, Kind, line_keys
from amplitude_assets.sources.synthetic import SyntheticSource
from tests.reference import whole_hour
from tests.helpers import part_slices

HOUR = datetime(2020, 1, 25, 17, tzinfo=timezone.utc)
PROJECT = "187520"
MAX_ROWS = 300


# -- the input: a synthetic hour with mess mixed in ----------------------------------------


def hour_input() -> list[str]:
    rows = SyntheticSource(PROJECT, 1200, 7).events(HOUR)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    rnd = random.Random(3)
    mess = [
        "not json at all",
        "[1, 2, 3]",
        '{"server_upload_time": "2020-01-25 17:30:00", "uuid": ',
        json.dumps({"uuid": str(uuid.UUID(int=1))}),  # no server_upload_time
        json.dumps({**rows[10], "uuid": str(uuid.UUID(int=2)), "server_upload_time": "2020-01-25 18:00:00.000000",
                    "only_outside": {"x": 1}}),  # out of the hour, with a key no exported row has
        json.dumps({**rows[11], "uuid": rows[11]["uuid"].upper()}),  # same uuid, uppercased: a duplicate
        json.dumps({**rows[12], "uuid": str(uuid.UUID(int=3))}),  # same ($insert_id, device_id): a duplicate
        json.dumps({**rows[13], "uuid": str(uuid.UUID(int=4)), "user_id": "", "device_id": "",
                    "os_version": 14, "event_properties": {"n": 1.5, "s": "1.5", "nested": {"b": [1, "2", None]}}}),
        json.dumps({**rows[14], "uuid": str(uuid.UUID(int=5)), "server_upload_time": "2020-01-25T17:59:59.999999Z"}),
        json.dumps({**rows[15], "uuid": str(uuid.UUID(int=10)), "line": [1], "_pos": "x"}),  # keys named like internals
    ]
    for line in mess:
        lines.insert(rnd.randrange(40, len(lines)), line)
    # An extra key first seen near the end of the hour, and a row whose uuid repeats row 0's.
    lines.append(json.dumps({**rows[20], "uuid": str(uuid.UUID(int=6)), "late_key": [1, {"a": None}], "$insert_id": None}))
    lines.append(json.dumps({**rows[21], "uuid": rows[0]["uuid"]}))
    return lines


def source_chunks(lines: list[str], per_chunk: int = 50) -> list[bytes]:
    return [("\n".join(lines[i : i + per_chunk]) + "\n").encode() for i in range(0, len(lines), per_chunk)]


# -- the reference: json.loads, plain Python, json.dumps -----------------------------------


def ref_timestamp(value):
    if value is None:
        return None
    text = str(value).replace("T", " ").replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def ref_value(name: str, kind: Kind, value):
    if kind is Kind.DICT:
        return value if isinstance(value, dict) else {}
    if value is None:
        return None
    if kind is Kind.TIMESTAMP:
        parsed = ref_timestamp(value)
        return parsed.strftime("%Y-%m-%d %H:%M:%S.%f") if parsed else None
    if kind is Kind.INT:
        return int(value)
    if kind is Kind.FLOAT:
        return float(value)
    if kind is Kind.BOOL:
        return value
    if kind is Kind.UUID:
        return str(uuid.UUID(value))
    text = value if isinstance(value, str) else json.dumps(value)
    return None if text == "" and name in ("user_id", "device_id") else text


def reference_lines(lines: list[str]) -> list[str]:
    start = HOUR.replace(tzinfo=None)
    objects, order = [], {}
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            objects.append(row)
            order.update(dict.fromkeys(k for k in row if k not in EVENT_KINDS))
    in_hour = []
    for row in objects:
        uploaded = ref_timestamp(row.get("server_upload_time"))
        if uploaded is not None and start <= uploaded < start.replace(hour=start.hour + 1):
            in_hour.append(row)
    extras = [k for k in order if any(k in row for row in in_hour)]
    seen_uuid, seen_pair, out = set(), set(), []
    for row in in_hour:
        record = {name: ref_value(name, kind, row.get(name)) for name, kind in EVENT_FIELDS}
        if record["uuid"] is not None:
            if record["uuid"] in seen_uuid:
                continue
            seen_uuid.add(record["uuid"])
        if record["$insert_id"] is not None and record["device_id"] is not None:
            pair = (record["$insert_id"], record["device_id"])
            if pair in seen_pair:
                continue
            seen_pair.add(pair)
        record.update({k: row.get(k) for k in extras})
        out.append(json.dumps(dict(sorted(record.items())), ensure_ascii=False))
    return out


def typed(value):
    """A JSON value with its type made explicit, so 1, 1.0 and True never compare equal."""
    if isinstance(value, list):
        return ["list", [typed(v) for v in value]]
    return [type(value).__name__, value]


def pairs(line: str):
    return typed(json.loads(line, object_pairs_hook=lambda kv: ["object", [[k, typed(v)] for k, v in kv]]))


# -- tests --------------------------------------------------------------------------------


@pytest.fixture
def client(fresh_container):
    return fresh_container("fast")


def export(client, lines: list[str], **kwargs):
    timings: dict = {}
    manifest, result = export_events_hour(
        client, EventsLayout("", PROJECT), source_chunks(lines), HOUR, keep=kwargs.pop("keep", None), source="synthetic",
        max_rows_per_file=MAX_ROWS, lines_per_chunk=kwargs.pop("lines_per_chunk", 97), timings=timings, **kwargs,
    )
    parts = [client.download_blob(f"{PROJECT}/{p.name}").readall() for p in manifest.parts]
    return manifest, result, parts, timings


def test_fast_path_equals_the_reference_writer_line_for_line(client):
    lines = hour_input()
    manifest, result, parts, timings = export(client, lines)
    got = [line for part in parts for line in gzip.decompress(part).decode("utf-8").splitlines()]
    want = reference_lines(lines)
    assert len(got) == len(want) == manifest.rows
    for i, (a, b) in enumerate(zip(got, want)):
        assert pairs(a) == pairs(b), f"line {i} differs:\n fast: {a}\n ref:  {b}"
    # A key first seen in the last chunk is on every line, in its code-point place.
    assert all(list(json.loads(line)) == sorted(json.loads(line)) and "late_key" in json.loads(line) for line in got)
    assert "only_outside" not in json.loads(got[0])  # a key only a rejected row carries is not
    assert [p.rows for p in manifest.parts] == [n for _, n in part_slices(len(want), MAX_ROWS)]
    counts = result.counts
    assert counts.source_rows == len(lines)
    assert counts.reconciles() and counts.rejected == 5 and counts.duplicates >= 4
    assert {"parse", "normalize", "serialize", "dedup", "compress", "upload"} <= set(timings)


def test_fast_path_is_byte_identical_to_the_whole_hour_path(client):
    lines = hour_input()
    manifest, result, parts, _ = export(client, lines, lines_per_chunk=61)
    whole = whole_hour(source_chunks(lines), HOUR)
    expected = [
        gzip_bytes(jsonl_bytes(whole.lines.slice(offset, length).to_frame()))
        for offset, length in part_slices(whole.frame.height, MAX_ROWS)
    ]
    assert parts == expected
    assert result.counts == whole.counts
    assert result.frame.columns == whole.frame.columns
    identities = client.download_blob(f"_state/{PROJECT}/identities/{PROJECT}_2020-01-25_17.parquet").readall()
    assert pl.read_parquet(io.BytesIO(identities)).equals(whole.identities)
    assert result.rejects.equals(whole.rejects)
    rejected = client.download_blob(f"_rejected/{PROJECT}/{PROJECT}_2020-01-25_17.jsonl.gz").readall()
    assert [json.loads(x)["line"] for x in gzip.decompress(rejected).decode().splitlines()] == whole.rejects["line"].to_list()
    marker = json.loads(client.download_blob(f"{PROJECT}/{PROJECT}_2020-01-25_17_complete").readall())
    assert marker["rows"] == whole.frame.height and marker["counts"] == whole.counts.as_dict()


def test_fast_path_with_a_filter_and_an_empty_hour(client):
    lines = hour_input()
    keep = pl.col("event_type") == "Search"
    manifest, result, parts, _ = export(client, lines, keep=keep)
    whole = whole_hour(source_chunks(lines), HOUR, keep)
    got = b"".join(gzip.decompress(p) for p in parts)
    assert got == jsonl_bytes(whole.lines.to_frame())
    assert result.counts == whole.counts and result.counts.filtered > 0

    empty_manifest, empty, empty_parts, _ = export(client, ["not json"])
    assert empty_parts == [] and empty.counts.rejected == 1 and empty.counts.exported == 0
    assert empty_manifest.parts == []


def test_a_source_that_fails_midway_fails_the_hour_and_leaves_no_marker(client):
    def chunks():
        yield from source_chunks(hour_input()[:400])
        raise ConnectionError("download interrupted")

    with pytest.raises(ConnectionError, match="download interrupted"):
        export_events_hour(
            client, EventsLayout("", PROJECT), chunks(), HOUR, keep=None, source="synthetic",
            max_rows_per_file=MAX_ROWS, lines_per_chunk=97,
        )
    assert not [b.name for b in client.list_blobs()]
    assert not [t for t in threading.enumerate() if t.name == "amplitude-source"]


def test_a_key_first_seen_outside_the_hour_then_inside_it_reorders_earlier_parts(client):
    # The key comes first in the hour's order (its first line is out of the hour), but
    # only a line in a later chunk makes it an exported key: parts written before then
    # lack it in the middle of their extra keys, not at the end, and are rebuilt.
    lines = hour_input()
    rows = SyntheticSource(PROJECT, 3, 9).events(HOUR)
    lines.insert(0, json.dumps({"early_outside": 1, **rows[0], "uuid": str(uuid.UUID(int=7)),
                                "server_upload_time": "2020-01-25 16:59:59.999999"}))
    lines.insert(700, json.dumps({**rows[1], "uuid": str(uuid.UUID(int=8)), "early_outside": {"a": [1.5, None]}}))
    manifest, result, parts, _ = export(client, lines, lines_per_chunk=61)
    got = [line for part in parts for line in gzip.decompress(part).decode("utf-8").splitlines()]
    want = reference_lines(lines)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert pairs(a) == pairs(b), f"line {i} differs:\n fast: {a}\n ref:  {b}"
    assert list(json.loads(got[0])) == line_keys(["early_outside", "$insert_key", "data_type", "global_user_properties",
                                                  "partner_id", "source_id", "plan", "line", "_pos", "late_key"])
    whole = whole_hour(source_chunks(lines), HOUR)
    assert parts == [
        gzip_bytes(jsonl_bytes(whole.lines.slice(offset, length).to_frame()))
        for offset, length in part_slices(whole.frame.height, MAX_ROWS)
    ]
    assert result.counts == whole.counts


def test_an_hour_that_fails_midway_leaves_the_earlier_export_of_it_whole(client):
    lines = hour_input()
    manifest, _, parts, _ = export(client, lines)
    before = {b.name: b.content_settings.content_md5 for b in client.list_blobs()}
    assert len(manifest.parts) > 1

    def chunks():
        changed = [line.replace('"Search"', '"Searched"') for line in lines]
        yield from source_chunks(changed[:900])  # enough for whole parts to be compressed and staged
        raise ConnectionError("download interrupted")

    with pytest.raises(ConnectionError, match="download interrupted"):
        export_events_hour(
            client, EventsLayout("", PROJECT), chunks(), HOUR, keep=None, source="synthetic",
            max_rows_per_file=MAX_ROWS, lines_per_chunk=97,
        )
    after = {b.name: b.content_settings.content_md5 for b in client.list_blobs()}
    assert after == before
    assert [client.download_blob(f"{PROJECT}/{p.name}").readall() for p in manifest.parts] == parts


def test_a_rebuilt_part_keeps_lines_whose_text_only_looks_like_lenient_json(client):
    # `Fi\u006eancial` is written out as "Financial" (it has "nan" in it) and 1e400 is
    # JSON that the strict reader refuses: the rebuild must read the exporter's own
    # lines back as they are, not check them again as input.
    lines = hour_input()
    rows = SyntheticSource(PROJECT, 3, 9).events(HOUR)
    lines.insert(0, json.dumps({"early_outside": 1, **rows[0], "uuid": str(uuid.UUID(int=7)),
                                "server_upload_time": "2020-01-25 16:59:59.999999"}))
    odd = json.dumps({**rows[2], "uuid": str(uuid.UUID(int=9)), "event_properties": {"a": 1}})
    odd = odd.replace('"event_properties": {"a": 1}', '"event_properties": {"a": 1e400}')
    odd = odd.replace(f'"event_type": {json.dumps(rows[2]["event_type"])}', '"event_type": "Fi\\u006eancial"')
    assert "1e400" in odd and "u006e" in odd
    lines.insert(5, odd)
    lines.insert(700, json.dumps({**rows[1], "uuid": str(uuid.UUID(int=8)), "early_outside": {"a": [1.5, None]}}))
    manifest, result, parts, _ = export(client, lines, lines_per_chunk=61)
    whole = whole_hour(source_chunks(lines), HOUR)
    assert parts == [
        gzip_bytes(jsonl_bytes(whole.lines.slice(offset, length).to_frame()))
        for offset, length in part_slices(whole.frame.height, MAX_ROWS)
    ]
    assert manifest.rows == whole.frame.height
    assert any('"event_type":"Financial"' in line and '{"a":1e400}' in line
               for part in parts for line in gzip.decompress(part).decode().splitlines())


def test_each_export_stages_blocks_under_ids_of_its_own(client):
    # Two exports of the same hour at once must never commit each other's blocks.
    lines = hour_input()
    export(client, lines)
    name = f"{PROJECT}/{PROJECT}_2020-01-25_17#0.json.gz"
    first = [b.id for b in client.get_blob_client(name).get_block_list("committed")[0]]
    export(client, lines)
    second = [b.id for b in client.get_blob_client(name).get_block_list("committed")[0]]
    assert first and second and not set(first) & set(second)
