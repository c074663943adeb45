"""Writing an hour to the container: parts, stale parts, rejects, repairs and the marker, in order.

Exporting an hour runs in this order, so an hour that has a marker is always complete:
  1. delete the hour's marker, if there is one;
  2. write and commit the parts (gzip JSON lines), each with its Content-MD5;
  3. delete stale parts (a higher `n` left by an earlier export);
  4. write the new marker, whose body is the JSON manifest.
`export_events_hour` does all of it under the hour's lease (`lease.py`): one writer per hour.

This module is the entry; the steps live beside it, one job a module: `encoding.py` (JSON
lines), `compress.py` (deterministic gzip), `blobs.py` (uploads and deletes),
`manifest.py` (the marker's body, reading markers), `parts.py` (a part as it is written,
and its rebuild), `staging.py` (parts staged as blocks, then committed), `finish.py`
(steps 3 and 4). The names other modules import from here stay importable from here.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import polars as pl
from azure.storage.blob import ContainerClient

from amplitude_assets.destination.blobs import delete_if_exists
from amplitude_assets.destination.finish import finish_hour
from amplitude_assets.destination.lease import HourLease, hour_lease
from amplitude_assets.destination.manifest import Manifest
from amplitude_assets.destination.staging import HourUpload

# Importable from here as before the writer was split: the tests and the bench use these.
from amplitude_assets.destination.compress import GZIP_LEVEL, Gzipper, gzip_bytes  # noqa: F401, E402
from amplitude_assets.destination.encoding import (  # noqa: F401, E402
    encode_lines,
    encode_records,
    jsonl_bytes,
    parquet_bytes,
    write_jsonl,
)
from amplitude_assets.destination.manifest import existing_markers, read_marker  # noqa: F401, E402
from amplitude_assets.layout import EventsLayout
from amplitude_assets.line_form import event_lines
from amplitude_assets.partitions import partition_key
from amplitude_assets.schema import event_schema
from amplitude_assets.settings import Settings
from amplitude_assets.shaping import CHUNK_LINES, HourSummary, ShapedHour
from amplitude_assets.transform import CANON, ENCODED, IDENTITY_COLUMNS, HourResult
from amplitude_assets.validation import Validation

# -- streaming export: big hours in bounded memory ------------------------------------------
#
# An hour of millions of events does not fit in memory as one frame. `export_events_hour`
# is shaped in chunks by `shaping.ShapedHour` (the `events` asset's output), and this
# module serializes the chunks as they come: reading the next chunk, parsing it, shaping
# this one and serializing the one before run side by side.
#
# Nothing is spilled. A line's extra keys are those of
# the whole hour, which are known only at its end; each chunk is written with the keys
# known so far, which is the whole hour's list in the usual case. Parts are compressed
# and their blocks staged as they fill, while later chunks are parsed; a copy of each
# compressed part stays in a temporary file. After the last chunk, a part written with
# too few extra keys is rebuilt from that copy. Only then are the parts committed: a
# staged block changes nothing, so until the commit the container is as it was, and an
# hour that fails midway leaves an earlier export of it whole.
#
# The bytes are the same as the whole hour shaped at once (the tests' `process_hour`), encoded
# (`encode_lines`), cut every `max_rows_per_file` rows and compressed (`gzip_bytes`): same
# rows, order, split, keys and compressor. That whole-hour path lives only in the tests, as
# the reference they compare this one with (tests/test_fast_path.py).


def export_events_hour(
    container: ContainerClient,
    layout: EventsLayout,
    chunks: Iterable[bytes],
    hour: datetime,
    *,
    keep: pl.Expr | None,
    source: str,
    max_rows_per_file: int,
    lines_per_chunk: int = CHUNK_LINES,
    timings: dict | None = None,
    lock_wait_seconds: float = Settings.hour_lock_wait_seconds,
    holder: str | None = None,
    notify: Callable[[str], None] | None = None,
    in_form: bool = True,
) -> tuple[Manifest, HourResult]:
    """Shape and export one hour from its source chunks, in bounded memory: `write_events_hour`
    of the hour's `ShapedHour`. Without `in_form`, every line is parsed in full (the same
    bytes, more slowly: `transform.in_form`)."""
    shaped = ShapedHour(chunks, hour, keep=keep, lines_per_chunk=lines_per_chunk, timings=timings, in_form=in_form)
    return write_events_hour(container, layout, shaped, source=source, max_rows_per_file=max_rows_per_file,
                             lock_wait_seconds=lock_wait_seconds, holder=holder, notify=notify)


def write_events_hour(
    container: ContainerClient,
    layout: EventsLayout,
    shaped: ShapedHour,
    *,
    source: str,
    max_rows_per_file: int,
    lock_wait_seconds: float = Settings.hour_lock_wait_seconds,
    holder: str | None = None,
    notify: Callable[[str], None] | None = None,
) -> tuple[Manifest, HourResult]:
    """Write one shaped hour in the four-step order, and return its manifest and result.

    Same blobs, bytes and order of steps for the same input as the whole-hour reference
    (the tests' `process_hour`, encoded with `encode_lines`, split by `part_slices`).
    The result's `frame` and `identities` are empty (the rows went to the parts, the
    identities to their Parquet blob) but have their columns.

    The whole export holds the hour's lease (`lease.hour_lease` on `layout.lock(hour)`),
    taken before the source is read or any block is staged: another export of the hour
    waits up to `lock_wait_seconds` (telling `notify` that it waits), then fails with
    `HourLocked` and changes nothing.
    """
    hour = shaped.hour
    label = f"events {partition_key(hour)}"
    with hour_lease(container, layout.lock(hour), label, lock_wait_seconds, holder=holder, notify=notify) as lease:
        return _write_events_hour(container, layout, shaped, source=source, max_rows_per_file=max_rows_per_file,
                                  lease=lease)


def _write_events_hour(
    container: ContainerClient,
    layout: EventsLayout,
    shaped: ShapedHour,
    *,
    source: str,
    max_rows_per_file: int,
    lease: HourLease,
) -> tuple[Manifest, HourResult]:
    """Steps 1 to 4 under the hour's lease: parts staged as the chunks come, then the commit,
    then the rest from the hour's summary."""
    hour, timer = shaped.hour, shaped.timer
    validated = Validation()
    with tempfile.TemporaryDirectory(prefix="amplitude-hour-") as workdir, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="amplitude-compress") as compressor, \
            ThreadPoolExecutor(max_workers=4, thread_name_prefix="amplitude-upload") as uploads:
        parts = HourUpload(container, layout, hour, timer, max_rows_per_file=max_rows_per_file, workdir=workdir,
                           compressor=compressor, uploads=uploads)
        for chunk in shaped:
            with timer("serialize"):
                lines = event_lines(chunk.frame, chunk.keys).to_frame("line")
                validated.add(as_sent(chunk.frame), lines, chunk.keys)
            parts.add(lines, chunk.keys)
            del chunk, lines
        summary = shaped.summary()
        parts.seal(list(summary.extras))
        lease.confirm()  # the hour is still ours: only now does the container change
        delete_if_exists(container, layout.marker(hour))
        parts.commit()

    manifest = finish_hour(
        container, layout, hour, [p.info for p in parts.parts], summary.rejects, summary.identities, summary.counts,
        source, summary.repairs, lease=lease, validated=validated.record(),
    )
    return manifest, hour_result(hour, summary)


def as_sent(frame: pl.DataFrame) -> pl.Series:
    """Which of a shaped chunk's lines are written as they came (the others were encoded:
    here, or in the shaping, where ENCODED marks them)."""
    return frame[CANON] & ~frame[ENCODED] if ENCODED in frame.columns else frame[CANON]


def hour_result(hour: datetime, summary: HourSummary) -> HourResult:
    """The written hour's result: its counts, rejects and repairs, and an empty `frame` and
    `identities` with their columns (the rows went to the parts, the identities to Parquet)."""
    columns = {**event_schema(), **{k: pl.String for k in summary.extras}}
    return HourResult(
        hour=hour, frame=pl.DataFrame(schema=columns), rejects=summary.rejects,
        identities=pl.DataFrame(schema={c: event_schema()[c] for c in IDENTITY_COLUMNS}), counts=summary.counts,
        repairs=summary.repairs,
    )
