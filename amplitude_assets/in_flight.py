"""The hours still in flight: covered by a queued or running run, or by an in-progress backfill.

One scan of the instance, used by `hourly_export_sensor` (it does not request an hour in
flight) and by `merged_ids` (it waits for, or leaves to the automation, an hour before it
that another run is exporting).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg

from amplitude_assets.backfills import hours_in_backfills
from amplitude_assets.partitions import (  # hours_between: importable from here as before
    PARTITION, RANGE_END, RANGE_START, UNFINISHED, hours_between, parse_hour, partition_key,
)


@dataclass(frozen=True)
class RunInFlight:
    run: dg.DagsterRun
    hours: tuple[str, ...]  # the partition keys it covers, oldest first


def run_hours(tags: dict[str, str]) -> tuple[str, ...]:
    """The partition keys a run covers, from Dagster's partition tags (a range, or one key)."""
    start, end = tags.get(RANGE_START), tags.get(RANGE_END)
    if start and end:
        return tuple(partition_key(h) for h in hours_between(parse_hour(start), parse_hour(end)))
    return (tags[PARTITION],) if tags.get(PARTITION) else ()


def runs_in_flight(
    instance: dg.DagsterInstance, assets: set[dg.AssetKey], besides_run_id: str | None = None
) -> Iterator[RunInFlight]:
    """Unfinished runs that may materialize any of `assets` (a run without an asset selection
    may), other than `besides_run_id`, with the hours they cover, in the instance's order."""
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED)):
        if run.run_id == besides_run_id:
            continue
        if run.asset_selection is not None and not set(run.asset_selection) & assets:
            continue
        yield RunInFlight(run, run_hours(run.tags))


def hours_in_flight(
    instance: dg.DagsterInstance, assets: set[dg.AssetKey], besides_run_id: str | None = None
) -> set[str]:
    """Hours of `assets` that an unfinished run (other than `besides_run_id`) or an in-progress
    backfill covers."""
    busy = set(hours_in_backfills(instance, assets))
    for flight in runs_in_flight(instance, assets, besides_run_id):
        busy |= set(flight.hours)
    return busy
