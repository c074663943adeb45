"""The merged-ID chain in a real `dagster dev`: hours exported out of order are flagged stale, and
`hourly_export_sensor` re-exports them, oldest first, until the `chain` check passes for every hour."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from .conftest import exportable_hours, hour_blobs, hour_key

pytestmark = pytest.mark.e2e

SENSOR = "hourly_export_sensor"
HOURS_BACK = 6
REPAIR_TIMEOUT = 480.0  # the sensor's first tick, then its runs one after the other


@pytest.fixture(scope="module")
def dagster(recent_dagster):
    return recent_dagster("chain", HOURS_BACK)


def manifest(blobs, container: str, hour: datetime) -> dict | None:
    _, marker = hour_blobs(hour)
    client = blobs.service.get_container_client(container)
    name = f"merged_ids/{marker}"
    if not client.get_blob_client(name).exists():
        return None
    return json.loads(client.download_blob(name).readall())


def backfill_both(dagster, hours: list[datetime], title: str) -> None:
    backfill = dagster.wait_for_backfill(
        dagster.launch_partition_backfill(["events", "merged_ids"], [hour_key(h) for h in hours], title)
    )
    failed = [r["runId"] for r in backfill["runs"] if r["status"] != "SUCCESS"]
    assert backfill["runs"] and not failed, "\n".join(dagster.run_failure(r) for r in failed)


def test_hours_exported_out_of_order_are_repaired_by_the_sensor(dagster, e2e_blobs):
    first = dagster.start_hour
    hours = exportable_hours(first, datetime.now(timezone.utc))
    assert len(hours) >= 4, hours

    # Later hours first: their identity history starts at first+2 ...
    late = [first + timedelta(hours=2), first + timedelta(hours=3)]
    backfill_both(dagster, late, "later hours first")
    assert manifest(e2e_blobs, dagster.container, late[0])["identity_history_starts"] == f"{late[0]:%Y-%m-%dT%H:00:00Z}"
    # ... then the two hours before them.
    early = [first, first + timedelta(hours=1)]
    backfill_both(dagster, early, "earlier hours after")

    # The hour that made the later ones stale says so, and so does the chain check of the stale hour.
    [materialization] = dagster.materializations("merged_ids", hour_key(early[-1]))[:1]
    metadata = {m["label"]: m.get("text") for m in materialization["metadataEntries"]}
    assert metadata["later_hours_stale_from"] == hour_key(late[0])
    check = dagster.check_execution("merged_ids", "chain", hour_key(late[0]))
    assert check and check["evaluation"]["success"] is False, check
    assert check["evaluation"]["description"].startswith(f"stale: its identity history starts at {hour_key(late[0])}")
    stale = manifest(e2e_blobs, dagster.container, late[0])
    assert stale["previous_state"] is None

    dagster.start_sensor(SENSOR)

    # The sensor re-exports the stale hours (and exports any missing one), oldest first, until
    # every exported hour starts from the state the hour before left.
    deadline = time.monotonic() + REPAIR_TIMEOUT
    problems = ["not looked at yet"]
    while time.monotonic() < deadline and problems:
        time.sleep(5)
        problems = []
        for before, hour in zip(hours, hours[1:]):
            previous, current = manifest(e2e_blobs, dagster.container, before), manifest(e2e_blobs, dagster.container, hour)
            if previous is None or current is None:
                problems.append(f"{hour_key(hour)}: not exported")
            elif (current["previous_state"] or {}).get("md5") != previous["state"]["md5"]:
                problems.append(f"{hour_key(hour)}: stale")
    assert not problems, f"the sensor did not repair the chain in {REPAIR_TIMEOUT:.0f}s: {problems}"

    runs = dagster.runs({"dagster/sensor_name": SENSOR})
    for run in runs:
        finished = dagster.wait_for_run(run["runId"])
        assert finished["status"] == "SUCCESS", dagster.run_failure(run["runId"])
    repaired = [r for r in runs if {"dagster/asset_partition_range_start": hour_key(late[0])}.items()
                <= {t["key"]: t["value"] for t in r["tags"]}.items()]
    assert repaired, f"no sensor run starts at the first stale hour {hour_key(late[0])}: {runs}"

    # The chain check passes for every hour now.
    deadline = time.monotonic() + 60
    while True:
        checks = {hour_key(h): dagster.check_execution("merged_ids", "chain", hour_key(h)) for h in hours}
        failing = {k: c for k, c in checks.items() if not (c and c["evaluation"] and c["evaluation"]["success"])}
        if not failing or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert not failing, f"chain check not passing: {failing}"
