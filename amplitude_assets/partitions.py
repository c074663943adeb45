"""The hourly partitions: UTC, Dagster's default key format `%Y-%m-%d-%H:%M`."""

import dagster as dg

from amplitude_assets.settings import Settings


def hourly_partitions(settings: Settings) -> dg.HourlyPartitionsDefinition:
    return dg.HourlyPartitionsDefinition(start_date=settings.start, timezone="UTC")
