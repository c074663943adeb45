"""Freshness: every hour has a deadline, and an hour with no materialization by then is late.

An hour may be exported AMPLITUDE_EXPORT_DELAY_MINUTES after it closes, and it is late
AMPLITUDE_LATE_AFTER_MINUTES after that: deadline = hour + 1 h + export delay + late-after.

Dagster's `build_time_partition_freshness_checks` expects, at each tick of a cron, the hour
that closed before the tick, so it cannot wait more than an hour after an hour closes (the
Export API's delay alone is two hours); `FreshnessPolicy` looks only at the latest
materialization of any partition, so a backfill of an old hour would hide a late new one.
So the `freshness` check of each asset is this module's: it looks at every hour of the
catch-up window whose deadline has passed, fails while any of them has no materialization,
and describes the newest. `alert_on_late_hours` evaluates it every minute without starting a
run (`alerts/sensors.py`); it also runs after each export, like every check of the assets.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import dagster as dg

from amplitude_assets.partitions import HOUR, parse_hour, partition_key, utc_hour
from amplitude_assets.settings import Settings

CHECK = "freshness"
ASSETS = (dg.AssetKey("events"), dg.AssetKey("merged_ids"))


def deadline(settings: Settings, hour: datetime) -> datetime:
    """When `hour` is late if it has not landed: its export delay, then AMPLITUDE_LATE_AFTER_MINUTES."""
    return hour + HOUR + timedelta(minutes=settings.export_delay_minutes + settings.late_after_minutes)


def window_start(settings: Settings, now: datetime) -> datetime:
    """The oldest hour looked at: the later of AMPLITUDE_START and AMPLITUDE_CATCH_UP_HOURS ago (as the sensor)."""
    return max(settings.start_hour, utc_hour(now) - timedelta(hours=settings.catch_up_hours))


def due_hours(settings: Settings, now: datetime) -> list[str]:
    """Keys of the hours of the window whose deadline has passed, oldest first."""
    lag = deadline(settings, datetime(2000, 1, 1, tzinfo=timezone.utc)) - datetime(2000, 1, 1, tzinfo=timezone.utc)
    first, last = window_start(settings, now), utc_hour(now - lag)
    return [partition_key(first + i * HOUR) for i in range(int((last - first) / HOUR) + 1)] if last >= first else []


@dataclass(frozen=True)
class Freshness:
    """One asset's freshness at a moment: the hours past their deadline, and which of them are late."""

    asset: dg.AssetKey
    now: datetime
    due: list[str]  # hours of the window past their deadline, oldest first
    late: list[str]  # those with no materialization, oldest first
    next_deadline: datetime  # when the next hour falls due

    @property
    def passed(self) -> bool:
        return not self.late

    def describe(self, settings: Settings) -> str:
        if not self.due:
            return f"no hour is due yet: the first falls due at {self.next_deadline:%Y-%m-%d %H:%M} UTC"
        if self.passed:
            newest = self.due[-1]
            return (f"fresh: the newest hour due, {newest} (deadline {deadline(settings, parse_hour(newest)):%Y-%m-%d %H:%M} "
                    f"UTC), is materialized, and so is every hour since {self.due[0]}")
        newest, oldest = self.late[-1], self.late[0]
        text = (f"late: {newest} has no materialization "
                f"{_minutes(self.now - deadline(settings, parse_hour(newest)))} after its deadline "
                f"{deadline(settings, parse_hour(newest)):%Y-%m-%d %H:%M} UTC")
        if len(self.late) > 1:
            text += f"; {len(self.late)} hours are late, from {oldest}"
        return text

    def metadata(self, settings: Settings) -> dict:
        facts: dict = {
            "late_hours": dg.MetadataValue.json(self.late),
            "hours_due": len(self.due),
            "late_after_minutes": settings.late_after_minutes,
            "export_delay_minutes": settings.export_delay_minutes,
        }
        if self.due:
            facts["newest_hour_due"] = self.due[-1]
        if self.late:
            overdue = deadline(settings, parse_hour(self.late[0]))
            facts["dagster/overdue_deadline_timestamp"] = dg.MetadataValue.timestamp(overdue.timestamp())
            facts["dagster/overdue_seconds"] = dg.MetadataValue.float((self.now - overdue).total_seconds())
        else:
            facts["dagster/fresh_until_timestamp"] = dg.MetadataValue.timestamp(self.next_deadline.timestamp())
        return facts

    def result(self, settings: Settings) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(asset_key=self.asset, check_name=CHECK, passed=self.passed,
                                   description=self.describe(settings), metadata=self.metadata(settings))

    def evaluation(self, settings: Settings) -> dg.AssetCheckEvaluation:
        return dg.AssetCheckEvaluation(asset_key=self.asset, check_name=CHECK, passed=self.passed,
                                       description=self.describe(settings), metadata=self.metadata(settings))


def evaluate(instance: dg.DagsterInstance, settings: Settings, asset: dg.AssetKey, now: datetime) -> Freshness:
    """The asset's freshness at `now`, from the instance's materializations (the daemon's view)."""
    return freshness_of(settings, asset, instance.get_materialized_partitions(asset), now)


def freshness_of(settings: Settings, asset: dg.AssetKey, materialized: set[str], now: datetime) -> Freshness:
    due = due_hours(settings, now)
    upcoming = parse_hour(due[-1]) + HOUR if due else window_start(settings, now)
    return Freshness(asset=asset, now=now, due=due, late=[k for k in due if k not in materialized],
                     next_deadline=deadline(settings, upcoming))


def build_freshness_checks(settings: Settings) -> dg.AssetChecksDefinition:
    """The `freshness` check of `events` and of `merged_ids`."""
    description = (
        "Every hour of the last AMPLITUDE_CATCH_UP_HOURS is materialized by its deadline: "
        f"{settings.export_delay_minutes} min after it closes (AMPLITUDE_EXPORT_DELAY_MINUTES) plus "
        f"{settings.late_after_minutes} min (AMPLITUDE_LATE_AFTER_MINUTES). Describes the newest hour due."
    )

    @dg.multi_asset_check(
        name=CHECK,
        specs=[dg.AssetCheckSpec(CHECK, asset=asset, description=description) for asset in ASSETS],
        can_subset=True,
    )
    def freshness(context: dg.AssetCheckExecutionContext):
        now = datetime.now(timezone.utc)
        for key in sorted(context.selected_asset_check_keys, key=lambda k: k.asset_key.to_user_string()):
            yield evaluate(context.instance, settings, key.asset_key, now).result(settings)

    return freshness


def _minutes(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
