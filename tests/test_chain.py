"""The merged-ID chain: the rule (pure), and stale hours found, reported and repaired against Azurite."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from amplitude_assets.chain import chain_outcome
from amplitude_assets.destination.links import Link, link_problem, stale_hours
from amplitude_assets.layout import MergedIdsLayout
from amplitude_assets.sensors import MERGED_IDS_CHAIN, build_hourly_export_sensor
from tests.helpers import Ticker, add_run, definitions, materialize

H = datetime(2020, 1, 26, 6, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)
PROJECT = "187520"



def evaluate(**kwargs):
    """`dagster.evaluate_automation_conditions` in a thread of its own: it runs its own event
    loop, which must not meet one that another test (the browser tests' Playwright) left
    running in the main thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(dg.evaluate_automation_conditions, **kwargs).result()

def at(n: int) -> datetime:
    return H + n * HOUR


# -- the rule, no I/O ---------------------------------------------------------------------


def test_an_hour_that_starts_from_the_state_the_hour_before_left_is_not_stale():
    links = {at(0): Link("a", None), at(1): Link("b", "a"), at(2): Link("c", "b")}
    assert stale_hours(links) == {}
    assert link_problem(at(1), links[at(1)], links[at(0)]) is None


def test_a_re_exported_hour_before_makes_the_hour_and_every_later_one_stale():
    links = {at(0): Link("a2", None), at(1): Link("b", "a"), at(2): Link("c", "b"), at(3): Link("d", "c")}
    stale = stale_hours(links)
    assert sorted(stale) == [at(1), at(2), at(3)]
    assert stale[at(1)] == (
        "it was derived from an identity state (md5 a) other than the one 2020-01-26-06:00 left (md5 a2): "
        "re-export merged_ids from 2020-01-26-07:00 on"
    )
    assert stale[at(2)] == "it was derived from 2020-01-26-07:00, which is stale"


def test_a_history_that_starts_after_an_exported_hour_is_stale():
    # 08:00 was exported first (its history starts there), then 07:00 before it.
    links = {at(1): Link("b", None), at(2): Link("c", None), at(3): Link("d", "c")}
    stale = stale_hours(links)
    assert sorted(stale) == [at(2), at(3)]
    assert stale[at(2)] == (
        "its identity history starts at 2020-01-26-08:00, but 2020-01-26-07:00 is exported (state md5 b): "
        "re-export merged_ids from 2020-01-26-08:00 on"
    )


def test_an_hour_after_a_gap_starts_a_chain_of_its_own():
    links = {at(0): Link("a", None), at(2): Link("c", "b"), at(3): Link("d", "x")}
    assert sorted(stale_hours(links)) == [at(3)]
    assert stale_hours({}) == {}


def test_the_links_ride_on_blob_metadata():
    assert Link("ab", None).as_blob_metadata() == {"state_md5": "ab", "previous_state_md5": "none"}
    assert Link.from_blob_metadata({"state_md5": "ab", "previous_state_md5": "cd"}) == Link("ab", "cd")
    assert Link.from_blob_metadata({"state_md5": "ab", "previous_state_md5": "none"}) == Link("ab", None)
    assert Link.from_blob_metadata({}) is None  # a marker written before the digests: unknown
    assert Link.from_blob_metadata(None) is None


# -- against Azurite ------------------------------------------------------------------------

NOW = datetime(2020, 1, 26, 12, 15, tzinfo=timezone.utc)  # 06:00-11:00 are due


@pytest.fixture
def env(container, settings_env):
    settings_env(AMPLITUDE_START="2020-01-26-06:00", AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR=200,
                 AMPLITUDE_CATCH_UP_HOURS=6, AMPLITUDE_EXPORT_DELAY_MINUTES=10)
    return container


def key(n: int) -> str:
    return at(n).strftime("%Y-%m-%d-%H:%M")


def merged_materializations(result) -> dict[str, dict]:
    return {
        m.partition: m.metadata
        for e in result.get_asset_materialization_events()
        if (m := e.event_specific_data.materialization).asset_key == dg.AssetKey("merged_ids")
    }


def chain_evaluations(result) -> dict[str, bool]:
    """partition -> passed, for every per-hour `chain` evaluation the run recorded (and for the hour after)."""
    found = {}
    for event in result.all_events:
        data = event.event_specific_data
        if event.event_type_value == "ASSET_CHECK_EVALUATION" and data.check_name == "chain" and data.partition:
            found[data.partition] = data.passed
    return found


def hourly_sensor(instance: dg.DagsterInstance) -> Ticker:
    """hourly_export_sensor, ticked in process with the code location's storage, at NOW."""
    return Ticker(build_hourly_export_sensor, instance, NOW, storage=True)


def test_hours_exported_out_of_order_are_found_stale_reported_and_repaired(env, blobs):
    instance = dg.DagsterInstance.ephemeral()
    both = ["events", "merged_ids"]
    # 08:00-11:00 first: their identity history starts at 08:00 ...
    assert materialize(definitions(), both, start=key(2), end=key(5), instance=instance).success
    # ... then 06:00-07:00, before it.
    result = materialize(definitions(), both, start=key(0), end=key(1), instance=instance)
    assert result.success
    metadata = merged_materializations(result)
    assert metadata[key(1)]["later_hours_stale_from"].value == key(2)  # the hour's own materialization says so
    assert "later_hours_stale_from" not in metadata[key(0)]
    assert metadata[key(1)]["chain"].value == f"starts from the state {key(0)} left"
    assert metadata[key(0)]["chain"].value == "the identity history starts here"
    [observation] = [e.event_specific_data.asset_observation for e in result.all_events
                     if e.event_type_value == "ASSET_OBSERVATION"]
    assert (observation.asset_key, observation.partition) == (dg.AssetKey("merged_ids"), key(2))
    assert observation.metadata["chain"].value.startswith(f"stale since merged_ids {key(1)} was exported: its "
                                                          f"identity history starts at {key(2)}")
    # The chain check passed for the run's hours, and failed for the hour after them, which is stale now.
    assert chain_evaluations(result) == {key(0): True, key(1): True, key(2): False}

    client = blobs.service.get_container_client(env)
    marker = f"merged_ids/{PROJECT}/{PROJECT}_2020-01-26_8_complete"
    manifest = json.loads(client.download_blob(marker).readall())
    blob_metadata = client.get_blob_client(marker).get_blob_properties().metadata
    assert blob_metadata == {"state_md5": manifest["state"]["md5"], "previous_state_md5": "none"}
    hour_7 = json.loads(client.download_blob(f"merged_ids/{PROJECT}/{PROJECT}_2020-01-26_7_complete").readall())
    assert client.get_blob_client(f"merged_ids/{PROJECT}/{PROJECT}_2020-01-26_7_complete").get_blob_properties().metadata == {
        "state_md5": hour_7["state"]["md5"], "previous_state_md5": hour_7["previous_state"]["md5"]}

    # The check's verdict for the stale hour names what to re-export.
    outcome = chain_outcome(client, MergedIdsLayout("merged_ids", PROJECT), at(2))
    assert not outcome.passed
    assert outcome.description.startswith(f"stale: its identity history starts at {key(2)}, but {key(1)} is exported")
    assert chain_outcome(client, MergedIdsLayout("merged_ids", PROJECT), at(3)).passed  # its own link holds

    # The sensor treats the stale hours like missing ones: 08:00 on, oldest first, merged IDs only
    # (their events are in place), in one run.
    sensor = hourly_sensor(instance)
    first = sensor.tick()
    assert [(r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
            for r in first.run_requests] == [(key(2), key(5))]
    [request] = first.run_requests
    assert set(request.asset_selection) == {dg.AssetKey("merged_ids")}
    assert request.tags[MERGED_IDS_CHAIN] == f"{env}/merged_ids/{PROJECT}/"

    repaired = materialize(definitions(), ["merged_ids"], start=key(2), end=key(5), instance=instance)
    assert repaired.success
    assert chain_evaluations(repaired) == {key(n): True for n in range(2, 6)}
    again = sensor.tick()  # with the first tick's cursor
    assert not again.run_requests
    hours = [json.loads(client.download_blob(f"merged_ids/{PROJECT}/{PROJECT}_2020-01-26_{6 + n}_complete").readall())
             for n in range(6)]
    for before, after in zip(hours, hours[1:]):
        assert after["previous_state"]["md5"] == before["state"]["md5"]


def test_re_exporting_a_middle_hour_makes_the_sensor_re_export_the_rest_of_the_chain(env, settings_env):
    instance = dg.DagsterInstance.ephemeral()
    assert materialize(definitions(), ["events", "merged_ids"], start=key(0), end=key(5), instance=instance).success
    assert not hourly_sensor(instance).tick().run_requests
    # The source changed its mind about 07:00: its merged IDs are re-derived, and 08:00 on are stale.
    settings_env(AMPLITUDE_SYNTHETIC_SEED=7)
    result = materialize(definitions(), ["events", "merged_ids"], partition=key(1), instance=instance)
    assert merged_materializations(result)[key(1)]["later_hours_stale_from"].value == key(2)
    assert chain_evaluations(result) == {key(1): True, key(2): False}
    first = hourly_sensor(instance).tick()
    assert [(r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
            for r in first.run_requests] == [(key(2), key(5))]
    assert set(first.run_requests[0].asset_selection) == {dg.AssetKey("merged_ids")}
    # A range run of one hour (as the sensor's retries are) records the hour's own evaluation too.
    one = materialize(definitions(), ["merged_ids"], start=key(2), end=key(2), instance=instance)
    assert chain_evaluations(one) == {key(2): True, key(3): False}


def test_merged_ids_follows_events_through_its_automation_condition(env):
    instance = dg.DagsterInstance.ephemeral()
    defs = definitions()
    merged = dg.AssetKey("merged_ids")
    start = evaluate(defs=defs, instance=instance)
    assert start.total_requested == 0
    # events alone for 06:00-07:00 (the UI's Materialize on the events page): merged_ids follows.
    assert materialize(defs, ["events"], start=key(0), end=key(1), instance=instance).success
    result = evaluate(defs=defs, instance=instance, cursor=start.cursor)
    assert result.get_requested_partitions(merged) == {key(0), key(1)}
    # Once requested, not again; and a run of both assets needs nothing more.
    assert materialize(defs, ["merged_ids"], start=key(0), end=key(1), instance=instance).success
    result = evaluate(defs=defs, instance=instance, cursor=result.cursor)
    assert result.total_requested == 0
    assert materialize(defs, ["events", "merged_ids"], partition=key(2), instance=instance).success
    result = evaluate(defs=defs, instance=instance, cursor=result.cursor)
    assert result.total_requested == 0


def test_an_hour_left_for_want_of_the_hour_before_is_requested_again_once_it_lands(env):
    instance = dg.DagsterInstance.ephemeral()
    defs = definitions()
    merged = dg.AssetKey("merged_ids")
    start = evaluate(defs=defs, instance=instance)
    assert materialize(defs, ["events"], start=key(0), end=key(1), instance=instance).success
    requested = evaluate(defs=defs, instance=instance, cursor=start.cursor)
    assert requested.get_requested_partitions(merged) == {key(0), key(1)}
    # 07:00 ran first, while another run was queued to export 06:00: it wrote nothing and did not
    # fail (a queued run is not waited for: it may be queued behind this one).
    busy = add_run(instance, dg.DagsterRunStatus.NOT_STARTED, {"dagster/partition": key(0)}, assets=("merged_ids",))
    left = materialize(defs, ["merged_ids"], partition=key(1), instance=instance)
    assert left.success
    assert not [e for e in left.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]
    logs = [record.user_message for record in instance.all_logs(left.run_id)]
    assert any(f"merged_ids {key(1)}: left to merged_ids_automation" in m and f"({key(0)} ... {key(0)})" in m
               for m in logs), logs
    instance.report_run_failed(busy)
    result = evaluate(defs=defs, instance=instance, cursor=requested.cursor)
    assert result.total_requested == 0  # 06:00 is still missing: nothing to do yet
    # 06:00 lands: 07:00, still missing, is requested again.
    assert materialize(defs, ["merged_ids"], partition=key(0), instance=instance).success
    result = evaluate(defs=defs, instance=instance, cursor=result.cursor)
    assert result.get_requested_partitions(merged) == {key(1)}


def test_an_hour_waits_while_a_running_run_exports_the_hour_before(env):
    """A sync that meets a running backfill on the chain waits for the hour before, and does not fail."""
    import time

    instance = dg.DagsterInstance.ephemeral()
    defs = definitions()
    assert materialize(defs, ["events"], start=key(0), end=key(1), instance=instance).success
    busy = add_run(instance, dg.DagsterRunStatus.STARTED, {"dagster/partition": key(0)}, assets=("merged_ids",))
    with ThreadPoolExecutor(1) as pool:
        later = pool.submit(materialize, defs, ["merged_ids"], partition=key(1), instance=instance,
                            raise_on_error=False)
        time.sleep(3)
        assert not later.done(), "07:00 did not wait for the run exporting 06:00"
        assert materialize(defs, ["merged_ids"], partition=key(0), instance=instance).success
        result = later.result(timeout=120)
    assert result.success
    logs = [record.user_message for record in instance.all_logs(result.run_id)]
    assert any(f"waiting for run {busy.run_id}, which is exporting the hour before ({key(0)})" in m for m in logs)
    # 07:00 started from 06:00's state: the chain holds
    assert chain_evaluations(result) == {key(1): True}
