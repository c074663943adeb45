"""The hourly assets. `events`: each hour of Amplitude events shaped as Polars frames
(`shaping.ShapedHour`), which the IO manager serializes to the container."""

from datetime import datetime, timedelta, timezone

import dagster as dg

from amplitude_assets.destination.credentials import AzureStorage
from amplitude_assets.filters import filter_expression, parse_filter
from amplitude_assets.hour_outputs import HourStream
from amplitude_assets.partitions import hours_of, partition_key
from amplitude_assets.resources import AmplitudeSource
from amplitude_assets.shaping import ShapedHour
from amplitude_assets.settings import Settings

GROUP = "amplitude_export"


def refuse_young_hours(hours: list[datetime], delay_minutes: int, now: datetime | None = None) -> None:
    """An hour may be exported only `delay_minutes` after it closes (its data is still arriving)."""
    now = now or datetime.now(timezone.utc)
    young = [h for h in hours if h + timedelta(hours=1, minutes=delay_minutes) > now]
    if young:
        ready = young[0] + timedelta(hours=1, minutes=delay_minutes)
        raise dg.Failure(
            f"hour {partition_key(young[0])} is not exportable yet: it becomes exportable at "
            f"{ready:%Y-%m-%d %H:%M} UTC, {delay_minutes} minutes after it closes "
            f"(AMPLITUDE_EXPORT_DELAY_MINUTES). Exporting it early would mark incomplete data complete."
        )


def build_events_asset(settings: Settings, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    keep = filter_expression(parse_filter(settings.event_filter)) if settings.event_filter else None

    @dg.asset(
        name="events",
        group_name=GROUP,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.multi_run(settings.hours_per_run),
        io_manager_key="events_io_manager",
        kinds={"azure", "polars"},
        description=(
            "Amplitude events of each UTC hour (by server_upload_time), exported as gzipped JSON "
            "lines `{project_id}/{project_id}_{yyyy-MM-dd}_{H}#{n}.json.gz` with a `_complete` marker."
        ),
    )
    def events(
        context: dg.AssetExecutionContext, amplitude_source: AmplitudeSource, storage: AzureStorage
    ) -> HourStream:
        hours = hours_of(context)
        refuse_young_hours(hours, settings.export_delay_minutes)
        source = amplitude_source.open(storage)
        if hasattr(source, "prefetch"):  # the Export API fetches a range in a few windows
            source.prefetch(hours)
        context.log.info(f"exporting {len(hours)} hour(s) from the {source.name} source")
        return HourStream(
            hours=hours, shaped=lambda hour: ShapedHour(source.iter_lines(hour), hour, keep=keep), source=source.name
        )

    return events
