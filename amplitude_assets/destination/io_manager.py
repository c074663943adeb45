"""The IO managers: each hour written in Amplitude's layout, and read back as polars.

Dagster gives an IO manager one output per step, even when a run covers many hours, so
both assets return a lazy sequence of hours and their IO managers write one hour at a
time, attaching that hour's own metadata to that hour's materialization: memory is
bounded by one hour, and the UI's per-partition view shows per-hour counts.

- `events` returns an `HourStream`: each hour a `ShapedHour` whose exported rows come as
  Polars frames a chunk at a time. `EventsIOManager.handle_output` only serializes: encode,
  compress, upload the parts, stale parts, rejects, marker, under the hour's lease.
- `merged_ids` returns a `MergedIdsStream`: each hour a `MergedHour` (its merges as a
  Polars table, and the identity state it leaves), derived only once the hour before is
  written. `MergedIdsIOManager.handle_output` writes the file, the state and the marker
  under the hour's lease, and says when a new state makes the hour after the step stale.

`load_input` lets a downstream asset take `events` or `merged_ids` as an input: it reads
the hours of the downstream partition (through its partition mapping) from the container,
as typed polars frames. An hour that was never exported (no marker) fails, naming it.
"""


import io
import json
import time
from datetime import datetime, timedelta
from typing import Any

import dagster as dg
import polars as pl
from azure.core.exceptions import ResourceNotFoundError
from isal import igzip

from amplitude_assets import private_apis
from amplitude_assets.destination.credentials import AzureStorage
from amplitude_assets.destination.links import NO_STATE, Link, link_problem, read_link
from amplitude_assets.destination.merged_writer import merged_hour_extra, write_merged_ids_hour
from amplitude_assets.destination.manifest import Manifest, read_marker
from amplitude_assets.destination.writer import write_events_hour
from amplitude_assets.hour_outputs import HourStream, MergedIdsStream  # the assets' outputs, importable from here too
from amplitude_assets.identity import MergedHour
from amplitude_assets.layout import EventsLayout, MergedIdsLayout
from amplitude_assets.partitions import hours_in, partition_key, reconciles
from amplitude_assets.schema import EVENT_FIELDS, EVENT_KINDS, MERGED_ID_FIELDS, POLARS_DTYPES, TIMESTAMP_FORMAT, Kind
from amplitude_assets.transform import HourResult, extract_json

_AS_SENT_FIELDS = tuple(name for name, kind in EVENT_FIELDS if kind is Kind.ARRAY_OR_STRING)
_DICT_FIELDS = tuple(name for name, kind in EVENT_FIELDS if kind is Kind.DICT)
# The merged IDs as `load_input` gives them: scope is an int, the rest are longs.
MERGED_ID_SCHEMA = {name: pl.Int32 if name == "scope" else pl.Int64 for name in MERGED_ID_FIELDS}
MERGED_ID_COLUMNS = dg.TableSchema(
    columns=[dg.TableColumn(name, "int" if name == "scope" else "long") for name in MERGED_ID_FIELDS]
)

_TABLE_TYPES = {
    Kind.TIMESTAMP: "timestamp",
    Kind.INT: "long",
    Kind.FLOAT: "double",
    Kind.BOOL: "boolean",
    Kind.UUID: "uuid",
    Kind.STRING: "string",
    Kind.DICT: "object",
    Kind.ARRAY_OR_STRING: "json",  # an array or a string, its JSON text as sent
    Kind.NUMBER: "number",  # a JSON number, its token as sent
}


def column_schema(frame: pl.DataFrame) -> dg.TableSchema:
    columns = []
    for name in frame.columns:
        kind = EVENT_KINDS.get(name)
        columns.append(dg.TableColumn(name, _TABLE_TYPES[kind] if kind else "json"))
    return dg.TableSchema(columns=columns)


def hour_metadata(
    layout: EventsLayout, container: str, endpoint: str, result: HourResult, manifest: Manifest, timings: dict
) -> dict[str, Any]:
    hour = result.hour
    paths = [f"{container}/{layout.folder}{p.name}" for p in manifest.parts]
    counts = manifest.counts
    return {
        "dagster/row_count": manifest.rows,
        "dagster/column_schema": column_schema(result.frame),
        "parts": len(manifest.parts),
        "compressed_bytes": sum(p.bytes for p in manifest.parts),
        "blob_paths": dg.MetadataValue.json(paths),
        "marker": f"{container}/{layout.marker(hour)}",
        "endpoint": endpoint,
        **{f"count_{name}": value for name, value in counts.items()},
        "reconciled": reconciles(counts),
        # Where the hour's rejected lines and the originals of its repaired values are kept.
        **({"rejected_lines": f"{container}/{layout.rejected(hour)}"} if counts["rejected"] else {}),
        **({"repaired_values": f"{container}/{layout.repaired(hour)}"} if counts["repaired"] else {}),
        **{name: dg.MetadataValue.float(value) for name, value in timings.items()},
    }


class EventsIOManager(dg.ConfigurableIOManager):
    """Writes each hour of `events` as Amplitude-layout parts; loads hours back as polars."""

    storage: dg.ResourceDependency[AzureStorage]
    container: str = "amplitude"
    prefix: str = ""
    project_id: str = "187520"
    max_rows_per_file: int = 500_000
    hour_lock_wait_seconds: int = 600  # how long an hour waits for another export of it

    @property
    def layout(self) -> EventsLayout:
        return EventsLayout(self.prefix, self.project_id)

    def handle_output(self, context: dg.OutputContext, obj: HourStream) -> None:
        if not isinstance(obj, HourStream):
            raise dg.Failure(f"EventsIOManager expects an HourStream, got {type(obj).__name__}")
        client = self.storage.container(self.container)
        failures: list[str] = []
        landed: dict[str, dict[str, Any]] = {}
        cause = None  # what the user must fix, when an hour failed for such a reason
        for hour in obj.hours:
            key = partition_key(hour)
            try:
                started = time.perf_counter()
                manifest, result = write_events_hour(
                    client, self.layout, obj.shaped(hour), source=obj.source,
                    max_rows_per_file=self.max_rows_per_file,
                    lock_wait_seconds=self.hour_lock_wait_seconds, holder=context.run_id, notify=context.log.info,
                )
                timings = {"export_seconds": round(time.perf_counter() - started, 3)}
            except Exception as exc:  # keep going: every other hour of the range still lands
                cause = self.storage.explain(exc)
                message = cause or self.storage.redact(f"{type(exc).__name__}: {exc}")
                context.log.error(f"hour {key} failed: {message}")
                failures.append(f"{key}: {message}")
                if cause:  # a setting, credential or permission to fix: later hours would fail alike
                    break
                continue
            metadata = hour_metadata(
                self.layout, self.container, self.storage.endpoint, result, manifest, timings
            )
            # OutputContext.add_output_metadata would copy one value to every hour of a
            # range; per-partition metadata goes through the step's asset metadata (`private_apis`).
            private_apis.add_partition_metadata(context, metadata, key)
            landed[key] = metadata
            context.log.info(
                f"exported hour {key}: {manifest.rows} rows in {len(manifest.parts)} part(s) "
                f"to {self.container}/{self.layout.folder} ({result.counts.as_dict()})"
            )
        if failures:
            # Dagster records a step's materializations only when its output is handled, so
            # record the hours that did land before failing the step for the others.
            for done, metadata in landed.items():
                context.log_event(dg.AssetMaterialization(context.asset_key, partition=done, metadata=metadata))
            counted = f"{len(failures)} of {len(obj.hours)} hour(s) failed to export"
            if cause:  # the headline is what to fix; the count follows
                skipped = len(obj.hours) - len(landed) - len(failures)
                counted = f"hour {key} failed" + (f", {skipped} later hour(s) not attempted" if skipped else "")
            raise dg.Failure(
                description=f"{cause} ({counted})" if cause else counted,
                metadata={"failed_hours": dg.MetadataValue.json(failures)},
                allow_retries=not cause,
            )

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        client = self.storage.container(self.container)
        frames = [read_events_hour(client, self.layout, hour) for hour in hours_in(context.asset_partitions_time_window)]
        return pl.concat(frames, how="diagonal") if frames else pl.DataFrame()


def read_events_hour(client, layout: EventsLayout, hour: datetime) -> pl.DataFrame:
    """An exported hour as a polars frame: the 49 typed fields, then the hour's extra fields.

    Timestamps are `Datetime("us", "UTC")` (the parts hold UTC without a zone); the integer
    fields are Int64, the two floats Float64, the two booleans Boolean, `uuid` and the
    other string fields String. The five dict fields and the extra fields are their JSON
    text, exactly as exported (one event's object never takes another's keys). `sample_rate`
    comes back as a Float64 (its value; the token is in the parts), and
    `amplitude_attribution_ids` as its JSON text (an array, or a quoted string).
    """
    manifest = read_marker(client, layout.marker(hour))
    if manifest is None:
        raise dg.Failure(f"hour {partition_key(hour)} has not been exported (no {layout.marker(hour)})")
    schema = {name: pl.String for name, _ in EVENT_FIELDS}
    frames = []
    for part in manifest["parts"]:
        try:
            data = client.download_blob(layout.folder + part["name"]).readall()
        except ResourceNotFoundError:
            raise dg.Failure(f"part {layout.folder}{part['name']} listed in the marker is missing") from None
        text = igzip.decompress(data)
        frame = pl.read_ndjson(text, schema=schema)
        if frame.height:
            # Every line of an hour has the same keys: the 49 fields, then the extra ones.
            first = json.loads(text[: text.index(b"\n")], object_pairs_hook=lambda pairs: [k for k, _ in pairs])
            extras = [k for k in first if k not in schema]
            # polars gives an array as JSON text but a string unquoted: take the JSON text.
            lines = pl.read_lines(io.BytesIO(text))
            texts = extract_json(lines, [*_AS_SENT_FIELDS, *_DICT_FIELDS, *extras])
            frame = frame.with_columns(
                *(pl.when(texts[n] != "null").then(texts[n]).alias(n) for n in _AS_SENT_FIELDS),
                *(texts[n].alias(n) for n in _DICT_FIELDS),
                *(pl.when(texts[n] != "null").then(texts[n]).alias(n) for n in extras),
            )
        frames.append(frame)
    frame = pl.concat(frames, how="diagonal") if frames else pl.DataFrame(schema=schema)
    casts = []
    for name, kind in EVENT_FIELDS:
        if kind is Kind.TIMESTAMP:
            casts.append(pl.col(name).str.to_datetime(TIMESTAMP_FORMAT, time_unit="us", time_zone="UTC"))
        elif kind in (Kind.INT, Kind.FLOAT):
            casts.append(pl.col(name).cast(POLARS_DTYPES[kind]))
        elif kind is Kind.BOOL:
            casts.append(pl.col(name) == "true")
        elif kind is Kind.NUMBER:
            casts.append(pl.col(name).cast(pl.Float64))
    return frame.with_columns(casts)


def read_merged_ids_hour(client, layout: MergedIdsLayout, hour: datetime) -> pl.DataFrame:
    """An exported hour of merged IDs as a polars frame of `MERGED_ID_SCHEMA`.

    The marker says whether the hour has a file: an hour with no merges has none, and
    reads as an empty frame of the same schema.
    """
    manifest = read_marker(client, layout.marker(hour))
    if manifest is None:
        raise dg.Failure(f"merged_ids hour {partition_key(hour)} has not been exported (no {layout.marker(hour)})")
    if not manifest["parts"]:
        return pl.DataFrame(schema=MERGED_ID_SCHEMA)
    try:
        data = client.download_blob(layout.file(hour)).readall()
    except ResourceNotFoundError:
        raise dg.Failure(f"{layout.file(hour)}, listed in the marker, is missing") from None
    return pl.read_ndjson(igzip.decompress(data), schema=MERGED_ID_SCHEMA)


class MergedIdsIOManager(dg.ConfigurableIOManager):
    """Writes each hour of `merged_ids` (file, identity state, marker); loads hours back as polars."""

    storage: dg.ResourceDependency[AzureStorage]
    container: str = "amplitude"
    prefix: str = "merged_ids"
    scope: str = "187520"  # "-{org_id}", or the project id for a legacy org
    hour_lock_wait_seconds: int = 600  # how long an hour waits for another export of it

    @property
    def layout(self) -> MergedIdsLayout:
        return MergedIdsLayout(self.prefix, self.scope)

    def handle_output(self, context: dg.OutputContext, obj: MergedIdsStream) -> None:
        if not isinstance(obj, MergedIdsStream):
            raise dg.Failure(f"MergedIdsIOManager expects a MergedIdsStream, got {type(obj).__name__}")
        client = self.storage.container(self.container)
        derived = iter(obj.derived)
        landed: dict[str, dict[str, Any]] = {}
        for index, hour in enumerate(obj.hours):
            key = partition_key(hour)
            try:
                merged = next(derived)
                if merged.hour != hour:
                    raise ValueError(f"hours out of order: got {partition_key(merged.hour)}, expected {key}")
                started = time.perf_counter()
                manifest = write_merged_ids_hour(
                    client, self.layout, hour, merged.merges, merged.state, source=obj.source,
                    counts={"identity_rows": merged.identity_rows, "merges": merged.merges.height},
                    extra=merged_hour_extra(self.layout, merged),
                    lock_wait_seconds=self.hour_lock_wait_seconds, holder=context.run_id, notify=context.log.info,
                )
                write_seconds = time.perf_counter() - started
            except Exception as exc:  # every later hour needs this one's state: the step ends here
                message = (exc.description if isinstance(exc, dg.Failure)
                           else self.storage.explain(exc) or self.storage.redact(f"{type(exc).__name__}: {exc}"))
                # Dagster records a step's materializations only when its output is handled, so
                # record the hours that did land before failing the step.
                for done, metadata in landed.items():
                    context.log_event(dg.AssetMaterialization(context.asset_key, partition=done, metadata=metadata))
                raise dg.Failure(
                    description=f"merged_ids {key} failed: {message}",
                    metadata={
                        "exported_hours": dg.MetadataValue.json(list(landed)),
                        "not_attempted": dg.MetadataValue.json([partition_key(h) for h in obj.hours[index + 1:]]),
                    },
                ) from None
            stale_from = self._hour_after_made_stale(context, client, merged) if hour == obj.hours[-1] else None
            metadata = self._hour_metadata(merged, manifest, write_seconds, stale_from)
            private_apis.add_partition_metadata(context, metadata, key)
            landed[key] = metadata
            context.log.info(
                f"merged_ids {key}: {merged.merges.height} merge(s) from {merged.identity_rows} identity rows"
                + (" (identity history starts here)" if merged.history_starts else "")
            )

    def _hour_after_made_stale(self, context: dg.OutputContext, client, merged: MergedHour) -> str | None:
        """The hour after the step, when it is exported and no longer starts from the state just written.

        A re-export that changed the state, or a first export before an existing history,
        breaks the chain there; it is logged, and observed on that hour.
        """
        later = merged.hour + timedelta(hours=1)
        following = read_link(client, self.layout, later)
        link = Link(merged.state_md5, merged.started_from.md5 if merged.started_from else None)
        problem = link_problem(later, following, link) if following else None
        if not problem:
            return None
        stale_from = partition_key(later)
        context.log.warning(
            f"merged_ids {partition_key(merged.hour)}: merged_ids from {stale_from} on is stale now: {problem}, to the "
            "latest exported hour (hourly_export_sensor does this within its catch-up window)."
        )
        context.log_event(dg.AssetObservation(
            asset_key=context.asset_key, partition=stale_from,
            metadata={"chain": f"stale since merged_ids {partition_key(merged.hour)} was exported: {problem}"},
        ))
        return stale_from

    def _hour_metadata(
        self, merged: MergedHour, manifest: Manifest, write_seconds: float, stale_from: str | None
    ) -> dict[str, Any]:
        hour, layout, container = merged.hour, self.layout, self.container
        metadata: dict[str, Any] = {
            "dagster/row_count": merged.merges.height,
            "dagster/column_schema": MERGED_ID_COLUMNS,
            "compressed_bytes": sum(p.bytes for p in manifest.parts),
            "marker": f"{container}/{layout.marker(hour)}",
            "identity_rows": merged.identity_rows,
            "state": f"{container}/{layout.state(hour)}",
            "state_bytes": len(merged.state),
            **{f"state_{kind}": size for kind, size in merged.state_sizes.items()},
            **{name: dg.MetadataValue.float(round(value, 3)) for name, value in merged.timings.items()},
            "write_seconds": dg.MetadataValue.float(round(write_seconds, 3)),
        }
        if merged.merges.height:
            metadata["file"] = f"{container}/{layout.file(hour)}"
        if merged.history_starts:
            metadata["identity_history_starts"] = manifest.extra["identity_history_starts"]
        metadata["state_md5"] = merged.state_md5
        metadata["previous_state_md5"] = merged.started_from.md5 if merged.started_from else NO_STATE
        metadata["chain"] = (
            "the identity history starts here" if merged.history_starts
            else f"starts from the state {partition_key(hour - timedelta(hours=1))} left"
        )
        if stale_from:
            metadata["later_hours_stale_from"] = stale_from
        return metadata

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        client = self.storage.container(self.container)
        frames = [read_merged_ids_hour(client, self.layout, hour) for hour in hours_in(context.asset_partitions_time_window)]
        return pl.concat(frames) if frames else pl.DataFrame(schema=MERGED_ID_SCHEMA)
