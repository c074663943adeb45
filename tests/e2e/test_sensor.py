"""The third user path: turn on `hourly_export_sensor` and let the daemon catch up on missing hours.

This runs its own `dagster dev` whose partitions start a few hours ago, so the sensor's
catch-up window is small and known: every closed, exportable hour is missing except the
first, which the test exports before turning the sensor on.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from .conftest import RANGE_END, RANGE_START, exportable_hours, hour_blobs, hour_key, parse_key

pytestmark = pytest.mark.e2e

SENSOR = "hourly_export_sensor"
HOURS_BACK = 4
# The first tick comes on the daemon's next loop after the sensor starts; generous for two busy cores.
SENSOR_TIMEOUT = 420.0


@pytest.fixture(scope="module")
def dagster(recent_dagster):
    return recent_dagster("sensor", HOURS_BACK)


def requested_hours(run: dict) -> list[datetime]:
    tags = {t["key"]: t["value"] for t in run["tags"]}
    if RANGE_START in tags:
        first, last = parse_key(tags[RANGE_START]), parse_key(tags[RANGE_END])
    elif "dagster/partition" in tags:
        first = last = parse_key(tags["dagster/partition"])
    else:
        raise AssertionError(f"sensor run {run['runId']} names no partition: {tags}")
    return [first + timedelta(hours=i) for i in range(int((last - first).total_seconds() // 3600) + 1)]


def test_sensor_requests_closed_hours_that_are_missing(dagster, e2e_blobs):
    repository = dagster.repository()
    sensors = {s["name"]: s for s in repository["sensors"]}
    assert SENSOR in sensors, f"{SENSOR} is not in the definitions (sensors: {sorted(sensors) or 'none'})"
    assert sensors[SENSOR]["sensorState"]["status"] == "STOPPED", "the sensor must be stopped by default"

    # One hour exported beforehand: the sensor must leave it alone.
    first = dagster.start_hour
    assert {"events", "merged_ids"} <= set(dagster.asset_keys())
    assets = ["events", "merged_ids"]
    backfill = dagster.wait_for_backfill(dagster.launch_partition_backfill(assets, [hour_key(first)], "before sensor"))
    assert backfill["runs"] and all(r["status"] == "SUCCESS" for r in backfill["runs"]), backfill

    expected = [h for h in exportable_hours(first, datetime.now(timezone.utc)) if h != first]
    assert expected, "no exportable hour to expect (the partitions start too late)"

    dagster.start_sensor(SENSOR)

    deadline = time.monotonic() + SENSOR_TIMEOUT
    requested: dict[datetime, str] = {}
    while time.monotonic() < deadline:
        for run in dagster.runs({"dagster/sensor_name": SENSOR}):
            for hour in requested_hours(run):
                requested.setdefault(hour, run["runId"])
        if set(expected) <= set(requested):
            break
        time.sleep(5)
    missing = [hour_key(h) for h in expected if h not in requested]
    assert not missing, f"the sensor did not request {missing} in {SENSOR_TIMEOUT:.0f}s; it requested {sorted(map(hour_key, requested))}"

    now = datetime.now(timezone.utc)
    assert first not in requested, f"the sensor re-requested {hour_key(first)}, which was already exported"
    too_young = [hour_key(h) for h in requested if h not in exportable_hours(first, now)]
    assert not too_young, f"the sensor requested hours not yet exportable: {too_young}"

    for run_id in sorted(set(requested.values())):
        run = dagster.wait_for_run(run_id)
        assert run["status"] == "SUCCESS", f"sensor run {run_id} {run['status']}:\n{dagster.run_failure(run_id)}"
    listing = e2e_blobs(dagster.container)
    not_landed = [hour_key(h) for h in expected if hour_blobs(h)[1] not in listing]
    assert not not_landed, f"the sensor's runs did not write markers for {not_landed}"
