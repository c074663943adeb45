"""Downstream assets take `events` and `merged_ids` as inputs: the IO managers load typed polars
frames from the container. Checked against the exported blobs read independently (gzip + json)."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl
import pytest

from amplitude_assets.schema import EVENT_FIELDS, Kind
from tests.helpers import definitions, materialize

PROJECT = "187520"
ORG = "4242"
DAY = datetime(2020, 1, 25, tzinfo=timezone.utc)
TYPES = {Kind.TIMESTAMP: pl.Datetime("us", "UTC"), Kind.INT: pl.Int64, Kind.FLOAT: pl.Float64, Kind.BOOL: pl.Boolean,
         Kind.UUID: pl.String, Kind.STRING: pl.String, Kind.DICT: pl.String, Kind.ARRAY_OR_STRING: pl.String,
         Kind.NUMBER: pl.Float64}


@pytest.fixture
def env(container, settings_env):
    settings_env(AMPLITUDE_START="2020-01-25-00:00", AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR=80, AMPLITUDE_ORG_ID=ORG,
                 AMPLITUDE_MAX_ROWS_PER_FILE=50)  # several parts an hour
    return container


def ordered(text: str):
    """JSON with each object's keys in order, so equal values are equal in key order too."""
    return json.loads(text, object_pairs_hook=lambda pairs: list(pairs))


def exported_lines(stored: dict[str, bytes], hour: datetime) -> list[str]:
    stem = f"{PROJECT}/{PROJECT}_{hour:%Y-%m-%d}_{hour.hour}#"
    parts = sorted((n for n in stored if n.startswith(stem)), key=lambda n: int(n[len(stem):].split(".")[0]))
    return [line for n in parts for line in gzip.decompress(stored[n]).decode().splitlines()]


def exported_merges(stored: dict[str, bytes], hour: datetime) -> list[dict]:
    name = f"merged_ids/-{ORG}/-{ORG}_{hour:%Y-%m-%d}_{hour.hour}.json.gz"
    return [json.loads(line) for line in gzip.decompress(stored[name]).decode().splitlines()] if name in stored else []


MERGED_IDS_SCHEMA = pl.Schema({"scope": pl.Int32, "merge_time": pl.Int64, "merge_server_time": pl.Int64,
                               "amplitude_id": pl.Int64, "merged_amplitude_id": pl.Int64})


def loading_asset(defs: dg.Definitions, loaded: dict) -> dg.AssetsDefinition:
    """An hourly downstream asset that takes `events` and `merged_ids` and records the frames it is given."""

    @dg.asset(partitions_def=defs.get_assets_def("events").partitions_def,
              ins={"events": dg.AssetIn(), "merged_ids": dg.AssetIn()})
    def resolved(events: pl.DataFrame, merged_ids: pl.DataFrame) -> dg.MaterializeResult:
        loaded.update(events=events, merged_ids=merged_ids)
        return dg.MaterializeResult()

    return resolved


def downstream(defs: dg.Definitions, asset: dg.AssetsDefinition, partition: str | None = None, **tags):
    """Materialize `asset` alone, for one partition or a range (tags), its inputs loaded by the project's IO managers."""
    return dg.materialize(
        [defs.get_assets_def("events"), defs.get_assets_def("merged_ids"), asset],
        selection=[asset.key], partition_key=partition, resources=defs.resources, tags=tags or None,
        raise_on_error=False,
    )


def test_events_and_merged_ids_load_as_typed_frames(env, blobs):
    hours = [DAY + timedelta(hours=i) for i in range(3)]
    assert materialize(definitions(), ["events", "merged_ids"], start="2020-01-25-00:00", end="2020-01-25-02:00").success
    defs = definitions()
    loaded = {}
    result = downstream(defs, loading_asset(defs, loaded), **{
        "dagster/asset_partition_range_start": "2020-01-25-00:00", "dagster/asset_partition_range_end": "2020-01-25-02:00"})
    assert result.success
    stored = blobs(env)
    lines = [line for hour in hours for line in exported_lines(stored, hour)]
    events = loaded["events"]

    # The 49 fields in order and typed, then the extra fields the synthetic source carries,
    # in the order the lines hold them (code-point order).
    keys = list(dict.fromkeys(k for line in lines for k, _ in ordered(line)))
    columns = [*(n for n, _ in EVENT_FIELDS), *(k for k in keys if k not in dict(EVENT_FIELDS))]
    assert events.columns == columns and {"$insert_key", "plan"} <= set(columns[49:])
    assert keys == sorted(keys)
    assert {n: events.schema[n] for n, _ in EVENT_FIELDS} == {n: TYPES[k] for n, k in EVENT_FIELDS}
    assert events.schema["$insert_key"] == pl.String and events.schema["plan"] == pl.String
    assert events.height == len(lines) > 150
    kinds = dict(EVENT_FIELDS)
    for row, line in zip(events.iter_rows(named=True), lines):
        sent = dict(ordered(line))
        for name, value in row.items():
            kind, want = kinds.get(name), sent.get(name)  # an hour without an extra field reads it as null
            if kind is Kind.TIMESTAMP:
                assert value == (None if want is None else
                                 datetime.strptime(want, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)), name
            elif kind in (Kind.DICT, Kind.ARRAY_OR_STRING) or kind is None:  # JSON text, as exported
                assert (None if value is None else ordered(value)) == want, name
            else:
                assert value == want, name
    assert any(row["plan"] is not None for row in events.iter_rows(named=True))

    merges = [m for hour in hours for m in exported_merges(stored, hour)]
    assert merges, "the synthetic hours have merges"
    frame = loaded["merged_ids"]
    assert frame.schema == MERGED_IDS_SCHEMA
    assert frame.to_dicts() == merges


def daily_active_users_asset(seen: dict):
    """The downstream example of docs/dagster.md, as written there, recording its frame for the test."""

    @dg.asset(
        partitions_def=dg.DailyPartitionsDefinition(start_date="2020-01-25", timezone="UTC"),
        ins={"events": dg.AssetIn(), "merged_ids": dg.AssetIn()},
    )
    def daily_active_users(events: pl.DataFrame, merged_ids: pl.DataFrame) -> dg.MaterializeResult:
        """Users active each UTC day, with merged anonymous IDs resolved to the user's original ID."""
        users = (
            events.filter(pl.col("amplitude_id").is_not_null())
            .join(merged_ids.select("amplitude_id", "merged_amplitude_id"), on="amplitude_id", how="left")
            .select(pl.coalesce("merged_amplitude_id", "amplitude_id").alias("user"))
            .unique()
        )
        seen["users"] = users
        return dg.MaterializeResult(metadata={"daily_active_users": users.height, "events": events.height})

    return daily_active_users


def test_daily_active_users_resolved_through_merged_ids(env, blobs):
    assert materialize(definitions(), ["events", "merged_ids"], start="2020-01-25-00:00", end="2020-01-25-23:00").success
    defs = definitions()
    seen: dict = {}
    result = downstream(defs, daily_active_users_asset(seen), "2020-01-25")
    assert result.success

    stored = blobs(env)
    hours = [DAY + timedelta(hours=i) for i in range(24)]
    ids = [json.loads(line)["amplitude_id"] for hour in hours for line in exported_lines(stored, hour)]
    resolve = {m["amplitude_id"]: m["merged_amplitude_id"] for hour in hours for m in exported_merges(stored, hour)}
    expected = {resolve.get(i, i) for i in ids if i is not None}
    assert resolve and set(resolve) & set(ids), "some of the day's events carry merged-away IDs"
    assert len(expected) < len({i for i in ids if i is not None})
    assert set(seen["users"]["user"].to_list()) == expected
    [materialization] = result.asset_materializations_for_node("daily_active_users")
    assert materialization.partition == "2020-01-25"
    assert materialization.metadata["daily_active_users"].value == len(expected)
    assert materialization.metadata["events"].value == len(ids)


def test_a_day_with_an_hour_not_exported_fails_naming_it(env):
    assert materialize(definitions(), ["events", "merged_ids"], partition="2020-01-25-00:00").success
    defs = definitions()
    result = downstream(defs, daily_active_users_asset({}), "2020-01-25")
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = str(failure.event_specific_data.error.message) + str(failure.event_specific_data.error.cause)
    assert "hour 2020-01-25-01:00 has not been exported" in message


def test_an_hour_without_merges_loads_as_an_empty_typed_frame(env, settings_env, tmp_path, blobs):
    # Two anonymous events: the hour is exported, with a marker and no merged-IDs file.
    folder = tmp_path / PROJECT
    folder.mkdir()
    lines = [{"server_upload_time": f"2020-01-25 00:0{i}:00.000000", "event_time": "2020-01-25 00:00:00.000000",
              "amplitude_id": 10 + i, "device_id": f"d{i}", "uuid": f"00000000-0000-4000-8000-00000000000{i}"}
             for i in range(2)]
    (folder / f"{PROJECT}_2020-01-25_0#0.json.gz").write_bytes(
        gzip.compress("".join(json.dumps(line) + "\n" for line in lines).encode()))
    settings_env(AMPLITUDE_SOURCE="files", AMPLITUDE_FILES_URL=tmp_path)
    assert materialize(definitions(), ["events", "merged_ids"], partition="2020-01-25-00:00").success
    stored = blobs(env)
    assert f"merged_ids/-{ORG}/-{ORG}_2020-01-25_0_complete" in stored
    assert f"merged_ids/-{ORG}/-{ORG}_2020-01-25_0.json.gz" not in stored
    defs = definitions()
    loaded = {}
    assert downstream(defs, loading_asset(defs, loaded), "2020-01-25-00:00").success
    assert loaded["events"]["amplitude_id"].to_list() == [10, 11]
    assert loaded["merged_ids"].height == 0
    assert loaded["merged_ids"].schema == MERGED_IDS_SCHEMA
