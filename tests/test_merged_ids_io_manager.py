"""`merged_ids` goes through its IO manager: the asset derives Polars tables, `MergedIdsIOManager` writes them.

Against a real Azurite, through real Dagster runs:
- the asset's output is lazy: an hour is derived only after the hour before is written
  (its marker exists), so a range run carries the state in memory one hour at a time;
- a range run whose third hour fails records the two hours it wrote as materializations,
  with their own metadata, and names the failed hour and the hours not attempted.
"""

import hashlib
import json
from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl
from azure.storage.blob import BlobServiceClient

from amplitude_assets.destination.credentials import AzureStorage
from amplitude_assets.destination.io_manager import MergedIdsIOManager, MergedIdsStream
from amplitude_assets.destination.writer import encode_records
from amplitude_assets.identity import MergedHour, StoredState
from amplitude_assets.layout import MergedIdsLayout
from amplitude_assets.partitions import partition_key
from amplitude_assets.schema import MERGED_ID_FIELDS
from tests.helpers import definitions, materialize

ORG = "4242"
SCOPE = f"-{ORG}"
LAYOUT = MergedIdsLayout("merged_ids", SCOPE)
START = datetime(2020, 1, 25, 0, tzinfo=timezone.utc)
HOURS = [START + timedelta(hours=i) for i in range(3)]


def merges(count: int, base: int) -> pl.DataFrame:
    return pl.DataFrame(
        {"scope": [int(SCOPE)] * count, "merge_time": [1579910400000 + i for i in range(count)],
         "merge_server_time": [1579910400500 + i for i in range(count)],
         "amplitude_id": [base + 2 * i for i in range(count)],
         "merged_amplitude_id": [base + 2 * i + 1 for i in range(count)]},
        schema={name: pl.Int64 for name in MERGED_ID_FIELDS},
    )


def test_each_hour_is_derived_only_after_the_hour_before_is_written(container, azurite, blobs):
    client = BlobServiceClient.from_connection_string(azurite).get_container_client(container)
    seen: list[tuple[str, bool]] = []  # (hour derived, was the hour before's marker there)

    def derive(hours):
        started_from = None
        for i, hour in enumerate(hours):
            before = hour - timedelta(hours=1)
            seen.append((partition_key(hour), client.get_blob_client(LAYOUT.marker(before)).exists()))
            state = f"state after {partition_key(hour)}".encode()
            md5 = hashlib.md5(state).hexdigest()
            yield MergedHour(
                hour=hour, merges=merges(i, 1000 * (i + 1)), identity_rows=10 * (i + 1), state=state, state_md5=md5,
                state_stored_as="snapshot" if started_from is None else "delta", state_sizes={"original": i},
                started_from=started_from, timings={"read_seconds": 0.0, "derive_seconds": 0.0},
            )
            started_from = StoredState(LAYOUT.state(hour), md5)

    partitions = dg.HourlyPartitionsDefinition(start_date="2020-01-25-00:00")

    @dg.asset(partitions_def=partitions, io_manager_key="merged_ids_io_manager")
    def merged_ids(context: dg.AssetExecutionContext) -> MergedIdsStream:
        window = context.partition_time_window
        hours = [h for h in HOURS if window.start <= h < window.end]
        return MergedIdsStream(hours=hours, derived=derive(hours), source="synthetic")

    storage = AzureStorage(connection_string=azurite)
    result = dg.materialize(
        [merged_ids],
        resources={"merged_ids_io_manager": MergedIdsIOManager(storage=storage, container=container, scope=SCOPE)},
        tags={"dagster/asset_partition_range_start": "2020-01-25-00:00",
              "dagster/asset_partition_range_end": "2020-01-25-02:00"},
    )
    assert result.success
    assert seen == [("2020-01-25-00:00", False), ("2020-01-25-01:00", True), ("2020-01-25-02:00", True)]

    stored = blobs(container)
    for i, hour in enumerate(HOURS):
        marker = json.loads(stored[LAYOUT.marker(hour)])
        assert stored[LAYOUT.state(hour)] == f"state after {partition_key(hour)}".encode()
        assert marker["counts"] == {"identity_rows": 10 * (i + 1), "merges": i}
        assert marker["state"]["md5"] == hashlib.md5(stored[LAYOUT.state(hour)]).hexdigest()
        if i == 0:
            assert marker["previous_state"] is None and marker["identity_history_starts"] == "2020-01-25T00:00:00Z"
            assert LAYOUT.file(hour) not in stored  # no merges, no file
        else:
            assert marker["previous_state"] == {"name": LAYOUT.state(HOURS[i - 1]),
                                                "md5": json.loads(stored[LAYOUT.marker(HOURS[i - 1])])["state"]["md5"]}
            assert stored[LAYOUT.file(hour)] == encode_records(merges(i, 1000 * (i + 1)))
    rows = {e.partition: e.metadata["dagster/row_count"].value for e in result.asset_materializations_for_node("merged_ids")}
    assert rows == {"2020-01-25-00:00": 0, "2020-01-25-01:00": 1, "2020-01-25-02:00": 2}


def test_a_range_run_that_fails_at_its_third_hour_records_the_two_it_wrote(container, settings_env, blobs):
    settings_env(AMPLITUDE_START="2020-01-25-00:00", AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR=300, AMPLITUDE_ORG_ID=ORG)
    defs = definitions()
    for key in ("2020-01-25-00:00", "2020-01-25-01:00", "2020-01-25-03:00"):  # 02:00's events are missing
        assert materialize(defs, ["events"], partition=key).success

    instance = dg.DagsterInstance.ephemeral()
    result = materialize(defs, ["merged_ids"], start="2020-01-25-00:00", end="2020-01-25-03:00",
                         raise_on_error=False, instance=instance)
    assert not result.success
    failure = result.failure_data_for_node("merged_ids")
    assert failure.user_failure_data.description.startswith(
        "merged_ids 2020-01-25-02:00 failed: merged_ids 2020-01-25-02:00: the hour's identities")
    assert "materialize events for 2020-01-25-02:00 first" in failure.user_failure_data.description
    metadata = failure.user_failure_data.metadata
    assert metadata["exported_hours"].value == ["2020-01-25-00:00", "2020-01-25-01:00"]
    assert metadata["not_attempted"].value == ["2020-01-25-03:00"]

    stored = blobs(container)
    markers = sorted(n for n in stored if n.startswith(LAYOUT.folder) and n.endswith("_complete"))
    assert markers == [LAYOUT.marker(HOURS[0]), LAYOUT.marker(HOURS[1])]
    records = instance.fetch_materializations(dg.AssetKey("merged_ids"), limit=100).records
    recorded = {r.partition_key: r.asset_materialization.metadata for r in records}
    assert sorted(recorded) == ["2020-01-25-00:00", "2020-01-25-01:00"]
    for hour in HOURS[:2]:
        marker = json.loads(stored[LAYOUT.marker(hour)])
        metadata = recorded[partition_key(hour)]
        assert metadata["dagster/row_count"].value == marker["rows"]
        assert metadata["state_md5"].value == marker["state"]["md5"]
        assert metadata["marker"].value == f"{container}/{LAYOUT.marker(hour)}"
