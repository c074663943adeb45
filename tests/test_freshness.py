"""The `freshness` checks: each hour's deadline, and the check as it runs after an export."""

from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg

from amplitude_assets.freshness import deadline, due_hours, freshness_of
from amplitude_assets.partitions import parse_hour
from amplitude_assets.settings import Settings
from tests.helpers import definitions, materialize

NOW = datetime(2020, 1, 26, 12, 5, tzinfo=timezone.utc)


def test_the_deadline_is_the_export_delay_plus_late_after():
    api = Settings.from_env({"AMPLITUDE_SOURCE": "export_api"})  # 120 min of delay, 60 of late-after by default
    assert deadline(api, parse_hour("2020-01-26-08:00")) == datetime(2020, 1, 26, 12, 0, tzinfo=timezone.utc)
    env = {"AMPLITUDE_START": "2020-01-25-00:00", "AMPLITUDE_SOURCE": "export_api", "AMPLITUDE_CATCH_UP_HOURS": "6"}
    assert due_hours(Settings.from_env(env), NOW) == ["2020-01-26-06:00", "2020-01-26-07:00", "2020-01-26-08:00"]
    env["AMPLITUDE_LATE_AFTER_MINUTES"] = "6"  # 09:00 is due from 12:06
    assert due_hours(Settings.from_env(env), NOW)[-1] == "2020-01-26-08:00"
    env["AMPLITUDE_LATE_AFTER_MINUTES"] = "5"
    assert due_hours(Settings.from_env(env), NOW)[-1] == "2020-01-26-09:00"


def test_a_backfilled_old_hour_does_not_hide_a_late_new_one():
    settings = Settings.from_env({"AMPLITUDE_START": "2020-01-26-06:00", "AMPLITUDE_LATE_AFTER_MINUTES": "20"})
    fresh = freshness_of(settings, dg.AssetKey("events"), {"2020-01-26-06:00", "2020-01-26-07:00", "2020-01-26-09:00"}, NOW)
    assert fresh.late == ["2020-01-26-08:00", "2020-01-26-10:00"]
    assert not fresh.passed
    assert fresh.describe(settings) == (
        "late: 2020-01-26-10:00 has no materialization 35 min after its deadline 2020-01-26 11:30 UTC; "
        "2 hours are late, from 2020-01-26-08:00")
    assert fresh.metadata(settings)["dagster/overdue_seconds"].value == 155 * 60.0  # from 08:00's deadline, 09:30


def test_the_check_runs_after_an_export_and_reports_each_asset(synthetic_hours, settings_env):
    settings_env(AMPLITUDE_EXPORT_DELAY_MINUTES=10)
    before = due_hours(Settings.from_env(), datetime.now(timezone.utc))
    result = materialize(definitions(), ["events", "merged_ids"], partition="2020-01-25-17:00")
    evaluations = {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()
                   if e.check_name == "freshness"}
    assert set(evaluations) == {"events", "merged_ids"}
    # Against the clock, the hours of the last AMPLITUDE_CATCH_UP_HOURS were never exported here.
    assert not evaluations["events"].passed
    assert evaluations["events"].description.startswith("late: ")
    after = due_hours(Settings.from_env(), datetime.now(timezone.utc))
    assert evaluations["events"].metadata["late_hours"].value in (before, after)
    assert evaluations["events"].metadata["hours_due"].value in (len(before), len(after))
