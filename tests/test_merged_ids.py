"""`merged_ids` against a real Azurite: layouts, four-step writes, carried state, history and gaps."""

from __future__ import annotations

import gzip
import hashlib
import io
import json

import dagster as dg
import polars as pl
import pytest

from amplitude_assets.schema import MERGED_ID_FIELDS
from tests.helpers import add_run, definitions, keys_in_order, materialize

PROJECT = "187520"
ORG = "4242"
BOTH = ["events", "merged_ids"]


@pytest.fixture
def env(container, settings_env):
    settings_env(AMPLITUDE_START="2020-01-25-00:00", AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR=300, AMPLITUDE_ORG_ID=ORG)
    return container


def run(selection=BOTH, **kwargs):
    return materialize(definitions(), selection, **kwargs)


def manifest_of(stored: dict[str, bytes], name: str) -> dict:
    return json.loads(stored[name])


def without_time(manifest: bytes) -> dict:
    body = json.loads(manifest)
    body.pop("exported_at")
    return body


def merged_blobs(stored: dict[str, bytes], prefix: str) -> dict[str, bytes]:
    return {name: data for name, data in stored.items() if name.startswith(prefix)}


def failure_message(result) -> str:
    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures, "expected a failed step"
    return "\n".join(str(e.event_specific_data.error.message) for e in failures)


def test_org_layout_rows_and_manifest(env, blobs):
    assert run(partition="2020-01-25-00:00").success
    stored = blobs(env)
    folder = f"merged_ids/-{ORG}/"
    name = f"{folder}-{ORG}_2020-01-25_0.json.gz"
    marker = f"{folder}-{ORG}_2020-01-25_0_complete"
    state = f"merged_ids/_state/-{ORG}/-{ORG}_2020-01-25_0.parquet"
    assert {name, marker, state} <= set(stored)
    assert not any(n.startswith(f"{PROJECT}/-") for n in stored)

    text = gzip.decompress(stored[name]).decode()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert lines, "the synthetic hour has merges"
    rows = [json.loads(line) for line in lines]
    for line, row in zip(lines, rows):
        assert keys_in_order(line) == list(MERGED_ID_FIELDS)
        assert all(type(row[k]) is int for k in MERGED_ID_FIELDS)
        assert row["scope"] == -int(ORG)
        assert row["amplitude_id"] != row["merged_amplitude_id"]
        assert 1579910400000 <= row["merge_server_time"] < 1579914000000  # inside the hour, in ms
        assert row["merge_time"] <= row["merge_server_time"] + 1
    assert [r["merge_server_time"] for r in rows] == sorted(r["merge_server_time"] for r in rows)
    assert len({r["amplitude_id"] for r in rows}) == len(rows)

    manifest = manifest_of(stored, marker)
    assert manifest["hour"] == "2020-01-25T00:00:00Z"
    assert manifest["identity_history_starts"] == "2020-01-25T00:00:00Z"
    assert manifest["rows"] == len(rows)
    assert manifest["parts"] == [{
        "name": f"-{ORG}_2020-01-25_0.json.gz", "rows": len(rows), "bytes": len(stored[name]),
        "md5": hashlib.md5(stored[name]).hexdigest(),
    }]
    assert manifest["counts"]["merges"] == len(rows)
    assert manifest["state"]["name"] == state
    assert manifest["state"]["md5"] == hashlib.md5(stored[state]).hexdigest()
    assert manifest["previous_state"] is None

    props = blobs.service.get_container_client(env).get_blob_client(name).get_blob_properties()
    assert props.content_settings.content_type == "application/gzip"
    assert not props.content_settings.content_encoding
    assert bytes(props.content_settings.content_md5) == hashlib.md5(stored[name]).digest()

    # The state is Parquet outside the folder readers glob: a full snapshot where the history starts.
    frame = pl.read_parquet(io.BytesIO(stored[state]))
    assert frame["kind"][0] == "snapshot"
    assert set(frame["kind"][1:]) <= {"original", "identified", "anonymous", "merged"}
    assert manifest["state"]["stored_as"] == "snapshot"


def test_legacy_layout_uses_the_project_id(env, blobs, settings_env):
    settings_env(AMPLITUDE_ORG_ID=None)
    assert run(partition="2020-01-25-05:00").success
    stored = blobs(env)
    name = f"merged_ids/{PROJECT}/{PROJECT}_2020-01-25_5.json.gz"
    assert f"merged_ids/{PROJECT}/{PROJECT}_2020-01-25_5_complete" in stored
    assert f"merged_ids/_state/{PROJECT}/{PROJECT}_2020-01-25_5.parquet" in stored
    rows = [json.loads(line) for line in gzip.decompress(stored[name]).decode().splitlines()]
    assert rows and all(r["scope"] == int(PROJECT) for r in rows)


def test_separate_containers_for_events_and_merged_ids(env, blobs, fresh_container, settings_env):
    other = fresh_container("m").container_name
    settings_env(AZURE_MERGED_IDS_CONTAINER=other)
    assert run(partition="2020-01-25-03:00").success
    merged = blobs(other)
    assert f"-{ORG}/-{ORG}_2020-01-25_3_complete" in merged  # no prefix when the container is its own
    assert f"-{ORG}/-{ORG}_2020-01-25_3.json.gz" in merged
    assert f"_state/-{ORG}/-{ORG}_2020-01-25_3.parquet" in merged
    events = blobs(env)
    assert not any(f"-{ORG}" in n for n in events)
    assert f"{PROJECT}/{PROJECT}_2020-01-25_3_complete" in events


def test_rerunning_an_hour_is_byte_identical(env, blobs):
    assert run(partition="2020-01-25-00:00").success
    assert run(partition="2020-01-25-01:00").success
    first = merged_blobs(blobs(env), "merged_ids/")
    assert run(partition="2020-01-25-01:00").success
    again = merged_blobs(blobs(env), "merged_ids/")
    assert sorted(first) == sorted(again)
    for name in first:
        if name.endswith("_complete"):
            assert without_time(first[name]) == without_time(again[name])
        else:
            assert first[name] == again[name], name
    manifest = json.loads(again[f"merged_ids/-{ORG}/-{ORG}_2020-01-25_1_complete"])
    assert "identity_history_starts" not in manifest
    assert manifest["previous_state"]["name"] == f"merged_ids/_state/-{ORG}/-{ORG}_2020-01-25_0.parquet"


def test_first_export_without_history_starts_afresh(env, blobs):
    assert run(partition="2020-01-26-10:00").success
    stored = blobs(env)
    manifest = manifest_of(stored, f"merged_ids/-{ORG}/-{ORG}_2020-01-26_10_complete")
    assert manifest["identity_history_starts"] == "2020-01-26T10:00:00Z"
    assert run(partition="2020-01-26-11:00").success
    manifest = manifest_of(blobs(env), f"merged_ids/-{ORG}/-{ORG}_2020-01-26_11_complete")
    assert "identity_history_starts" not in manifest


def test_a_gap_after_existing_history_is_refused_naming_the_hour_to_run_first(env, blobs):
    assert run(partition="2020-01-25-10:00").success
    result = run(partition="2020-01-25-13:00", raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert "export merged_ids for 2020-01-25-11:00 first" in message
    assert "2020-01-25-12:00" in message
    assert not any(n.endswith("_13_complete") and "-" + ORG in n for n in blobs(env))
    # The events of 13:00 landed; merged IDs wait for the gap to be filled, then go through.
    assert run(start="2020-01-25-11:00", end="2020-01-25-12:00").success
    assert run(["merged_ids"], partition="2020-01-25-13:00").success


def test_merged_ids_needs_the_hours_events(env):
    result = run(["merged_ids"], partition="2020-01-25-02:00", raise_on_error=False)
    assert not result.success
    assert "materialize events for 2020-01-25-02:00 first" in failure_message(result)


def test_an_hour_without_merges_has_a_marker_and_no_file(env, blobs, settings_env):
    assert run(partition="2020-01-25-07:00").success
    name = f"merged_ids/-{ORG}/-{ORG}_2020-01-25_7.json.gz"
    assert name in blobs(env)
    settings_env(AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR=0)
    assert run(partition="2020-01-25-07:00").success
    stored = blobs(env)
    assert name not in stored  # the stale file of the earlier export is gone
    manifest = manifest_of(stored, f"merged_ids/-{ORG}/-{ORG}_2020-01-25_7_complete")
    assert manifest["parts"] == [] and manifest["rows"] == 0


def test_a_range_run_equals_single_hour_runs_byte_for_byte(env, blobs, fresh_container, settings_env):
    result = run(start="2020-01-25-00:00", end="2020-01-25-23:00")
    assert result.success
    ranged = merged_blobs(blobs(env), "merged_ids/")

    # Each hour's materialization carries that hour's own counts.
    counts = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        if materialization.asset_key == dg.AssetKey("merged_ids"):
            counts[materialization.partition] = materialization.metadata["dagster/row_count"].value
    assert len(counts) == 24
    for key, rows in counts.items():
        hour = int(key[11:13])
        manifest = json.loads(ranged[f"merged_ids/-{ORG}/-{ORG}_2020-01-25_{hour}_complete"])
        assert manifest["rows"] == rows
    assert sum(counts.values()) > 0 and len(set(counts.values())) > 1

    single = fresh_container("s").container_name
    settings_env(AZURE_EVENTS_CONTAINER=single)
    defs = definitions()
    for hour in range(24):
        assert materialize(defs, BOTH, partition=f"2020-01-25-{hour:02d}:00").success
    singles = merged_blobs(blobs(single), "merged_ids/")
    assert sorted(ranged) == sorted(singles)
    assert len([n for n in ranged if n.endswith("_complete")]) == 24
    stored_as = [json.loads(ranged[f"merged_ids/-{ORG}/-{ORG}_2020-01-25_{h}_complete"])["state"]["stored_as"]
                 for h in range(24)]
    assert stored_as == ["snapshot"] + ["delta"] * 22 + ["snapshot"]  # single runs read the deltas back
    for name in ranged:
        if name.endswith("_complete"):
            assert without_time(ranged[name]) == without_time(singles[name]), name
        else:
            assert ranged[name] == singles[name], name


def test_asset_shape(env):
    defs = definitions()
    asset = defs.resolve_assets_def("merged_ids")
    key = dg.AssetKey("merged_ids")
    assert asset.group_names_by_key[key] == "amplitude_export"
    assert asset.backfill_policy == dg.BackfillPolicy.multi_run(24)
    assert asset.partitions_def == defs.resolve_assets_def("events").partitions_def
    deps = {dep.asset_key: dep.partition_mapping for dep in asset.specs_by_key[key].deps}
    assert deps[dg.AssetKey("events")] is None
    assert deps[key] == dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)


def test_re_exporting_an_hour_flags_later_hours_as_stale(env, blobs, settings_env):
    assert run(start="2020-01-25-00:00", end="2020-01-25-01:00").success
    settings_env(AMPLITUDE_SYNTHETIC_SEED=7)  # the source changed its mind about hour 0
    result = run(partition="2020-01-25-00:00")
    assert result.success
    [materialization] = [
        e.event_specific_data.materialization for e in result.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key == dg.AssetKey("merged_ids")
    ]
    assert materialization.metadata["later_hours_stale_from"].value == "2020-01-25-01:00"
    stored = blobs(env)
    hour_0 = json.loads(stored[f"merged_ids/-{ORG}/-{ORG}_2020-01-25_0_complete"])
    hour_1 = json.loads(stored[f"merged_ids/-{ORG}/-{ORG}_2020-01-25_1_complete"])
    assert hour_1["previous_state"]["md5"] != hour_0["state"]["md5"]  # readers can tell, too
    assert run(partition="2020-01-25-01:00").success  # re-running it brings the chain back in line
    hour_1 = json.loads(blobs(env)[f"merged_ids/-{ORG}/-{ORG}_2020-01-25_1_complete"])
    assert hour_1["previous_state"]["md5"] == hour_0["state"]["md5"]


def test_a_broken_delta_chain_names_the_hours_to_re_export(env, blobs):
    assert run(start="2020-01-25-00:00", end="2020-01-25-03:00").success
    blobs.service.get_container_client(env).delete_blob(f"merged_ids/_state/-{ORG}/-{ORG}_2020-01-25_1.parquet")
    result = run(partition="2020-01-25-04:00", raise_on_error=False)
    assert not result.success
    assert "export merged_ids for 2020-01-25-01:00 ... 2020-01-25-03:00 first" in failure_message(result)
    assert run(start="2020-01-25-01:00", end="2020-01-25-04:00").success


def test_an_hour_waits_a_bounded_time_while_another_run_exports_the_hour_before(env, blobs, settings_env):
    """A run that starts while a running run still exports the hour before waits for it, up to
    AMPLITUDE_HOUR_LOCK_WAIT_SECONDS, then fails naming the hour (and writes nothing)."""
    import time

    settings_env(AMPLITUDE_HOUR_LOCK_WAIT_SECONDS=6)
    instance = dg.DagsterInstance.ephemeral()
    assert run(["events"], partition="2020-01-25-09:00", instance=instance).success
    earlier = add_run(instance, dg.DagsterRunStatus.STARTED, {"dagster/asset_partition_range_start": "2020-01-25-00:00",
                                                              "dagster/asset_partition_range_end": "2020-01-25-08:00"})

    started = time.monotonic()
    result = run(["merged_ids"], partition="2020-01-25-09:00", instance=instance, raise_on_error=False)
    assert not result.success
    assert 6 <= time.monotonic() - started < 60
    message = failure_message(result)
    assert (f"the hour before, 2020-01-25-08:00, is not exported yet: run {earlier.run_id} is still exporting it "
            "after 6s (AMPLITUDE_HOUR_LOCK_WAIT_SECONDS)" in message)
    assert "export merged_ids for 2020-01-25-08:00 first, then 2020-01-25-09:00" in message
    assert not any("_9_complete" in n and f"-{ORG}" in n for n in blobs(env))

    # Once that run is over, the hour goes through (no history before it: the history starts here).
    instance.report_run_failed(earlier)
    assert run(["merged_ids"], partition="2020-01-25-09:00", instance=instance).success
