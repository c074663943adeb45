"""Alerts against a real local HTTP receiver and Azurite, through real Dagster runs and sensor
evaluations in process, with "now" fixed at an hour already past its deadline."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler

import dagster as dg
import pytest

from amplitude_assets.alerts.messages import probe_message
from amplitude_assets.alerts.sensors import HOURLY_SENSOR, build_freshness_sensor, build_run_failure_sensor, follow
from amplitude_assets.alerts.webhook import payload_format, send
from amplitude_assets.partitions import hourly_partitions
from amplitude_assets.sensors import build_hourly_export_sensor
from amplitude_assets.settings import Settings
from tests.conftest import ACCOUNT_KEY, WRONG_KEY
from tests.helpers import LoopbackHTTP, Ticker, definitions, materialize, turn_on_sensor

NOW = datetime(2020, 1, 26, 12, 5, tzinfo=timezone.utc)  # 10:00's deadline was 11:30 (10 + 20 minutes after it closed)
HOUR = "2020-01-26-10:00"
TOKEN = "T0000/B0000/hook-token-that-is-secret"
TITLE = "amplitude_assets (project 187520): "


class Receiver(LoopbackHTTP):
    """An HTTP endpoint on loopback that records every JSON body posted to it, and answers as told."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.mode = "ok"  # ok, error (HTTP 500) or hang (never answers in time)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.bodies.append(json.loads(body))
                if receiver.mode == "hang":
                    time.sleep(20)
                status = 500 if receiver.mode == "error" else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"boom")

            def log_message(self, *args):
                pass

        super().__init__(Handler)
        self.url = f"{self.url}/services/{TOKEN}"

    def texts(self) -> list[str]:
        return [b["text"] for b in self.bodies]


@pytest.fixture
def receiver():
    with Receiver() as server:
        yield server


@pytest.fixture
def env(container, settings_env, receiver):
    """The alerts on, to the receiver; hours from 10:00, late 20 minutes after their export delay."""
    settings_env(
        AMPLITUDE_START=HOUR, AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR=50, AMPLITUDE_CATCH_UP_HOURS=6,
        AMPLITUDE_EXPORT_DELAY_MINUTES=10, AMPLITUDE_LATE_AFTER_MINUTES=20, AMPLITUDE_ALERT_WEBHOOK_URL=receiver.url,
        AMPLITUDE_ALERT_UI_URL="http://127.0.0.1:3000", AMPLITUDE_ALERT_TIMEOUT_SECONDS=1,
    )
    return settings_env


def assert_no_secrets(receiver: Receiver) -> None:
    sent = json.dumps(receiver.bodies)
    for secret in (ACCOUNT_KEY, WRONG_KEY, TOKEN, "AccountKey=", "sig="):
        assert secret not in sent


def test_a_failed_hour_sends_one_message_then_its_recovery(env, instance, receiver, azurite):
    failures = Ticker(build_run_failure_sensor, instance, NOW)
    assert "Initiating" in failures.tick().skip_message  # the run failure sensor starts from now
    env(AZURE_STORAGE_CONNECTION_STRING=azurite.replace(ACCOUNT_KEY, WRONG_KEY))
    result = materialize(definitions(), ["events", "merged_ids"], partition=HOUR, instance=instance, raise_on_error=False)
    assert not result.success

    failures.tick()
    assert len(receiver.bodies) == 1
    lines = receiver.texts()[0].split("\n")
    assert lines[0] == f"*{TITLE}a run failed; 1 hour(s) not exported*"
    assert lines[1] == f"Hours not exported (events and merged_ids): {HOUR}"
    assert lines[2] == "Step: events"
    assert lines[3].startswith(
        "Cause: authentication failed: the storage account refused the credential from AZURE_STORAGE_CONNECTION_STRING"
    ), lines[3]
    assert lines[4] == f"Run: {result.run_id}"
    assert lines[5] == (f"<http://127.0.0.1:3000/runs/{result.run_id}|run {result.run_id[:8]}> | "
                        f"<http://127.0.0.1:3000/assets/events?view=partitions&partition=2020-01-26-10%3A00|events {HOUR}>")
    failures.tick()  # a second tick sends nothing
    assert len(receiver.bodies) == 1

    watch = Ticker(build_freshness_sensor, instance, NOW)
    first = watch.tick()  # the failed hour is followed; its start was the run failure's message
    assert len(receiver.bodies) == 1
    check = {e.asset_key.to_user_string(): e for e in first.asset_events}
    assert set(check) == {"events", "merged_ids"}
    assert not check["events"].passed and check["events"].check_name == "freshness"
    assert check["events"].description == (
        f"late: {HOUR} has no materialization 35 min after its deadline 2020-01-26 11:30 UTC")

    env(AZURE_STORAGE_CONNECTION_STRING=azurite)
    assert materialize(definitions(), ["events", "merged_ids"], partition=HOUR, instance=instance).success
    landed = watch.tick()
    assert len(receiver.bodies) == 2
    recovery = receiver.texts()[1].split("\n")
    assert recovery[0] == f"*{TITLE}recovered: 1 hour(s) landed*"
    assert recovery[1].startswith(f"{HOUR}: events failed (authentication failed: the storage account refused")
    assert recovery[1].endswith(f"since {NOW.isoformat()}; now materialized")
    assert [e.passed for e in landed.asset_events] == [True, True]
    watch.tick()
    assert len(receiver.bodies) == 2
    assert_no_secrets(receiver)


def test_a_late_hour_fails_its_check_and_sends_one_message(env, instance, receiver):
    env(AMPLITUDE_START="2020-01-26-09:00")
    turn_on_sensor(instance, HOURLY_SENSOR)
    assert materialize(definitions(), ["events", "merged_ids"], partition="2020-01-26-09:00", instance=instance).success

    watch = Ticker(build_freshness_sensor, instance, datetime(2020, 1, 26, 11, 5, tzinfo=timezone.utc))
    on_time = watch.tick()  # 09:00 landed before its deadline (10:30); 10:00 is not due yet
    assert receiver.bodies == []
    assert [(e.passed, e.description) for e in on_time.asset_events] == [
        (True, "fresh: the newest hour due, 2020-01-26-09:00 (deadline 2020-01-26 10:30 UTC), is materialized, "
               "and so is every hour since 2020-01-26-09:00")] * 2

    watch.now = NOW
    late = watch.tick()
    assert len(receiver.bodies) == 1
    assert receiver.texts()[0].split("\n") == [
        f"*{TITLE}1 hour(s) late*",
        f"{HOUR} has no events and no merged_ids materialization by its deadline 2020-01-26 11:30 UTC",
        "The deadline is 10 min (AMPLITUDE_EXPORT_DELAY_MINUTES) plus 20 min (AMPLITUDE_LATE_AFTER_MINUTES) after "
        "the hour closes.",
        f"<http://127.0.0.1:3000/assets/events?view=partitions&partition=2020-01-26-10%3A00|events {HOUR}>",
    ]
    events = next(e for e in late.asset_events if e.asset_key == dg.AssetKey("events"))
    assert not events.passed
    assert events.metadata["late_hours"].value == [HOUR]
    instance.report_runless_asset_event(events)  # as the daemon does: the asset page shows it
    summary = instance.event_log_storage.get_asset_check_summary_records(
        [dg.AssetCheckKey(dg.AssetKey("events"), "freshness")])
    record = next(iter(summary.values())).last_check_execution_record
    assert record.event.asset_check_evaluation.passed is False

    again = watch.tick()  # the same problem: nothing more, and no new evaluation
    assert len(receiver.bodies) == 1 and again.asset_events == []
    assert materialize(definitions(), ["events", "merged_ids"], partition=HOUR, instance=instance).success
    landed = watch.tick()  # the hour lands: its recovery
    assert receiver.texts()[1].split("\n")[:2] == [
        f"*{TITLE}recovered: 1 hour(s) landed*",
        f"{HOUR}: late (events and merged_ids not materialized) since {NOW.isoformat()}; now materialized",
    ]
    assert [e.passed for e in landed.asset_events] == [True, True]
    assert_no_secrets(receiver)


def test_a_problem_is_sent_when_it_starts_then_once_a_day():
    problem = {"kind": "late", "hour": HOUR, "needs": ["events"], "what": "late"}
    opened, reminded, recovered, still = follow({}, {"late:x": problem}, NOW, lambda p: False)
    assert [p["hour"] for p in opened] == [HOUR] and not reminded and not recovered
    for hours, count in ((23, 0), (24, 1)):
        _, reminded, _, later = follow(still, {"late:x": problem}, NOW + timedelta(hours=hours), lambda p: False)
        assert len(reminded) == count
    assert later["late:x"]["sent"] == (NOW + timedelta(hours=24)).isoformat()
    assert follow(later, {}, NOW, lambda p: True)[2] == [later["late:x"]]  # it ended, landed: a recovery
    assert follow(later, {}, NOW, lambda p: False)[2:] == ([], {})  # it ended otherwise: dropped


def test_late_hours_are_not_sent_while_the_hourly_sensor_is_off(env, instance, receiver):
    watch = Ticker(build_freshness_sensor, instance, NOW)
    result = watch.tick()
    assert receiver.bodies == []
    assert [e.passed for e in result.asset_events] == [False, False]  # the UI still shows it late


def test_a_run_refused_on_purpose_is_not_reported(env, instance, receiver):
    env(AMPLITUDE_EXPORT_DELAY_MINUTES=120, AMPLITUDE_START="2020-01-01-00:00")  # the hour that just closed is too young
    young = hourly_partitions(Settings.from_env()).get_last_partition_key()
    failures = Ticker(build_run_failure_sensor, instance, NOW)
    failures.tick()
    result = materialize(definitions(), ["events"], partition=young, instance=instance, raise_on_error=False)
    assert not result.success
    failures.tick()
    assert receiver.bodies == []


def test_a_webhook_that_fails_or_hangs_is_logged_and_bounded(env, receiver, caplog):
    settings = Settings.from_env()
    log = logging.getLogger("test_alerts")
    with caplog.at_level(logging.INFO, logger="test_alerts"):
        receiver.mode = "error"
        assert send(probe_message(settings), settings, log) is False
        receiver.mode = "hang"
        started = time.monotonic()
        assert send(probe_message(settings), settings, log) is False
        assert time.monotonic() - started < 3.5  # AMPLITUDE_ALERT_TIMEOUT_SECONDS=1
    assert [r.getMessage() for r in caplog.records] == [
        "the test alert was not delivered: the webhook answered HTTP 500",
        "the test alert was not delivered: the webhook did not answer within 1 s",
    ]
    assert len(receiver.bodies) == 2


def test_a_hanging_webhook_does_not_slow_the_export_sensor_beyond_the_timeout(env, instance, receiver):
    env(AMPLITUDE_SENSOR_MAX_ATTEMPTS=1)
    receiver.mode = "hang"
    ticker = Ticker(build_hourly_export_sensor, instance, NOW, storage=True)
    first = ticker.tick()
    assert [r.tags["dagster/asset_partition_range_start"] for r in first.run_requests] == [HOUR]
    started = time.monotonic()
    given_up = ticker.tick()  # no run exported the hour: the sensor gives up, and says so
    assert time.monotonic() - started < 10
    assert "gave up on 1 hour(s)" in given_up.skip_message
    assert receiver.texts() == [
        f"*{TITLE}hourly_export_sensor gave up on 1 hour(s)*\nHours: {HOUR}\nEach failed 1 runs "
        "(AMPLITUDE_SENSOR_MAX_ATTEMPTS). Fix the cause (the failed runs say it), then re-run the hours by hand; the "
        "sensor tries again once one is exported.\n"
        f"<http://127.0.0.1:3000/assets/events?view=partitions&partition=2020-01-26-10%3A00|events {HOUR}>"
    ]


def test_a_failing_webhook_does_not_fail_the_export(env, instance, receiver):
    receiver.mode = "error"
    failures = Ticker(build_run_failure_sensor, instance, NOW)
    failures.tick()
    assert materialize(definitions(), ["events", "merged_ids"], partition=HOUR, instance=instance).success
    failures.tick()
    assert receiver.bodies == []  # a successful run sends nothing


def test_teams_gets_an_adaptive_card(env, receiver):
    env(AMPLITUDE_ALERT_FORMAT="teams")
    settings = Settings.from_env()
    assert send(probe_message(settings), settings) is True
    card = receiver.bodies[0]["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert [b["text"] for b in card["content"]["body"]] == [
        f"**{TITLE}test alert**",
        "This is a test message from `python -m amplitude_assets test-alert`: alerts reach this channel.",
        "[Dagster UI](http://127.0.0.1:3000)",
    ]
    assert payload_format("https://prod-01.westeurope.logic.azure.com/workflows/x", "auto") == "teams"
    assert payload_format("https://hooks.slack.com/services/x", "auto") == "slack"


def test_the_test_alert_verb_sends_one_message(env, receiver, capsys):
    from amplitude_assets.__main__ import main

    assert main(["test-alert"]) == 0
    assert receiver.texts() == [
        f"*{TITLE}test alert*\nThis is a test message from `python -m amplitude_assets test-alert`: alerts reach "
        "this channel.\n<http://127.0.0.1:3000|Dagster UI>"
    ]
    assert "sent a test message (slack payload)" in capsys.readouterr().out
    env(AMPLITUDE_ALERT_WEBHOOK_URL=None)
    assert main(["test-alert"]) == 2


def test_the_webhook_url_must_be_https_except_loopback(settings_env):
    from amplitude_assets.settings import SECRET_VARIABLES, SettingsError, redact

    settings_env(AMPLITUDE_ALERT_WEBHOOK_URL=f"http://hooks.example.com/services/{TOKEN}")
    with pytest.raises(SettingsError) as error:
        Settings.from_env()
    assert str(error.value) == (
        "AMPLITUDE_ALERT_WEBHOOK_URL must use https (plain http is allowed only to 127.0.0.1/localhost, for the "
        "emulator); got a http URL for host 'hooks.example.com'")
    assert "AMPLITUDE_ALERT_WEBHOOK_URL" in SECRET_VARIABLES
    settings_env(AMPLITUDE_ALERT_WEBHOOK_URL=f"https://hooks.slack.com/services/{TOKEN}")
    assert Settings.from_env().alert_webhook_set
    assert redact(f"posting to https://hooks.slack.com/services/{TOKEN}") == "posting to ***"


def test_a_message_holds_no_blob_url_query_or_secret(env, receiver, azurite):
    from amplitude_assets.alerts.messages import run_failed

    env(AZURE_STORAGE_SAS_TOKEN="sv=2024-01-01&ss=b&sp=rw&sig=c2lnbmF0dXJl")
    settings = Settings.from_env()
    cause = (f"could not write http://127.0.0.1:1/devstoreaccount1/c/a.json.gz?sv=2024-01-01&sp=rw&sig=c2lnbmF0dXJl "
             f"with {azurite} to {receiver.url}")
    assert send(run_failed(settings, "r" * 36, [HOUR], ["events"], "events", cause), settings)
    assert receiver.texts()[0].split("\n")[3] == (
        "Cause: could not write http://127.0.0.1:1/devstoreaccount1/c/a.json.gz with *** to ***")
    assert_no_secrets(receiver)
