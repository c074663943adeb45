"""`hourly_export_sensor` against a real Azurite and a real Dagster instance, with "now" fixed."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from amplitude_assets import sensors
from amplitude_assets.sensors import RANGE_END, RANGE_START, build_hourly_export_sensor
from tests.conftest import unique_name
from tests.helpers import Ticker, add_run, definitions, materialize

PROJECT = "187520"
NOW = datetime(2020, 1, 26, 12, 5, tzinfo=timezone.utc)
DUE = ["2020-01-26-06:00", "2020-01-26-07:00", "2020-01-26-08:00", "2020-01-26-09:00", "2020-01-26-10:00"]


@pytest.fixture
def env(container, settings_env):
    settings_env(
        AMPLITUDE_START="2020-01-25-00:00", AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR=50, AMPLITUDE_CATCH_UP_HOURS=6,
        AMPLITUDE_HOURS_PER_RUN=4, AMPLITUDE_EXPORT_DELAY_MINUTES=10, AMPLITUDE_SENSOR_MAX_ATTEMPTS=2,
    )
    return container


@pytest.fixture
def later(monkeypatch):
    """Moves the sensor's real clock (the one it compares the markers' Last-Modified with) on
    past merged_ids_automation's turn: `later()` once, and the hours just landed are the sensor's."""
    def move_on():
        moved = datetime.now(timezone.utc) + sensors.AUTOMATION_TURN + timedelta(seconds=1)
        monkeypatch.setattr(sensors, "utc_now", lambda: moved)
    return move_on


def hourly_sensor(instance: dg.DagsterInstance, now: datetime = NOW) -> Ticker:
    """hourly_export_sensor, ticked in process with the code location's storage, "now" fixed."""
    return Ticker(build_hourly_export_sensor, instance, now, storage=True)


def ranges(result) -> list[tuple[str, str]]:
    return [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in result.run_requests]


def skip_text(result) -> str:
    return result.skip_message or ""


def test_sensor_is_stopped_by_default(env):
    sensor = definitions().get_sensor_def("hourly_export_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED


def test_first_tick_requests_the_closed_unexported_hours_in_range_runs(env, instance):
    result = hourly_sensor(instance).tick()
    assert ranges(result) == [(DUE[0], DUE[3]), (DUE[4], DUE[4])]
    for request in result.run_requests:
        # events alone: merged_ids_automation follows once they land, so a long export of
        # events never holds the merged-ID chain's run-queue slot
        assert set(request.asset_selection) == {dg.AssetKey("events")}
        assert "amplitude_assets/merged_ids_chain" not in request.tags
        assert request.tags["amplitude_assets/destination"] == f"{env}/{PROJECT}/"
    assert len({r.run_key for r in result.run_requests}) == 2
    assert json.loads(result.cursor)["attempts"] == {k: 1 for k in DUE}


def test_exported_hours_are_not_requested_and_a_vanished_marker_is(env, instance, blobs, later):
    ticker = hourly_sensor(instance)
    assert ranges(ticker.tick()) == [(DUE[0], DUE[3]), (DUE[4], DUE[4])]
    assert materialize(definitions(), ["events", "merged_ids"], start=DUE[0], end=DUE[4]).success

    result = ticker.tick()
    assert ranges(result) == []
    assert "exported" in skip_text(result)
    assert json.loads(ticker.cursor)["attempts"] == {}

    client = blobs.service.get_container_client(env)
    client.delete_blob(f"{PROJECT}/{PROJECT}_2020-01-26_8_complete")
    assert ranges(ticker.tick()) == [(DUE[2], DUE[2])]

    # a missing merged-IDs marker counts too
    assert materialize(definitions(), ["events", "merged_ids"], partition=DUE[2]).success
    assert ranges(ticker.tick()) == []
    client.delete_blob(f"merged_ids/{PROJECT}/{PROJECT}_2020-01-26_10_complete")
    later()  # its events landed over AUTOMATION_TURN ago: the sensor's, not the automation's
    assert ranges(ticker.tick()) == [(DUE[4], DUE[4])]


def test_merged_ids_of_hours_whose_events_just_landed_are_left_to_the_automation(env, instance, later):
    """merged_ids_automation requests an hour's merged IDs on its next tick after the events land;
    the sensor, ticking at the same moment, must not race it for the hour (a run of each, one of
    them deriving nothing), so it leaves the hour for AUTOMATION_TURN, without spending an attempt."""
    assert materialize(definitions(), ["events"], start=DUE[0], end=DUE[4]).success
    ticker = hourly_sensor(instance)
    first = ticker.tick()
    assert ranges(first) == []
    assert (f"5 hour(s) of merged_ids left to merged_ids_automation, from {DUE[0]}: their events landed "
            "under 5 min ago") in skip_text(first)
    assert json.loads(first.cursor)["merged_attempts"] == {}

    later()  # the automation is off, or its run failed: the sensor requests them, in the chain's order
    second = ticker.tick()
    assert ranges(second) == [(DUE[0], DUE[3]), (DUE[4], DUE[4])]
    assert all(set(r.asset_selection) == {dg.AssetKey("merged_ids")} for r in second.run_requests)
    assert all(r.tags["amplitude_assets/merged_ids_chain"] == f"{env}/merged_ids/{PROJECT}/"
               for r in second.run_requests)
    assert json.loads(second.cursor)["merged_attempts"] == {k: 1 for k in DUE}


def test_hours_with_a_run_queued_or_in_progress_are_not_requested(env, instance):
    add_run(instance, dg.DagsterRunStatus.STARTED, {RANGE_START: DUE[0], RANGE_END: DUE[1]})
    add_run(instance, dg.DagsterRunStatus.QUEUED, {"dagster/partition": DUE[3]})
    add_run(instance, dg.DagsterRunStatus.FAILURE, {RANGE_START: DUE[2], RANGE_END: DUE[4]})  # over: no guard
    result = hourly_sensor(instance).tick()
    assert ranges(result) == [(DUE[2], DUE[2]), (DUE[4], DUE[4])]


def test_a_failed_hour_is_retried_then_given_up(env, instance):
    ticker = hourly_sensor(instance)
    first = ticker.tick()
    assert ranges(first) == [(DUE[0], DUE[3]), (DUE[4], DUE[4])]
    # the runs are running: nothing is requested again
    add_run(instance, dg.DagsterRunStatus.STARTED, {RANGE_START: DUE[0], RANGE_END: DUE[3]})
    add_run(instance, dg.DagsterRunStatus.STARTED, {RANGE_START: DUE[4], RANGE_END: DUE[4]})
    waiting = ticker.tick()
    assert ranges(waiting) == []
    assert "5 hour(s) already have a run queued or in progress" in skip_text(waiting)
    for run in instance.get_runs():
        instance.report_run_failed(run)

    second = ticker.tick()  # the runs failed and no marker appeared: attempt 2, with new run keys,
    # each hour in a run of its own so that one bad hour cannot fail its neighbours again
    assert ranges(second) == [(k, k) for k in DUE]
    assert {r.run_key for r in second.run_requests}.isdisjoint({r.run_key for r in first.run_requests})
    assert all(r.tags["amplitude_assets/attempt"] == "2" for r in second.run_requests)

    given_up = ticker.tick()  # AMPLITUDE_SENSOR_MAX_ATTEMPTS=2: give up, and say so
    assert ranges(given_up) == []
    text = skip_text(given_up)
    assert "gave up on 5 hour(s) after 2 failed runs each" in text and DUE[0] in text and DUE[4] in text
    observed = {(e.asset_key.to_user_string(), e.partition) for e in given_up.asset_events}
    assert observed == {(a, k) for a in ("events", "merged_ids") for k in DUE}
    assert all("sensor_gave_up" in e.metadata for e in given_up.asset_events)

    again = ticker.tick()  # still reported in the tick's log, observed only once
    assert ranges(again) == [] and "gave up on 5 hour(s)" in skip_text(again)
    assert not again.asset_events


def test_merged_ids_wait_for_the_hour_before_and_are_not_counted(env, instance, azurite, later):
    """Hours whose events landed but whose hour before has no merged IDs yet are left to the
    automation: no run is requested for them, and no attempt is spent."""
    assert materialize(definitions(), ["events"], start=DUE[1], end=DUE[4]).success
    assert materialize(definitions(), ["events", "merged_ids"], partition=DUE[3]).success
    later()
    add_run(instance, dg.DagsterRunStatus.STARTED, {"dagster/partition": DUE[1]})
    ticker = hourly_sensor(instance)
    result = ticker.tick()
    # 06:00 has no events: a run of events alone. 07:00 is busy. 08:00 waits for 07:00's merged IDs.
    # 09:00 is done. 10:00 follows 09:00: a run of merged_ids alone, with the chain's tag.
    assert ranges(result) == [(DUE[0], DUE[0]), (DUE[4], DUE[4])]
    events_run, merged_run = result.run_requests
    assert set(events_run.asset_selection) == {dg.AssetKey("events")}
    assert set(merged_run.asset_selection) == {dg.AssetKey("merged_ids")}
    assert merged_run.tags["amplitude_assets/merged_ids_chain"] == f"{env}/merged_ids/{PROJECT}/"
    cursor = json.loads(result.cursor)
    assert cursor["attempts"] == {DUE[0]: 1}
    assert cursor["merged_attempts"] == {DUE[4]: 1}
    # 06:00's events run is running and 07:00's run is over: 07:00 and 08:00 wait for 06:00's merged IDs
    for run in instance.get_runs():
        instance.report_run_failed(run)
    add_run(instance, dg.DagsterRunStatus.STARTED, {RANGE_START: DUE[0], RANGE_END: DUE[0]})
    add_run(instance, dg.DagsterRunStatus.STARTED, {RANGE_START: DUE[4], RANGE_END: DUE[4]})
    later = ticker.tick()
    assert ranges(later) == []
    assert f"2 hour(s) of merged_ids wait for the hour before, from {DUE[1]}" in skip_text(later)
    assert json.loads(later.cursor)["merged_attempts"] == {DUE[4]: 1}  # waiting spent no attempt


def test_export_delay_and_catch_up_windows(env, instance, settings_env):
    # 11:00-12:00 closes at 12:00 and may be exported 10 minutes later
    assert ranges(hourly_sensor(instance, datetime(2020, 1, 26, 12, 9, tzinfo=timezone.utc)).tick())[-1] == (DUE[4], DUE[4])
    assert ranges(hourly_sensor(instance, datetime(2020, 1, 26, 12, 10, tzinfo=timezone.utc)).tick())[-1] == (DUE[4], "2020-01-26-11:00")
    # the catch-up window: hours older than AMPLITUDE_CATCH_UP_HOURS are not looked at
    settings_env(AMPLITUDE_CATCH_UP_HOURS=3)
    assert ranges(hourly_sensor(instance).tick()) == [("2020-01-26-09:00", DUE[4])]
    # ... nor hours before AMPLITUDE_START
    settings_env(AMPLITUDE_CATCH_UP_HOURS=72, AMPLITUDE_START="2020-01-26-08:00")
    assert ranges(hourly_sensor(instance).tick()) == [("2020-01-26-08:00", DUE[4])]
    # before the first hour closes, there is nothing to do
    result = hourly_sensor(instance, datetime(2020, 1, 26, 9, 5, tzinfo=timezone.utc)).tick()
    assert ranges(result) == [] and "no closed hour" in skip_text(result)


def test_a_container_that_does_not_exist_means_nothing_was_exported(env, instance, settings_env):
    settings_env(AZURE_EVENTS_CONTAINER=unique_name("missing"))
    assert ranges(hourly_sensor(instance).tick()) == [(DUE[0], DUE[3]), (DUE[4], DUE[4])]
