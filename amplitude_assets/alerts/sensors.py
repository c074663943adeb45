"""The two sensors that tell the team: `run_failure_alerts` and `freshness_sensor`.

- `run_failure_alerts` is Dagster's `run_failure_sensor`: one message per failed export run,
  naming the hours it did not export, the step and the first line of the cause. Runs refused
  on purpose (an hour too young, a `merged_ids` hour whose hour before is still running) and
  retries of hours whose failure was sent in the last day send nothing.
- `freshness_sensor` evaluates the `freshness` checks every minute without starting a run (it
  reports their evaluations), and follows the problems that last, with its cursor:
  late hours (while `hourly_export_sensor` is on), a merged-ID chain broken past its
  deadline, and failed hours. A problem is sent when it starts (a failed hour by
  `run_failure_alerts`), again at most once a day while it lasts, and a recovery follows when
  its hour lands.
Both are on by default once AMPLITUDE_ALERT_WEBHOOK_URL is set; `freshness_sensor` is on
anyway, because the checks' results in the UI come from it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import dagster as dg

from amplitude_assets import private_apis
from amplitude_assets.alerts import messages
from amplitude_assets.alerts.runs import exported_assets, failure_cause, not_exported, reported_before, run_hours
from amplitude_assets.alerts.webhook import send
from amplitude_assets.freshness import ASSETS, deadline, freshness_of, window_start
from amplitude_assets.partitions import HOUR, parse_hour, partition_key, utc_hour
from amplitude_assets.settings import Settings

HOURLY_SENSOR = "hourly_export_sensor"
REMIND_AFTER = timedelta(days=1)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def hourly_sensor_on(context: dg.SensorEvaluationContext) -> bool:
    """Whether `hourly_export_sensor` of this code location is running."""
    return private_apis.sensor_running(context, HOURLY_SENSOR)


def build_alert_sensors(settings: Settings, partitions: dg.TimeWindowPartitionsDefinition) -> list[dg.SensorDefinition]:
    return [build_run_failure_sensor(settings, partitions), build_freshness_sensor(settings, partitions)]


def notify_gave_up(settings: Settings, hours: list[str], log=None) -> None:
    """`hourly_export_sensor` gave up on `hours`: say so (nothing without the webhook)."""
    if hours and settings.alert_webhook_set:
        send(messages.gave_up(settings, sorted(hours)), settings, log)


def build_run_failure_sensor(
    settings: Settings, partitions: dg.PartitionsDefinition, now: Callable[[], datetime] = utc_now
) -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name="run_failure_alerts",
        default_status=dg.DefaultSensorStatus.RUNNING if settings.alert_webhook_set else dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=30,
        description="Posts one message to AMPLITUDE_ALERT_WEBHOOK_URL per failed export run: the hours it did not "
                    "export, the failed step and the first line of the cause.",
    )
    def run_failure_alerts(context: dg.RunFailureSensorContext) -> None:
        run = context.dagster_run
        assets = exported_assets(run)
        if not assets:
            return None
        cause = failure_cause(context.instance, run.run_id, context.failure_event.message or "")
        if cause.refused:
            context.log.info(f"run {run.run_id} was refused on purpose ({cause.first_line}): not reported")
            return None
        hours = run_hours(run, partitions)
        missing = not_exported(context.instance, run, hours, assets)
        if reported_before(context.instance, run, missing, partitions, now()):
            context.log.info(f"run {run.run_id}: the failure of {messages.hours_text(missing)} was sent in the last day")
            return None
        names = [a.to_user_string() for a in assets]
        send(messages.run_failed(settings, run.run_id, missing or hours, names, cause.step, cause.first_line),
             settings, context.log)
        return None  # None: the sensor goes on to the next failed run in the same tick

    return run_failure_alerts


def load_cursor(text: str | None) -> dict:
    cursor = json.loads(text) if text else {}
    return {"open": dict(cursor.get("open", {})), "reported": dict(cursor.get("reported", {}))}


def build_freshness_sensor(
    settings: Settings, partitions: dg.TimeWindowPartitionsDefinition, now: Callable[[], datetime] = utc_now
) -> dg.SensorDefinition:
    @dg.sensor(
        name="freshness_sensor",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=60,
        description="Evaluates the freshness checks of events and merged_ids every minute (no run), and with "
                    "AMPLITUDE_ALERT_WEBHOOK_URL set, posts late hours (while hourly_export_sensor is on), a broken "
                    "merged-ID chain, a daily reminder of open problems, and recoveries.",
    )
    def freshness_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        cursor = load_cursor(context.cursor)
        moment = now()
        instance = context.instance
        done = {asset: instance.get_materialized_partitions(asset) for asset in ASSETS}
        fresh = {asset: freshness_of(settings, asset, done[asset], moment) for asset in ASSETS}

        # The checks' evaluations, reported when they change.
        evaluations = []
        for asset, f in fresh.items():
            signature = json.dumps([f.due[-1] if f.due else None, f.late])
            if cursor["reported"].get(asset.to_user_string()) != signature:
                evaluations.append(f.evaluation(settings))
                cursor["reported"][asset.to_user_string()] = signature

        problems = current_problems(context, settings, partitions, moment, done, fresh)
        opened, reminded, recovered, still_open = follow(
            cursor["open"], problems, moment, lambda p: all(p["hour"] in done[dg.AssetKey(a)] for a in p["needs"])
        )
        sent = []
        late_hours = {p["hour"]: p["needs"] for p in opened if p["kind"] == "late"}
        if late_hours:
            sent.append(messages.late(settings, late_hours, {h: deadline(settings, parse_hour(h)) for h in late_hours}))
        for p in opened:
            if p["kind"] == "chain":
                sent.append(messages.chain_broken(settings, p["hour"], deadline(settings, parse_hour(p["hour"])), moment,
                                                  p["waiting"], p.get("cause")))
        if reminded:
            sent.append(messages.reminder(settings, reminded))
        if recovered:
            sent.append(messages.recovered(settings, recovered))
        for message in sent:
            send(message, settings, context.log)

        summary = "; ".join(f.describe(settings) for f in fresh.values())
        if still_open:
            summary += f"; {len(still_open)} open problem(s)"
        return dg.SensorResult(
            skip_reason=dg.SkipReason(summary), asset_events=evaluations,
            cursor=json.dumps({"open": still_open, "reported": cursor["reported"]}, sort_keys=True),
        )

    return freshness_sensor


def current_problems(context, settings: Settings, partitions, moment: datetime, done: dict, fresh: dict) -> dict:
    """The problems at `moment`, by key: late hours, failed hours, and the hour where the merged-ID chain stops."""
    instance = context.instance
    problems: dict[str, dict] = {}
    if hourly_sensor_on(context):
        missing: dict[str, list[str]] = {}
        for asset in ASSETS:
            for hour in fresh[asset].late:
                missing.setdefault(hour, []).append(asset.to_user_string())
        for hour, assets in missing.items():
            problems[f"late:{hour}"] = {"kind": "late", "hour": hour, "needs": assets,
                                        "what": f"late ({' and '.join(assets)} not materialized)"}

    first = window_start(settings, moment)
    closed = [partition_key(first + i * HOUR) for i in range(int((utc_hour(moment) - first) / HOUR))]
    causes: dict[tuple[str, str], str] = {}
    for asset in ASSETS:
        statuses = instance.get_status_by_partition(asset, closed, partitions) or {}
        for hour, status in statuses.items():
            if status != dg.AssetPartitionStatus.FAILED:
                continue
            info = instance.get_latest_planned_materialization_info(asset, hour)
            cause = failure_cause(instance, info.run_id) if info else None
            if cause is not None and cause.refused:
                continue
            name = asset.to_user_string()
            causes[(name, hour)] = cause.first_line if cause else "the run failed"
            # Sent when it starts by run_failure_alerts: the ledger only reminds and recovers.
            problems[f"failed:{name}:{hour}"] = {"kind": "failed", "hour": hour, "needs": [name], "silent": True,
                                                  "what": f"{name} failed ({causes[(name, hour)]})"}

    events, merged = done[ASSETS[0]], done[ASSETS[1]]
    stuck = [h for h in fresh[ASSETS[1]].due if h in events and h not in merged]
    if stuck:
        hour = stuck[0]
        waiting = [h for h in closed if h > hour and h in events and h not in merged]
        problems[f"chain:{hour}"] = {"kind": "chain", "hour": hour, "needs": ["merged_ids"], "waiting": waiting,
                                     "cause": causes.get(("merged_ids", hour)), "what": "the merged-ID chain is broken"}
    return problems


def follow(open_: dict, current: dict, moment: datetime, landed: Callable[[dict], bool]):
    """(opened, reminded, recovered, still open): a problem is sent when it starts, then once a day while it
    lasts; one that ends with its hour landed is a recovery, one that ends otherwise is dropped."""
    stamp = moment.isoformat(timespec="seconds")
    opened, reminded, recovered, still = [], [], [], {}
    for key, problem in current.items():
        record = open_.get(key)
        if record is None:
            record = {**problem, "since": stamp, "sent": stamp}
            if not problem.get("silent"):
                opened.append(record)
        elif moment - datetime.fromisoformat(record["sent"]) >= REMIND_AFTER:
            record = {**record, "sent": stamp}
            reminded.append(record)
        still[key] = record
    for key, record in open_.items():
        if key not in current and landed(record):
            recovered.append(record)
    return opened, reminded, recovered, still
