"""The core export path against a real Azurite: names, parts, markers, types, determinism."""

from __future__ import annotations

import gzip
import hashlib
import json
import re

import pytest

from amplitude_assets.schema import EVENT_FIELD_NAMES, EVENT_FIELDS, TIMESTAMP_PATTERN, UUID_PATTERN, Kind
from tests.helpers import definitions, lines_of, materialize

PROJECT = "187520"


@pytest.fixture
def env(synthetic_hours, settings_env):
    settings_env(AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR=300)  # enough rows for three 100-row parts
    return synthetic_hours


def test_one_hour_lands_in_amplitudes_layout(env, blobs):
    result = materialize(definitions(), ["events"], partition="2020-01-25-17:00")
    assert result.success
    stored = blobs(env)
    assert sorted(n for n in stored if not n.startswith("_")) == [
        f"{PROJECT}/{PROJECT}_2020-01-25_17#0.json.gz",
        f"{PROJECT}/{PROJECT}_2020-01-25_17_complete",
    ]
    part = stored[f"{PROJECT}/{PROJECT}_2020-01-25_17#0.json.gz"]
    text = gzip.decompress(part).decode("utf-8")
    assert text.endswith("\n")
    rows = [json.loads(line) for line in text.splitlines()]
    assert len(rows) > 250
    for row in rows:  # the 49 fields and the extra keys together, in code-point order, the same on every line
        assert list(row) == sorted(row) == sorted(rows[0]) and set(EVENT_FIELD_NAMES) <= set(row)
    manifest = json.loads(stored[f"{PROJECT}/{PROJECT}_2020-01-25_17_complete"])
    assert manifest["version"] == 1
    assert manifest["hour"] == "2020-01-25T17:00:00Z"
    assert manifest["source"] == "synthetic"
    assert manifest["rows"] == len(rows)
    assert manifest["parts"] == [{
        "name": f"{PROJECT}_2020-01-25_17#0.json.gz", "rows": len(rows), "bytes": len(part),
        "md5": hashlib.md5(part).hexdigest(),
    }]
    counts = manifest["counts"]
    assert counts["exported"] == len(rows)
    assert counts["source_rows"] == counts["exported"] + counts["duplicates"] + counts["filtered"] + counts["rejected"]
    assert counts["duplicates"] > 0  # the synthetic source repeats ~1% of rows


def test_blob_properties_are_gzip_without_content_encoding(env, blobs):
    materialize(definitions(), ["events"], partition="2020-01-25-09:00")
    client = blobs.service.get_container_client(env)
    props = client.get_blob_client(f"{PROJECT}/{PROJECT}_2020-01-25_9#0.json.gz").get_blob_properties()
    assert props.content_settings.content_type == "application/gzip"
    assert not props.content_settings.content_encoding
    data = client.download_blob(f"{PROJECT}/{PROJECT}_2020-01-25_9#0.json.gz").readall()
    assert bytes(props.content_settings.content_md5) == hashlib.md5(data).digest()
    assert data[:2] == b"\x1f\x8b"  # the gzip bytes as they are, not decoded on download


@pytest.mark.parametrize("key,name", [
    ("2020-01-25-00:00", "2020-01-25_0"), ("2020-01-25-09:00", "2020-01-25_9"),
    ("2020-01-25-17:00", "2020-01-25_17"), ("2020-01-25-23:00", "2020-01-25_23"),
])
def test_hour_names_are_not_zero_padded(env, blobs, key, name):
    materialize(definitions(), ["events"], partition=key)
    names = set(blobs(env))
    assert f"{PROJECT}/{PROJECT}_{name}#0.json.gz" in names
    assert f"{PROJECT}/{PROJECT}_{name}_complete" in names


def test_prefix_and_part_splitting_and_stale_parts(env, blobs, settings_env):
    settings_env(AZURE_EVENTS_PREFIX="raw/amplitude", AMPLITUDE_MAX_ROWS_PER_FILE=100)
    materialize(definitions(), ["events"], partition="2020-01-25-17:00")
    folder = f"raw/amplitude/{PROJECT}/{PROJECT}_2020-01-25_17"
    stored = blobs(env, prefix=f"raw/amplitude/{PROJECT}/")
    parts = sorted((n for n in stored if "#" in n), key=lambda n: int(re.search(r"#(\d+)", n).group(1)))
    assert parts == [f"{folder}#{n}.json.gz" for n in range(len(parts))]
    assert len(parts) >= 3
    sizes = [len(lines_of(stored[p])) for p in parts]
    assert all(s == 100 for s in sizes[:-1]) and 0 < sizes[-1] <= 100
    first_run = {p: stored[p] for p in parts}

    settings_env(AMPLITUDE_MAX_ROWS_PER_FILE=1000)
    materialize(definitions(), ["events"], partition="2020-01-25-17:00")
    stored = blobs(env, prefix=f"raw/amplitude/{PROJECT}/")
    assert sorted(n for n in stored if "#" in n) == [f"{folder}#0.json.gz"]
    merged = [row for p in parts for row in lines_of(first_run[p])]
    assert lines_of(stored[f"{folder}#0.json.gz"]) == merged
    manifest = json.loads(stored[f"{folder}_complete"])
    assert [p["name"] for p in manifest["parts"]] == [f"{PROJECT}_2020-01-25_17#0.json.gz"]


def test_reexport_is_byte_identical(env, blobs):
    materialize(definitions(), ["events"], partition="2020-01-25-17:00")
    first = {n: b for n, b in blobs(env).items() if n.endswith(".json.gz")}
    materialize(definitions(), ["events"], partition="2020-01-25-17:00")
    second = {n: b for n, b in blobs(env).items() if n.endswith(".json.gz")}
    assert first == second and first


def test_every_field_has_its_contract_type(env, blobs):
    materialize(definitions(), ["events"], partition="2020-01-25-17:00")
    rows = lines_of(blobs(env)[f"{PROJECT}/{PROJECT}_2020-01-25_17#0.json.gz"])
    seen_non_null = {name: False for name, _ in EVENT_FIELDS}
    for row in rows:
        for name, kind in EVENT_FIELDS:
            value = row[name]
            if kind is Kind.DICT:
                assert isinstance(value, dict), (name, value)
                seen_non_null[name] = True
                continue
            if value is None:
                continue
            seen_non_null[name] = True
            if kind is Kind.TIMESTAMP:
                assert re.match(TIMESTAMP_PATTERN, value), (name, value)
            elif kind is Kind.INT:
                assert type(value) is int, (name, value)
            elif kind is Kind.FLOAT:
                assert type(value) is float, (name, value)
            elif kind is Kind.BOOL:
                assert type(value) is bool, (name, value)
            elif kind is Kind.UUID:
                assert re.match(UUID_PATTERN, value), (name, value)
            else:
                assert type(value) is str, (name, value)
    always_null = {"amplitude_attribution_ids", "amplitude_event_type", "adid", "sample_rate", "idfa"}
    assert {n for n, seen in seen_non_null.items() if not seen} == always_null


def test_unicode_and_property_objects_round_trip(env, blobs):
    from datetime import datetime, timezone

    from amplitude_assets.sources.synthetic import SyntheticSource

    materialize(definitions(), ["events"], partition="2020-01-25-17:00")
    rows = lines_of(blobs(env)[f"{PROJECT}/{PROJECT}_2020-01-25_17#0.json.gz"])
    source = {r["uuid"]: r for r in SyntheticSource(PROJECT, 300, 0).events(datetime(2020, 1, 25, 17, tzinfo=timezone.utc))}
    assert any("東京" == r["city"] for r in rows)
    for row in rows:
        original = source[row["uuid"]]
        for name in ("event_properties", "user_properties", "groups", "group_properties", "data", "plan", "$insert_key"):
            # Same keys, same order, same value types: the object each event was sent with.
            assert json.dumps(row[name]) == json.dumps(original.get(name)), name
