"""The one place that assembles the code location."""

from __future__ import annotations

import warnings

import dagster as dg

from amplitude_assets.alerts.sensors import build_alert_sensors
from amplitude_assets.assets import build_events_asset
from amplitude_assets.chain import build_chain_check
from amplitude_assets.checks import build_events_checks, build_merged_ids_checks
from amplitude_assets.destination.credentials import AzureStorage
from amplitude_assets.destination.io_manager import EventsIOManager, MergedIdsIOManager
from amplitude_assets.freshness import build_freshness_checks
from amplitude_assets.jobs import build_check_destination_job
from amplitude_assets.merged_ids import build_merged_ids_asset
from amplitude_assets.partitions import hourly_partitions
from amplitude_assets.resources import AmplitudeSource
from amplitude_assets.sensors import build_hourly_export_sensor, build_merged_ids_automation_sensor
from amplitude_assets.settings import Settings

# Dagster warns, each time the location loads, that `backfill_policy` is in beta and that
# partitioned asset checks are in preview. The project uses both on purpose; the warnings
# give a user nothing to act on. Only these two categories are silenced.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def build_definitions(settings: Settings) -> dg.Definitions:
    partitions = hourly_partitions(settings)
    storage = AzureStorage.from_env(create_containers=settings.create_containers)
    events = build_events_asset(settings, partitions)
    merged_ids = build_merged_ids_asset(settings, partitions)
    return dg.Definitions(
        assets=[events, merged_ids],
        asset_checks=[
            *build_events_checks(settings, partitions),
            *build_merged_ids_checks(settings, partitions),
            build_chain_check(settings, partitions),
            build_freshness_checks(settings),
        ],
        sensors=[
            build_hourly_export_sensor(settings, partitions),
            build_merged_ids_automation_sensor(settings),
            *build_alert_sensors(settings, partitions),
        ],
        jobs=[build_check_destination_job(settings)],
        resources={
            "amplitude_source": AmplitudeSource.from_settings(settings),
            "storage": storage,
            "events_io_manager": EventsIOManager(
                storage=storage,
                container=settings.events_container,
                prefix=settings.events_prefix,
                project_id=settings.project_id,
                max_rows_per_file=settings.max_rows_per_file,
                hour_lock_wait_seconds=settings.hour_lock_wait_seconds,
            ),
            "merged_ids_io_manager": MergedIdsIOManager(
                storage=storage,
                container=settings.merged_ids_container,
                prefix=settings.merged_ids_prefix,
                scope=settings.merged_ids_scope,
                hour_lock_wait_seconds=settings.hour_lock_wait_seconds,
            ),
        },
    )


defs = build_definitions(Settings.from_env())
