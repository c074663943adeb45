"""The hourly `merged_ids` asset: merged Amplitude IDs, derived hour by hour from the events.

For each hour of the step, oldest first:
  1. read the hour's identity columns, which `events` wrote beside its export (Parquet
     under `[P/]_state/`), so the source is never read twice;
  2. take the identity state after the hour before: carried in memory inside a range run,
     else read from `[Q/]_state/{scope}/` (the day's snapshot plus at most 23 hourly deltas);
  3. derive the hour's merges (`identity.derive_merges`, pure polars);
  4. write in the four-step order: delete the marker, write the file (only when the hour
     has merges) with its Content-MD5, delete a stale file, write the marker. The hour's
     state (a delta, or a snapshot after hour 23) is written just before the marker.
     These writes hold the hour's lease: one writer per merged-ID hour.

The asset writes in its body and returns a `MaterializeResult`: an IO manager would get
one output for the whole range, but every hour needs the state of the hour before it,
written before that hour's marker, and its own metadata.
"""

import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import dagster as dg
import polars as pl
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient

from amplitude_assets.assets import GROUP, refuse_young_hours
from amplitude_assets.chain import NO_STATE, Link, link_problem, read_link
from amplitude_assets.destination.credentials import AzureStorage
from amplitude_assets.layout import EventsLayout, MergedIdsLayout
from amplitude_assets.destination.lease import hour_lease
from amplitude_assets.destination.writer import (
    GZIP_CONTENT,
    JSON_CONTENT,
    PARQUET_CONTENT,
    Manifest,
    PartInfo,
    delete_if_exists,
    encode_records,
    md5_hex,
    parquet_bytes,
    upload,
)
from amplitude_assets.identity import DELTA, IdentityState, decode_state, derive_merges, encode_state, stored_kind
from amplitude_assets.partitions import PARTITION, RANGE_END, RANGE_START, UNFINISHED, hours_of, manifest_hour, partition_key
from amplitude_assets.schema import MERGED_ID_FIELDS
from amplitude_assets.settings import Settings

MAX_DELTAS = 23  # a snapshot is stored at least once a day
MERGED_IDS = dg.AssetKey("merged_ids")
EVENTS = dg.AssetKey("events")
COLUMN_SCHEMA = dg.TableSchema(
    columns=[dg.TableColumn(name, "int" if name == "scope" else "long") for name in MERGED_ID_FIELDS]
)


@dataclass(frozen=True)
class Carried:
    """The identity state an hour starts from, and where it came from."""

    state: IdentityState
    name: str | None  # the snapshot blob; None when the history starts at this hour
    md5: str | None

    @property
    def history_starts(self) -> bool:
        return self.name is None


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
        return Carried(IdentityState.empty(), None, None)
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
    return Carried(decode_state(frames[::-1]), name, hashlib.md5(data).hexdigest())


def run_exporting(instance: dg.DagsterInstance, key: str, own_run_id: str) -> str | None:
    """Another unfinished run that exports hour `key` (events or merged IDs), if there is one."""
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED)):
        if run.run_id == own_run_id:
            continue
        if run.asset_selection is not None and not {EVENTS, MERGED_IDS} & set(run.asset_selection):
            continue
        start, end = run.tags.get(RANGE_START), run.tags.get(RANGE_END)
        if (start and end and start <= key <= end) or run.tags.get(PARTITION) == key:  # keys sort as hours
            return run.run_id
    return None


def refuse_while_the_hour_before_runs(
    context: dg.AssetExecutionContext, client: ContainerClient, layout: MergedIdsLayout, hour: datetime
) -> None:
    """Fail at once when the hour before has no state yet and another run is still exporting it.

    Nobody waits inside a step: Dagster orders the runs (the self-dependency in backfills,
    the automation condition, the sensor's runs through the run queue). A run that starts
    too early fails here, naming the hour, rather than start an identity history of its own.
    """
    previous = hour - timedelta(hours=1)
    if existing_md5(client, layout.state(previous)) is not None:
        return
    run_id = run_exporting(context.instance, partition_key(previous), context.run_id)
    if run_id is not None:
        raise dg.Failure(
            f"merged_ids {partition_key(hour)}: the hour before, {partition_key(previous)}, is not exported yet: "
            f"run {run_id} is still exporting it. Merged IDs are derived in hour order: export merged_ids for "
            f"{partition_key(previous)} first, then {partition_key(hour)} (its automation condition requests "
            "it again once the hour before lands)."
        )


def is_snapshot_hour(hour: datetime, history_starts: bool) -> bool:
    """Where a snapshot is stored instead of a delta: the last hour of each UTC day, and history starts."""
    return history_starts or hour.hour == 23


def existing_md5(client: ContainerClient, name: str) -> str | None:
    try:
        return md5_hex(client.get_blob_client(name).get_blob_properties().content_settings.content_md5) or ""
    except ResourceNotFoundError:
        return None


def write_merged_ids_hour(
    client: ContainerClient,
    layout: MergedIdsLayout,
    hour: datetime,
    rows: pl.DataFrame,
    state: bytes,
    *,
    source: str,
    counts: dict[str, int],
    extra: dict[str, Any],
    lock_wait_seconds: float = Settings.hour_lock_wait_seconds,
    holder: str | None = None,
    notify: Callable[[str], None] | None = None,
) -> Manifest:
    """Export one hour in the four-step order; the state snapshot goes in just before the marker.

    All of it under the hour's lease (`destination/lease.py`): two runs never write the
    state, file or marker of one hour at once. Another run's export of the hour makes this
    one wait up to `lock_wait_seconds`, then fail with `HourLocked`, changing nothing.
    """
    label = f"merged_ids {partition_key(hour)}"
    with hour_lease(client, layout.lock(hour), label, lock_wait_seconds, holder=holder, notify=notify) as lease:
        delete_if_exists(client, layout.marker(hour))
        parts = []
        if rows.height:
            info = upload(client, layout.file(hour), encode_records(rows), GZIP_CONTENT)
            parts.append(PartInfo(name=info.name, rows=rows.height, bytes=info.bytes, md5=info.md5))
        else:
            delete_if_exists(client, layout.file(hour))  # a stale file from an earlier export
        upload(client, layout.state(hour), state, PARQUET_CONTENT)
        manifest = Manifest(hour=hour, source=source, parts=parts, counts=counts, extra=extra)
        # The chain's two digests ride on the marker as blob metadata: one listing gives a day's links.
        link = Link(extra["state"]["md5"], (extra.get("previous_state") or {}).get("md5"))
        lease.confirm()
        upload(client, layout.marker(hour), manifest.to_json(), JSON_CONTENT, metadata=link.as_blob_metadata())
    return manifest


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
    scope = settings.merged_ids_scope
    events_layout = EventsLayout(settings.events_prefix, settings.project_id)
    layout = MergedIdsLayout(settings.merged_ids_prefix, scope)

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
        kinds={"azure", "polars"},
        description=(
            "Merged Amplitude IDs of each UTC hour, derived from the hour's events and the identity "
            f"state of the hour before: `{layout.folder}{{scope}}_{{yyyy-MM-dd}}_{{H}}.json.gz` "
            "with a `_complete` marker. Re-exporting an hour makes later hours stale: re-run them."
        ),
    )
    def merged_ids(context: dg.AssetExecutionContext, storage: AzureStorage) -> dg.MaterializeResult:
        hours = hours_of(context)
        refuse_young_hours(hours, settings.export_delay_minutes)
        events_client = storage.container(settings.events_container)
        client = storage.container(settings.merged_ids_container)
        carried: Carried | None = None
        done: list[str] = []
        for hour in hours:
            key = partition_key(hour)
            try:
                started = time.perf_counter()
                identities = read_identities(events_client, events_layout, hour)
                if carried is None:  # the first hour of the step; later ones carry it in memory
                    refuse_while_the_hour_before_runs(context, client, layout, hour)
                    carried = read_carried_state(client, layout, hour)
                    before_hour = hour - timedelta(hours=1)
                    if carried.history_starts and existing_md5(events_client, events_layout.identities(before_hour)) is not None:
                        context.log.warning(
                            f"merged_ids {key}: no identity state exists before this hour, so the identity "
                            f"history starts here, although events of {partition_key(before_hour)} were exported. If "
                            f"merged_ids of earlier hours is meant to run (or is running), run it first and "
                            f"then re-run merged_ids from {key}."
                        )
                read_seconds = time.perf_counter() - started
                started = time.perf_counter()
                rows, state = derive_merges(identities, carried.state, int(scope))
                snapshot = is_snapshot_hour(hour, carried.history_starts)
                state_bytes = parquet_bytes(encode_state(state, None if snapshot else carried.state))
                derive_seconds = time.perf_counter() - started
                state_md5 = hashlib.md5(state_bytes).hexdigest()
                extra: dict[str, Any] = {}
                if carried.history_starts:
                    extra["identity_history_starts"] = manifest_hour(hour)
                extra["state"] = {"name": layout.state(hour), "stored_as": "snapshot" if snapshot else "delta",
                                  "bytes": len(state_bytes), "md5": state_md5, "sizes": state.sizes()}
                extra["previous_state"] = {"name": carried.name, "md5": carried.md5} if carried.name else None
                started = time.perf_counter()
                manifest = write_merged_ids_hour(
                    client, layout, hour, rows, state_bytes, source=settings.source,
                    counts={"identity_rows": identities.height, "merges": rows.height}, extra=extra,
                    lock_wait_seconds=settings.hour_lock_wait_seconds, holder=context.run_id, notify=context.log.info,
                )
                write_seconds = time.perf_counter() - started
            except Exception as exc:
                message = (exc.description if isinstance(exc, dg.Failure)
                           else storage.explain(exc) or storage.redact(f"{type(exc).__name__}: {exc}"))
                not_run = [partition_key(h) for h in hours[hours.index(hour) + 1:]]
                raise dg.Failure(
                    description=f"merged_ids {key} failed: {message}",
                    metadata={
                        "exported_hours": dg.MetadataValue.json(done),
                        "not_attempted": dg.MetadataValue.json(not_run),
                    },
                ) from None
            link = Link(state_md5, carried.md5)
            carried = Carried(state, layout.state(hour), state_md5)
            done.append(key)
            later = hour + timedelta(hours=1)
            stale_from = None
            # The hour after the step (already exported) must start from the state just written:
            # a re-export that changed it, or a first export before an existing history, breaks the chain.
            following = read_link(client, layout, later) if hour == hours[-1] else None
            problem = link_problem(later, following, link) if following else None
            if problem:
                stale_from = partition_key(later)
                context.log.warning(
                    f"merged_ids {key}: merged_ids from {stale_from} on is stale now: {problem}, to the latest "
                    "exported hour (hourly_export_sensor does this within its catch-up window)."
                )
                context.log_event(dg.AssetObservation(
                    asset_key=MERGED_IDS, partition=stale_from,
                    metadata={"chain": f"stale since merged_ids {key} was exported: {problem}"},
                ))
            metadata: dict[str, Any] = {
                "dagster/row_count": rows.height,
                "dagster/column_schema": COLUMN_SCHEMA,
                "compressed_bytes": sum(p.bytes for p in manifest.parts),
                "marker": f"{settings.merged_ids_container}/{layout.marker(hour)}",
                "identity_rows": identities.height,
                "state": f"{settings.merged_ids_container}/{layout.state(hour)}",
                "state_bytes": len(state_bytes),
                **{f"state_{kind}": size for kind, size in state.sizes().items()},
                "read_seconds": dg.MetadataValue.float(round(read_seconds, 3)),
                "derive_seconds": dg.MetadataValue.float(round(derive_seconds, 3)),
                "write_seconds": dg.MetadataValue.float(round(write_seconds, 3)),
            }
            if rows.height:
                metadata["file"] = f"{settings.merged_ids_container}/{layout.file(hour)}"
            if "identity_history_starts" in extra:
                metadata["identity_history_starts"] = extra["identity_history_starts"]
            metadata["state_md5"] = state_md5
            metadata["previous_state_md5"] = link.previous or NO_STATE
            metadata["chain"] = (
                "the identity history starts here" if link.previous is None
                else f"starts from the state {partition_key(hour - timedelta(hours=1))} left"
            )
            if stale_from:
                metadata["later_hours_stale_from"] = stale_from
            context.add_asset_metadata(metadata, partition_key=key)
            context.log.info(
                f"merged_ids {key}: {rows.height} merge(s) from {identities.height} identity rows"
                + (" (identity history starts here)" if "identity_history_starts" in extra else "")
            )
        return dg.MaterializeResult()

    return merged_ids
