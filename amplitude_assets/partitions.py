"""Hours and their partition keys: UTC hours, Dagster's default key format `%Y-%m-%d-%H:%M`.

Every module turns hours into keys, keys into hours and a step into its hours here, and
writes a manifest's hour and checks an hour's reconciliation with the one definition below.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import dagster as dg

from amplitude_assets.errors import SettingsError

if TYPE_CHECKING:
    from amplitude_assets.settings import Settings

KEY_FORMAT = "%Y-%m-%d-%H:%M"  # Dagster's default hourly key, e.g. 2020-01-25-17:00
MANIFEST_HOUR_FORMAT = "%Y-%m-%dT%H:00:00Z"  # the hour in markers' manifests, e.g. 2020-01-25T17:00:00Z
HOUR = timedelta(hours=1)

# The tags Dagster reads to run one step over a range of partitions.
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
PARTITION = "dagster/partition"
# Run states in which a run still holds its hours.
UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
# The counts that account for every source row: source_rows = exported + duplicates + filtered + rejected.
ACCOUNTED = ("exported", "duplicates", "filtered", "rejected")


def hourly_partitions(settings: Settings) -> dg.HourlyPartitionsDefinition:
    return dg.HourlyPartitionsDefinition(start_date=settings.start, timezone="UTC")


def utc_hour(moment: datetime) -> datetime:
    """The UTC hour that holds `moment`, as an aware datetime; a naive `moment` counts as UTC."""
    moment = moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return moment.replace(minute=0, second=0, microsecond=0)


def partition_key(hour: datetime) -> str:
    """The hour's partition key, such as `2020-01-25-17:00`."""
    return hour.strftime(KEY_FORMAT)


def parse_hour(key: str, name: str = "partition key") -> datetime:
    """Parse an hour partition key such as `2020-01-25-17:00` into an aware UTC datetime."""
    try:
        hour = datetime.strptime(key, KEY_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise SettingsError(
            f"{name} must look like 2024-01-01-00:00 (%Y-%m-%d-%H:%M), got {key!r}"
        ) from None
    if hour.minute != 0:
        raise SettingsError(f"{name} must be on the hour, got {key!r}")
    return hour


def manifest_hour(hour: datetime) -> str:
    """The hour as a manifest writes it, such as `2020-01-25T17:00:00Z`."""
    return hour.strftime(MANIFEST_HOUR_FORMAT)


def hours_in(window: dg.TimeWindow) -> list[datetime]:
    """The UTC hours of a time window, oldest first."""
    start = window.start.astimezone(timezone.utc)
    count = int((window.end - window.start).total_seconds() // 3600)
    return [start + i * HOUR for i in range(count)]


def hours_between(first: datetime, last: datetime) -> list[datetime]:
    """The hours from `first` to `last`, both included."""
    return [first + timedelta(hours=n) for n in range(int((last - first).total_seconds() // 3600) + 1)]


def hours_of(context: dg.AssetExecutionContext) -> list[datetime]:
    """The UTC hours of the step's partition range, oldest first."""
    return hours_in(context.partition_time_window)


def accounted(counts: Mapping[str, int]) -> int:
    """exported + duplicates + filtered + rejected: the rows that `source_rows` must equal."""
    return sum(int(counts.get(name, 0)) for name in ACCOUNTED)


def reconciles(counts: Mapping[str, int]) -> bool:
    """source_rows = exported + duplicates + filtered + rejected (repairs are counted beside)."""
    return counts.get("source_rows") == accounted(counts)
