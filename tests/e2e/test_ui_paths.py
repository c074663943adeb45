"""The users' paths through a real `dagster dev`: the asset page in Chromium, and range backfills
that the daemon runs under the asset's backfill policy (AMPLITUDE_HOURS_PER_RUN=3)."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta

import pytest

from tests.conftest import unique_name

from .conftest import (
    ARTIFACTS,
    RANGE_END,
    RANGE_START,
    days_back,
    e2e_env,
    hour_blobs,
    hour_key,
    running_dagster,
)

pytestmark = pytest.mark.e2e

HOURS_PER_RUN = 3
FOLLOW_TIMEOUT = 240.0  # the automation sensor ticks every 30 s, then a run starts
# A partitioned asset's button opens the partition dialog, hence the "…" (its icon adds to the name).
MATERIALIZE = re.compile(r"\bMaterialize…$")


@pytest.fixture(scope="module")
def dagster(e2e_azurite, tmp_path_factory):
    start = days_back(3)
    container = unique_name("e2e")
    env = e2e_env(e2e_azurite, container, hour_key(start), AMPLITUDE_HOURS_PER_RUN=str(HOURS_PER_RUN))
    with running_dagster(tmp_path_factory, "ui", env) as dagster:
        dagster.container = container
        dagster.start_hour = start
        yield dagster


def assert_hours_landed(blobs, container: str, hours, merged_ids: bool = False) -> None:
    """Every hour has its marker and at least one part, numbered from #0 (synthetic hours are never empty)."""
    listing = blobs(container)
    missing = []
    for hour in hours:
        parts, marker = hour_blobs(hour)
        if marker not in listing or parts + "0.json.gz" not in listing:
            missing.append(hour_key(hour))
        if merged_ids and f"merged_ids/{marker}" not in listing:
            missing.append(f"merged_ids {hour_key(hour)}")
    assert not missing, f"not in container {container}: {missing}; it holds {sorted(listing)[:40]}"


def marker_manifest(blobs, container: str, hour) -> dict:
    _, marker = hour_blobs(hour)
    client = blobs.service.get_container_client(container)
    return json.loads(client.download_blob(marker).readall())


def select_events_partitions(page, url: str, selection: str):
    """Open the events asset's Materialize dialog and select `selection` (a key, or `[first...last]`)."""
    page.goto(f"{url}/assets/events")
    page.get_by_role("button", name=MATERIALIZE).click()
    dialog = page.get_by_role("dialog")
    partitions = dialog.get_by_placeholder("No matching partitions")
    partitions.fill(selection)
    partitions.press("Enter")
    return dialog


def run_range(run: dict) -> tuple[str, str]:
    tags = {t["key"]: t["value"] for t in run["tags"]}
    if RANGE_START in tags:
        return tags[RANGE_START], tags[RANGE_END]
    assert "dagster/partition" in tags, f"run {run['runId']} has no partition tags: {tags}"
    return tags["dagster/partition"], tags["dagster/partition"]


def assert_follows_policy(dagster, backfill: dict, hours, assets: list[str]) -> None:
    """All runs succeeded, and each asset's hours went in consecutive batches of HOURS_PER_RUN, each hour once.

    The daemon launches a downstream asset's runs (merged_ids) once its upstream hours are done,
    so each asset gets its own runs, batched by the same policy.
    """
    runs = backfill["runs"]
    failed = [r["runId"] for r in runs if r["status"] != "SUCCESS"]
    assert not failed, "backfill runs failed:\n" + "\n".join(
        f"{run_id}: {dagster.run_failure(run_id)}" for run_id in failed
    )
    assert backfill["status"] in ("COMPLETED_SUCCESS", "COMPLETED"), backfill["status"]
    keys = [hour_key(h) for h in hours]
    expected = [(keys[i], keys[min(i + HOURS_PER_RUN, len(keys)) - 1]) for i in range(0, len(keys), HOURS_PER_RUN)]
    for asset in assets:
        of_asset = [r for r in runs if [asset] in [s["path"] for s in r["assetSelection"]]]
        ranges = sorted(run_range(r) for r in of_asset)
        assert ranges == expected, (
            f"{asset}: runs cover {ranges}; the policy multi_run({HOURS_PER_RUN}) gives {expected}"
        )
    assert len(runs) <= len(assets) * len(expected), [(r["runId"][:8], run_range(r)) for r in runs]


def test_materialize_one_hour_from_the_asset_page(dagster, page, e2e_blobs):
    hour = dagster.start_hour + timedelta(hours=30)
    key = hour_key(hour)
    ARTIFACTS.mkdir(exist_ok=True)

    page.goto(f"{dagster.url}/assets/events")
    materialize = page.get_by_role("button", name=MATERIALIZE)
    materialize.wait_for()
    page.get_by_role("tab", name="Partitions").wait_for()  # only a partitioned asset has this tab
    page.screenshot(path=str(ARTIFACTS / "01-asset-page.png"))

    materialize.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Launch runs to materialize events").wait_for()
    partitions = dialog.get_by_placeholder("No matching partitions")  # the dialog's partition picker
    partitions.fill(key)
    partitions.press("Enter")
    dialog.get_by_text(re.compile(r"^1 partition$")).wait_for()
    page.screenshot(path=str(ARTIFACTS / "02-materialize-dialog.png"))
    dialog.get_by_role("button", name=re.compile(r"\bLaunch 1 run$")).click()
    page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}")).wait_for()

    runs = dagster.runs({"dagster/partition": key})
    assert len(runs) == 1, f"expected one run for {key}, got {runs}"
    run = dagster.wait_for_run(runs[0]["runId"])
    assert run["status"] == "SUCCESS", f"run {run['runId']} {run['status']}:\n{dagster.run_failure(run['runId'])}"
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags.get("dagster/from_ui") == "true"  # launched from the UI (the run was found by its partition tag)

    assert_hours_landed(e2e_blobs, dagster.container, [hour])
    manifest = marker_manifest(e2e_blobs, dagster.container, hour)
    assert manifest["rows"] > 0 and manifest["parts"], manifest
    assert manifest["hour"] == f"{hour:%Y-%m-%dT%H:00:00Z}"

    # The UI's partition view shows this hour materialized, with its own row count.
    page.goto(f"{dagster.url}/assets/events?view=partitions&partition={key}")
    page.get_by_text("dagster/row_count").first.wait_for()
    page.get_by_text("Materialized", exact=True).first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "03-partition-view.png"))
    page.goto(f"{dagster.url}/runs/{run['runId']}")
    page.get_by_text("RUN_SUCCESS").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "04-run-page.png"))

    data = dagster.gql(
        """query($key: String!) { assetNodeOrError(assetKey: {path: ["events"]}) { ... on AssetNode {
               assetMaterializations(partitions: [$key]) { partition runId
                 metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }""",
        {"key": key},
    )
    (materialization,) = data["assetNodeOrError"]["assetMaterializations"]
    metadata = {m["label"]: m.get("intValue") for m in materialization["metadataEntries"]}
    assert materialization["partition"] == key and materialization["runId"] == run["runId"]
    assert metadata["dagster/row_count"] == manifest["rows"]


def test_merged_ids_follows_a_single_hour_run_launched_from_the_events_page(dagster, page, e2e_blobs):
    """Launch 1 run covers events only; merged_ids_automation brings the hour's merged IDs after it."""
    sensors = {s["name"]: s["sensorState"]["status"] for s in dagster.repository()["sensors"]}
    assert sensors.get("merged_ids_automation") == "RUNNING", sensors  # on by default
    # The hour before the first test's hour: no identity state before it, so its history starts
    # here whether or not the first test's merged_ids has run yet.
    hour = dagster.start_hour + timedelta(hours=29)
    key = hour_key(hour)

    dialog = select_events_partitions(page, dagster.url, key)
    dialog.get_by_text(re.compile(r"^1 partition$")).wait_for()
    dialog.get_by_role("button", name=re.compile(r"\bLaunch 1 run$")).click()
    page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}")).wait_for()
    [launched] = dagster.runs({"dagster/partition": key})
    events_run = dagster.wait_for_run(launched["runId"])
    assert events_run["status"] == "SUCCESS", dagster.run_failure(events_run["runId"])
    assert [s["path"] for s in events_run["assetSelection"]] == [["events"]]  # the user selected events only

    deadline = time.monotonic() + FOLLOW_TIMEOUT
    while time.monotonic() < deadline and not dagster.materializations("merged_ids", key):
        time.sleep(3)
    materializations = dagster.materializations("merged_ids", key)
    assert materializations, f"merged_ids {key} was not materialized {FOLLOW_TIMEOUT:.0f}s after its events"
    follow = dagster.run(materializations[0]["runId"])
    assert follow["runId"] != events_run["runId"]
    assert ["merged_ids"] in [s["path"] for s in follow["assetSelection"]]
    _, marker = hour_blobs(hour)
    assert f"merged_ids/{marker}" in e2e_blobs(dagster.container)
    page.goto(f"{dagster.url}/assets/merged_ids?view=partitions&partition={key}")
    page.get_by_text("dagster/row_count").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "06-merged-ids-followed.png"))


def test_range_backfill_through_graphql(dagster, e2e_blobs):
    hours = [dagster.start_hour + timedelta(hours=i) for i in range(6)]
    assert {"events", "merged_ids"} <= set(dagster.asset_keys())
    assets = ["events", "merged_ids"]
    backfill_id = dagster.launch_partition_backfill(assets, [hour_key(h) for h in hours], "graphql range")
    backfill = dagster.wait_for_backfill(backfill_id)

    assert backfill["numPartitions"] == len(hours)
    assert_follows_policy(dagster, backfill, hours, assets)
    assert_hours_landed(e2e_blobs, dagster.container, hours, merged_ids=True)


def test_range_backfill_through_the_ui_dialog(dagster, page, e2e_blobs):
    hours = [dagster.start_hour + timedelta(hours=6 + i) for i in range(6)]
    selection = f"[{hour_key(hours[0])}...{hour_key(hours[-1])}]"

    dialog = select_events_partitions(page, dagster.url, selection)
    dialog.get_by_text(re.compile(rf"^{len(hours)} partitions$")).wait_for()
    dialog.get_by_text(f"maximum of {HOURS_PER_RUN} partitions per run").wait_for()  # the policy, as the UI says it
    with page.expect_response(
        lambda r: "/graphql" in r.url and "launchPartitionBackfill" in (r.request.post_data or "")
    ) as launched:
        dialog.get_by_role("button", name=re.compile(r"\bLaunch backfill$")).click()
    result = launched.value.json()["data"]["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    page.get_by_text(re.compile(r"Created backfill")).wait_for()

    backfill = dagster.wait_for_backfill(result["backfillId"])
    assert sorted(backfill["partitionNames"]) == [hour_key(h) for h in hours]
    assert_follows_policy(dagster, backfill, hours, ["events"])
    assert_hours_landed(e2e_blobs, dagster.container, hours)

    # The backfill selected events only; merged_ids follows its hours, in hour order.
    markers = [f"merged_ids/{hour_blobs(h)[1]}" for h in hours]
    deadline = time.monotonic() + FOLLOW_TIMEOUT + 120
    while time.monotonic() < deadline and not set(markers) <= set(e2e_blobs(dagster.container)):
        time.sleep(5)
    assert_hours_landed(e2e_blobs, dagster.container, hours, merged_ids=True)
    client = e2e_blobs.service.get_container_client(dagster.container)
    chain = [json.loads(client.download_blob(m).readall()) for m in markers]
    for before, after in zip(chain, chain[1:]):
        assert after["previous_state"]["md5"] == before["state"]["md5"], (before["hour"], after["hour"])
    page.goto(f"{dagster.url}/runs/b/{result['backfillId']}")
    page.get_by_text(result["backfillId"]).first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "05-backfill-page.png"))
