"""The hourly `merged_ids` asset: merged Amplitude IDs, derived hour by hour from the events.

For each hour of the step, oldest first:
  1. read the hour's identity columns, which `events` wrote beside its export (Parquet
     under `[P/]_state/`), so the source is never read twice;
  2. take the identity state after the hour before: carried in memory inside a range run,
     else read from `[Q/]_state/{scope}/` (the day's snapshot plus at most 23 hourly deltas);
  3. derive the hour's merges (`identity.derive_merges`, pure polars);
  4. hand the hour to `MergedIdsIOManager` as a `MergedHour`: its merges as a Polars
     table, and the state it leaves (a delta, or a snapshot after hour 23) in stored form.

The asset returns a `MergedIdsStream`, and the IO manager writes each hour in the
four-step order (`destination/merged_writer.py`), the state just before the marker, under
the hour's lease. The stream is lazy: an hour is derived only after the hour before was
written, so a range run holds one hour at a time and carries the state in memory.
"""

import hashlib
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg
import polars as pl
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient

from amplitude_assets.assets import GROUP, refuse_young_hours
from amplitude_assets.destination.blobs import md5_hex
from amplitude_assets.destination.credentials import AzureStorage
from amplitude_assets.destination.encoding import parquet_bytes
from amplitude_assets.hour_outputs import MergedIdsStream
from amplitude_assets.identity import (
    DELTA,
    IdentityState,
    MergedHour,
    StoredState,
    decode_state,
    derive_merges,
    encode_state,
    stored_kind,
)
from amplitude_assets.in_flight import hours_in_flight, runs_in_flight
from amplitude_assets.layout import EventsLayout, MergedIdsLayout
from amplitude_assets.partitions import hours_of, partition_key
from amplitude_assets.settings import Settings

MAX_DELTAS = 23  # a snapshot is stored at least once a day
MERGED_IDS = dg.AssetKey("merged_ids")
EVENTS = dg.AssetKey("events")


@dataclass(frozen=True)
class Carried:
    """The identity state an hour starts from, and where it is stored (None: the history starts here)."""

    state: IdentityState
    stored: StoredState | None

    @property
    def history_starts(self) -> bool:
        return self.stored is None


def read_identities(client: ContainerClient, layout: EventsLayout, hour: datetime) -> pl.DataFrame:
    """The identity columns `events` wrote for the hour; fails naming the hour to export first."""
    name = layout.identities(hour)
    try:
        data = client.download_blob(name).readall()
    except ResourceNotFoundError:
        raise dg.Failure(
            f"merged_ids {partition_key(hour)}: the hour's identities ({name}) are missing. merged_ids reads "
            f"what events wrote: materialize events for {partition_key(hour)} first."
        ) from None
    return pl.read_parquet(io.BytesIO(data))


def read_carried_state(client: ContainerClient, layout: MergedIdsLayout, hour: datetime) -> Carried:
    """The state after the hour before `hour`, or empty where the history starts.

    The state of an hour is stored as a snapshot (after hour 23 of each UTC day, and where
    a history starts) or as a delta on the hour before, so this reads one snapshot and at
    most 23 small deltas. Only when the hour before has no state at all is the state folder
    listed, to tell a first export (no state before `hour`: start empty) from a gap (refuse).
    """
    previous = hour - timedelta(hours=1)
    name = layout.state(previous)
    try:
        data = client.download_blob(name).readall()
    except ResourceNotFoundError:
        earlier = [
            h for h in (layout.state_hour(b.name) for b in client.list_blobs(name_starts_with=layout.state_folder))
            if h is not None and h < hour
        ]
        if earlier:
            latest = max(earlier)
            first = latest + timedelta(hours=1)
            span = partition_key(first) if first == previous else f"{partition_key(first)} ... {partition_key(previous)}"
            raise dg.Failure(
                f"merged_ids {partition_key(hour)}: the identity state of the hour before ({partition_key(previous)}) is "
                f"missing, and the latest earlier state is for {partition_key(latest)}. Merged IDs are derived "
                f"hour by hour: export merged_ids for {partition_key(first)} first ({span}), then {partition_key(hour)}."
            ) from None
        return Carried(IdentityState.empty(), None)
    frames = [pl.read_parquet(io.BytesIO(data))]
    at = previous
    while stored_kind(frames[-1]) == DELTA:
        if len(frames) > MAX_DELTAS:
            raise dg.Failure(f"merged_ids {partition_key(hour)}: no identity snapshot within {MAX_DELTAS} hours before {partition_key(previous)}")
        at -= timedelta(hours=1)
        try:
            frames.append(pl.read_parquet(io.BytesIO(client.download_blob(layout.state(at)).readall())))
        except ResourceNotFoundError:
            raise dg.Failure(
                f"merged_ids {partition_key(hour)}: the identity state of {partition_key(previous)} is a delta on "
                f"{partition_key(at)}, whose state is missing. Re-export merged_ids from the last snapshot on: "
                f"export merged_ids for {partition_key(at)} ... {partition_key(previous)} first."
            ) from None
    return Carried(decode_state(frames[::-1]), StoredState(name, hashlib.md5(data).hexdigest()))


def run_exporting(instance: dg.DagsterInstance, key: str, own_run_id: str) -> dg.DagsterRun | None:
    """Another unfinished run that derives the merged IDs of hour `key`, if there is one."""
    return next((f.run for f in runs_in_flight(instance, {MERGED_IDS}, own_run_id) if key in f.hours), None)


WAIT_POLL_SECONDS = 5.0


def wait_for_the_hour_before(
    context: dg.AssetExecutionContext, client: ContainerClient, layout: MergedIdsLayout, hour: datetime,
    wait_seconds: float,
) -> None:
    """When the hour before has no state yet and another run is exporting it, wait for it to land.

    Runs are ordered by Dagster (the self-dependency in backfills, the automation condition,
    the sensor's requests), but two of them can still meet: a sync that starts while a
    backfill exports the hour before. A run that is already running will write that hour's
    state, so this step waits for it (polling the state blob) rather than fail and spend an
    attempt; it holds no run-queue slot the other run needs, because runs of events and of
    both assets carry no chain tag, and a queued run is not waited for (`pending_earlier_hours`
    then leaves the hour to the automation). It fails, naming the hour, when the other run
    takes longer than AMPLITUDE_HOUR_LOCK_WAIT_SECONDS.
    """
    previous = hour - timedelta(hours=1)
    deadline = time.monotonic() + wait_seconds
    announced = False
    while existing_md5(client, layout.state(previous)) is None:
        run = run_exporting(context.instance, partition_key(previous), context.run.run_id)
        if run is None:
            return  # nobody is exporting it: read_carried_state tells a first hour from a gap
        if run.status != dg.DagsterRunStatus.STARTED:
            return  # queued: it may be queued behind this run; pending_earlier_hours leaves the hour to it
        if time.monotonic() >= deadline:
            raise dg.Failure(
                f"merged_ids {partition_key(hour)}: the hour before, {partition_key(previous)}, is not exported yet: "
                f"run {run.run_id} is still exporting it after {wait_seconds:.0f}s "
                "(AMPLITUDE_HOUR_LOCK_WAIT_SECONDS). Merged IDs are derived in hour order: export merged_ids for "
                f"{partition_key(previous)} first, then {partition_key(hour)} (its automation condition requests "
                "it again once the hour before lands)."
            )
        if not announced:
            context.log.info(
                f"merged_ids {partition_key(hour)}: waiting for run {run.run_id}, which is exporting the hour "
                f"before ({partition_key(previous)})"
            )
            announced = True
        time.sleep(WAIT_POLL_SECONDS)


def pending_earlier_hours(
    context: dg.AssetExecutionContext, client: ContainerClient, layout: MergedIdsLayout, hour: datetime
) -> list[str]:
    """Earlier hours without identity state that another unfinished run or backfill will export.

    Empty when the hour before has its state (the usual case, one request), or when nobody
    is working on the hours before (then `read_carried_state` tells a first hour from a gap)."""
    if existing_md5(client, layout.state(hour - timedelta(hours=1))) is not None:
        return []
    key = partition_key(hour)
    pending = hours_in_flight(context.instance, {MERGED_IDS}, besides_run_id=context.run.run_id)
    earlier = sorted(k for k in pending if k < key)  # keys sort as hours
    if not earlier:
        return []
    states = [h for h in (layout.state_hour(b.name) for b in client.list_blobs(name_starts_with=layout.state_folder))
              if h is not None and h < hour]
    latest = partition_key(max(states)) if states else None
    return [k for k in earlier if latest is None or k > latest]


def is_snapshot_hour(hour: datetime, history_starts: bool) -> bool:
    """Where a snapshot is stored instead of a delta: the last hour of each UTC day, and history starts."""
    return history_starts or hour.hour == 23


def existing_md5(client: ContainerClient, name: str) -> str | None:
    try:
        return md5_hex(client.get_blob_client(name).get_blob_properties().content_settings.content_md5) or ""
    except ResourceNotFoundError:
        return None


def follows_events() -> dg.AutomationCondition:
    """Request an hour once its events land, in hour order; the automation condition sensor evaluates it.

    - Trigger: the hour's `events` was materialized by a run that did not also materialize
      `merged_ids` (a run or backfill of `events` from the UI or GraphQL), or the hour before's
      `merged_ids` landed while this hour is missing or failed (it had to wait for it).
    - Not while the hour's events, or the hour before's events or merged IDs, are in progress:
      that hour comes first. Hours that become ready on the same tick go into one backfill,
      which Dagster runs in hour order along the self-dependency.
    A run that selects both assets (the sensor's, a backfill of both) handles the hour itself.
    """
    events = dg.AssetSelection.assets(EVENTS)
    itself = dg.AssetSelection.assets(MERGED_IDS)
    AC = dg.AutomationCondition
    trigger = AC.any_deps_updated().allow(events) | (
        AC.any_deps_updated().allow(itself) & (AC.missing() | AC.execution_failed())
    )
    hour_before_events_in_progress = AC.any_deps_match(AC.asset_matches(EVENTS, AC.in_progress())).allow(itself)
    return (
        trigger.since_last_handled()
        & ~AC.any_deps_missing().allow(events)
        & ~AC.any_deps_in_progress()
        & ~hour_before_events_in_progress
        & ~AC.in_progress()
    ).with_label("follows events, in hour order")


def build_merged_ids_asset(settings: Settings, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    layout = MergedIdsLayout(settings.merged_ids_prefix, settings.merged_ids_scope)

    @dg.asset(
        name="merged_ids",
        group_name=GROUP,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.multi_run(settings.hours_per_run),
        deps=[
            dg.AssetDep("events"),
            # Each hour starts from the identity state of the hour before. The self-dependency
            # makes Dagster's backfills run the chunks of a range in order; the asset itself
            # refuses a gap, so single-partition runs and sensor runs stay safe too.
            dg.AssetDep("merged_ids", partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)),
        ],
        automation_condition=follows_events(),
        io_manager_key="merged_ids_io_manager",
        output_required=False,  # a step whose hours wait for the chain writes nothing, and does not fail
        kinds={"azure", "polars"},
        description=(
            "Merged Amplitude IDs of each UTC hour, derived from the hour's events and the identity "
            f"state of the hour before: `{layout.folder}{{scope}}_{{yyyy-MM-dd}}_{{H}}.json.gz` "
            "with a `_complete` marker. Re-exporting an hour makes later hours stale: re-run them."
        ),
    )
    def merged_ids(context: dg.AssetExecutionContext, storage: AzureStorage):
        hours = hours_of(context)
        refuse_young_hours(hours, settings.export_delay_minutes)
        client = storage.container(settings.merged_ids_container)
        wait_for_the_hour_before(context, client, layout, hours[0], settings.hour_lock_wait_seconds)
        pending = pending_earlier_hours(context, client, layout, hours[0])
        if pending:
            # Not a failure: the chain is being filled by another run or backfill. The hours stay
            # missing, and the automation condition requests them once the hour before lands.
            context.log.info(
                f"merged_ids {partition_key(hours[0])}: left to merged_ids_automation: the hour before has no "
                f"identity state yet, and earlier hours ({pending[0]} ... {pending[-1]}) are still being "
                "exported by other runs or backfills. Nothing was written."
            )
            return
        derived = derive_hours(context, settings, storage, hours)
        yield dg.Output(MergedIdsStream(hours=hours, derived=derived, source=settings.source))

    return merged_ids


def derive_hours(
    context: dg.AssetExecutionContext, settings: Settings, storage: AzureStorage, hours: list[datetime]
) -> Iterator[MergedHour]:
    """Each hour's merges and the state it leaves, oldest first; the state is carried in memory."""
    events_layout = EventsLayout(settings.events_prefix, settings.project_id)
    layout = MergedIdsLayout(settings.merged_ids_prefix, settings.merged_ids_scope)
    events_client = storage.container(settings.events_container)
    client = storage.container(settings.merged_ids_container)
    carried: Carried | None = None
    for hour in hours:
        started = time.perf_counter()
        identities = read_identities(events_client, events_layout, hour)
        if carried is None:  # the first hour of the step; later ones carry it in memory
            carried = read_carried_state(client, layout, hour)
            warn_if_history_starts_late(context, events_client, events_layout, hour, carried)
        read_seconds = time.perf_counter() - started
        derived, state = derive_hour(hour, identities, carried, int(settings.merged_ids_scope), read_seconds)
        del identities
        yield derived  # the IO manager asks for the next hour only once this one is written
        carried = Carried(state, StoredState(layout.state(hour), derived.state_md5))


def warn_if_history_starts_late(
    context: dg.AssetExecutionContext, events_client: ContainerClient, events_layout: EventsLayout, hour: datetime,
    carried: Carried,
) -> None:
    """Warn when the identity history starts at `hour` although the events of the hour before were exported."""
    before_hour = hour - timedelta(hours=1)
    if carried.history_starts and existing_md5(events_client, events_layout.identities(before_hour)) is not None:
        context.log.warning(
            f"merged_ids {partition_key(hour)}: no identity state exists before this hour, so the "
            f"identity history starts here, although events of {partition_key(before_hour)} were "
            f"exported. If merged_ids of earlier hours is meant to run (or is running), run it first "
            f"and then re-run merged_ids from {partition_key(hour)}."
        )


def derive_hour(
    hour: datetime, identities: pl.DataFrame, carried: Carried, scope: int, read_seconds: float
) -> tuple[MergedHour, IdentityState]:
    """One hour's merges from its identities and the state before it, and the state it leaves."""
    started = time.perf_counter()
    rows, state = derive_merges(identities, carried.state, scope)
    snapshot = is_snapshot_hour(hour, carried.history_starts)
    state_bytes = parquet_bytes(encode_state(state, None if snapshot else carried.state))
    derived = MergedHour(
        hour=hour, merges=rows, identity_rows=identities.height, state=state_bytes,
        state_md5=hashlib.md5(state_bytes).hexdigest(), state_stored_as="snapshot" if snapshot else "delta",
        state_sizes=state.sizes(), started_from=carried.stored,
        timings={"read_seconds": read_seconds, "derive_seconds": time.perf_counter() - started},
    )
    return derived, state
