"""Writing an hour to the container: parts, stale parts, rejects, repairs and the marker, in order.

Exporting an hour runs in this order, so an hour that has a marker is always complete:
  1. delete the hour's marker, if there is one;
  2. write and commit the parts (gzip JSON lines), each with its Content-MD5;
  3. delete stale parts (a higher `n` left by an earlier export);
  4. write the new marker, whose body is the JSON manifest.
`export_events_hour` does all of it under the hour's lease (`lease.py`): one writer per hour.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import io
import json
import os
import secrets
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO

import polars as pl
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobBlock, ContainerClient, ContentSettings
from isal import igzip, isal_zlib

from amplitude_assets import __version__
from amplitude_assets.destination.lease import HourLease, hour_lease
from amplitude_assets.layout import EventsLayout
from amplitude_assets.line_form import event_lines, json_fragment, with_keys
from amplitude_assets.lines import line_chunks
from amplitude_assets.partitions import manifest_hour, partition_key
from amplitude_assets.schema import EVENT_KINDS, Kind, event_schema
from amplitude_assets.settings import Settings
from amplitude_assets.shaping import CHUNK_LINES, ShapedHour, Timer
from amplitude_assets.validation import Validation, check
from amplitude_assets.transform import (
    CANON,
    IDENTITY_COLUMNS,
    NOT_UTF8,
    Counts,
    HourResult,
    read_lines,
)

GZIP_LEVEL = 2  # isal igzip: level 2 compresses about as well as zlib 6, ten times faster
GZIP_CONTENT = ContentSettings(content_type="application/gzip")
JSON_CONTENT = ContentSettings(content_type="application/json")
PARQUET_CONTENT = ContentSettings(content_type="application/vnd.apache.parquet")
MANIFEST_VERSION = 1
SOFTWARE = f"amplitude_assets {__version__}"


# -- encoding ---------------------------------------------------------------------------


def encode_lines(frame: pl.DataFrame, kinds: dict[str, Kind | None] | None = None) -> pl.DataFrame:
    """One JSON object per row, keys in the frame's column order, as a `line` column."""
    kinds = EVENT_KINDS if kinds is None else kinds
    pieces: list[pl.Expr] = []
    for i, name in enumerate(frame.columns):
        key = json.dumps(name, ensure_ascii=False)
        pieces.append(pl.lit(("{" if i == 0 else ",") + key + ":"))
        pieces.append(json_fragment(name, kinds.get(name)))
    pieces.append(pl.lit("}"))
    return frame.select(pl.concat_str(pieces).alias("line"))


def write_jsonl(lines: pl.DataFrame, buffer: io.BytesIO) -> None:
    """Append a `line` column to `buffer` as UTF-8 lines, each ending in a newline."""
    lines.write_csv(buffer, include_header=False, quote_style="never", line_terminator="\n")


def jsonl_bytes(lines: pl.DataFrame) -> bytes:
    """UTF-8 JSON lines, each ending in a newline."""
    if lines.height == 0:
        return b""
    buffer = io.BytesIO()
    write_jsonl(lines, buffer)
    return buffer.getvalue()


GZIP_PIECE = 4 << 20  # the compressor always takes its input in pieces of this size


class Gzipper:
    """Deterministic streaming gzip into a binary file: fixed compressor and level, mtime 0.

    Whatever sizes the text arrives in, the compressor is fed the same pieces
    (GZIP_PIECE bytes, then the rest), so the same text always gives the same bytes,
    whether it was written at once or a chunk at a time. The MD5 and size of the
    compressed bytes are kept as they are written.
    """

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)  # 31: a gzip header, mtime 0
        self.pending = bytearray()
        self.md5 = hashlib.md5()
        self.size = 0

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        if self.pending:
            take = min(GZIP_PIECE - len(self.pending), len(view))
            self.pending += view[:take]
            view = view[take:]
            if len(self.pending) < GZIP_PIECE:
                return
            self._emit(self.compressor.compress(self.pending))
            self.pending = bytearray()
        whole = len(view) - len(view) % GZIP_PIECE
        for start in range(0, whole, GZIP_PIECE):
            self._emit(self.compressor.compress(view[start : start + GZIP_PIECE]))
        self.pending += view[whole:]

    def close(self) -> None:
        if self.pending:
            self._emit(self.compressor.compress(self.pending))
            self.pending = bytearray()
        self._emit(self.compressor.flush())

    def _emit(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.md5.update(data)
            self.size += len(data)


def gzip_bytes(data) -> bytes:
    """Deterministic gzip of `data` (the same bytes `Gzipper` gives for the same text)."""
    out = io.BytesIO()
    gz = Gzipper(out)
    gz.write(data)
    gz.close()
    return out.getvalue()


def encode_records(frame: pl.DataFrame) -> bytes:
    """gzip JSON lines of a frame whose columns are all plain scalars (rejects, merged IDs)."""
    kinds = {name: Kind.STRING for name in frame.columns}
    return gzip_bytes(jsonl_bytes(encode_lines(frame, kinds)))


def encode_rejects(rejects: pl.DataFrame) -> bytes:
    """`{"reason", "line"}` per rejected line; a line that is not UTF-8 is kept as the
    base64 of its exact bytes: `{"reason", "line_base64", "encoding": "base64"}`."""
    binary = rejects["line"].str.starts_with(NOT_UTF8)
    if not binary.any():
        return encode_records(rejects)
    plain = encode_lines(rejects, {"reason": Kind.STRING, "line": Kind.STRING})["line"]
    kept = encode_lines(
        rejects.select("reason", pl.col("line").str.slice(len(NOT_UTF8)).alias("line_base64"), pl.lit("base64").alias("encoding")),
        {"reason": Kind.STRING, "line_base64": Kind.STRING, "encoding": Kind.STRING},
    )["line"]
    lines = pl.DataFrame({"line": plain.zip_with(~binary, kept)})
    return gzip_bytes(jsonl_bytes(lines))


def encode_repairs(repairs: pl.DataFrame) -> bytes:
    """`{"uuid", "$insert_id", "field", "value"}` per repair; `value` is the JSON as sent."""
    kinds = {"uuid": Kind.STRING, "$insert_id": Kind.STRING, "field": Kind.STRING, "value": None}
    return gzip_bytes(jsonl_bytes(encode_lines(repairs, kinds)))


# -- blobs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartInfo:
    name: str  # the blob's file name, without its folder
    rows: int
    bytes: int
    md5: str  # hex

    def as_dict(self) -> dict:
        return {"name": self.name, "rows": self.rows, "bytes": self.bytes, "md5": self.md5}


@dataclass
class Manifest:
    hour: datetime
    source: str
    parts: list[PartInfo]
    counts: dict[str, int]
    exported_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    extra: dict = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    def to_json(self) -> bytes:
        body = {
            "version": MANIFEST_VERSION,
            "hour": manifest_hour(self.hour),
            "source": self.source,
            "parts": [p.as_dict() for p in self.parts],
            "rows": self.rows,
            "counts": self.counts,
            **self.extra,
            "exported_at": self.exported_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "software": SOFTWARE,
        }
        return json.dumps(body, indent=1).encode()



def upload(
    container: ContainerClient, name: str, data: bytes, content: ContentSettings, metadata: dict[str, str] | None = None
) -> PartInfo:
    """One atomic blob write with its Content-MD5 set (and optional blob metadata), replacing any blob of that name."""
    digest = hashlib.md5(data).digest()
    settings = ContentSettings(
        content_type=content.content_type,
        content_md5=bytearray(digest),
    )
    container.upload_blob(
        name, data, overwrite=True, content_settings=settings, max_concurrency=4, metadata=metadata
    )
    return PartInfo(name=name.rsplit("/", 1)[-1], rows=0, bytes=len(data), md5=digest.hex())


def delete_if_exists(container: ContainerClient, name: str) -> bool:
    try:
        container.delete_blob(name)
        return True
    except ResourceNotFoundError:
        return False


def md5_hex(content_md5: bytes | bytearray | None) -> str | None:
    return bytes(content_md5).hex() if content_md5 else None


def finish_hour(
    container: ContainerClient,
    layout: EventsLayout,
    hour: datetime,
    parts: list[PartInfo],
    rejects: pl.DataFrame,
    identities: bytes,
    counts: Counts,
    source: str,
    repairs: pl.DataFrame | None = None,
    lease: HourLease | None = None,
    validated: dict | None = None,
) -> Manifest:
    """Steps 3 and 4, once the parts are committed: stale parts, rejects, repairs, identities, marker.

    Under `lease`, the marker is written only once the lease is confirmed still held.
    """
    delete_stale_parts(container, layout, hour, keep=len(parts))
    if rejects.height:
        upload(container, layout.rejected(hour), encode_rejects(rejects), GZIP_CONTENT)
    else:
        delete_if_exists(container, layout.rejected(hour))
    if repairs is not None and repairs.height:
        upload(container, layout.repaired(hour), encode_repairs(repairs), GZIP_CONTENT)
    else:
        delete_if_exists(container, layout.repaired(hour))
    upload(container, layout.identities(hour), identities, PARQUET_CONTENT)  # Parquet, for merged_ids
    manifest = Manifest(hour=hour, source=source, parts=parts, counts=counts.as_dict(),
                        extra={"validated": validated} if validated is not None else {})
    if lease is not None:
        lease.confirm()
    upload(container, layout.marker(hour), manifest.to_json(), JSON_CONTENT)
    return manifest


def delete_stale_parts(container: ContainerClient, layout: EventsLayout, hour: datetime, keep: int) -> list[str]:
    """Delete parts numbered `keep` and above (one by one; batch delete is not portable)."""
    stale = []
    for blob in container.list_blobs(name_starts_with=layout.parts_prefix(hour)):
        n = layout.part_number(blob.name, hour)
        if n is not None and n >= keep:
            delete_if_exists(container, blob.name)
            stale.append(blob.name)
    return stale


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd", statistics=False)
    return buffer.getvalue()


def read_marker(container: ContainerClient, name: str) -> dict | None:
    try:
        return json.loads(container.download_blob(name).readall())
    except ResourceNotFoundError:
        return None


def existing_markers(container: ContainerClient, prefix: str, names: Sequence[str]) -> set[str]:
    """Which of `names` exist, from one listing under `prefix`."""
    wanted = set(names)
    return {b.name for b in container.list_blobs(name_starts_with=prefix) if b.name in wanted}


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

BLOCK_BYTES = 32 << 20  # staged block size


@dataclass
class _Part:
    """A part being written: its text is compressed as it comes, into a file (the part's copy)."""

    number: int
    path: str  # the compressed part, kept until the commit (a rebuild reads it back)
    rows: int = 0
    segments: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)  # (rows, extra keys written)
    file: IO[bytes] | None = None
    gz: Gzipper | None = None
    info: PartInfo | None = None
    blocks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.file = open(self.path, "wb")
        self.gz = Gzipper(self.file)

    def note(self, rows: int, keys: tuple[str, ...]) -> None:
        """Count `rows` more lines, written with extra keys `keys`."""
        if self.segments and self.segments[-1][1] == keys:
            self.segments[-1] = (self.segments[-1][0] + rows, keys)
        else:
            self.segments.append((rows, keys))
        self.rows += rows

    def finish(self, name: str) -> None:
        self.gz.close()
        self.file.close()
        self.info = PartInfo(name=name.rsplit("/", 1)[-1], rows=self.rows, bytes=self.gz.size, md5=self.gz.md5.hexdigest())


def _stage(container: ContainerClient, name: str, path: str, size: int, tag: str, pool: ThreadPoolExecutor) -> list[str]:
    """Stage the file at `path` as blocks of `name` (uncommitted: the blob does not change yet).

    Each block is read from the file when its upload starts, so only the blocks being
    sent are in memory.
    """
    blob = container.get_blob_client(name)

    def stage(block_id: str, offset: int) -> None:
        with open(path, "rb") as copy:
            copy.seek(offset)
            # validate_content: the block's MD5 goes with it, and Azure refuses a block that
            # did not arrive as sent.
            blob.stage_block(block_id, copy.read(BLOCK_BYTES), validate_content=True)

    ids = [base64.b64encode(f"{tag}-{i:06d}".encode()).decode() for i in range(max(1, -(-size // BLOCK_BYTES)))]
    for future in [pool.submit(stage, block_id, i * BLOCK_BYTES) for i, block_id in enumerate(ids)]:
        future.result()
    return ids


def _commit(container: ContainerClient, name: str, part: _Part) -> None:
    """Make the staged blocks the blob, with its Content-MD5 and type, in one commit."""
    settings = ContentSettings(content_type=GZIP_CONTENT.content_type, content_md5=bytearray(bytes.fromhex(part.info.md5)))
    container.get_blob_client(name).commit_block_list([BlobBlock(block_id=i) for i in part.blocks], content_settings=settings)


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
) -> tuple[Manifest, HourResult]:
    """Shape and export one hour from its source chunks, in bounded memory: `write_events_hour`
    of the hour's `ShapedHour`."""
    shaped = ShapedHour(chunks, hour, keep=keep, lines_per_chunk=lines_per_chunk, timings=timings)
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
    hour, timer = shaped.hour, shaped.timer
    # Block IDs of this export alone: another export of the same hour at the same time
    # stages its own blocks, and each commit takes only its own.
    run = secrets.token_hex(6)
    parts: list[_Part] = []
    validated = Validation()

    with tempfile.TemporaryDirectory(prefix="amplitude-hour-") as workdir, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="amplitude-compress") as compressor, \
            ThreadPoolExecutor(max_workers=4, thread_name_prefix="amplitude-upload") as uploads:

        def seal(part: _Part, tag: str) -> None:
            """Finish a full part's compression and stage its blocks."""
            name = layout.part(hour, part.number)
            with timer("compress"):
                part.finish(name)
            with timer("upload"):
                part.blocks = _stage(container, name, part.path, part.info.bytes, tag, uploads)

        def compress(part: _Part, data: bytes) -> None:
            with timer("compress"):
                part.gz.write(data)

        # The compressor thread takes the parts' text and seals full parts, in order; this
        # thread waits only when two pieces of work are already queued for it.
        queued: collections.deque[Future] = collections.deque()

        def to_compressor(fn: Callable, *args) -> None:
            while len(queued) >= 2:
                queued.popleft().result()
            queued.append(compressor.submit(fn, *args))

        def hand_over(part: _Part) -> None:
            to_compressor(seal, part, f"{run}-{part.number:06d}-0")

        for chunk in shaped:
            with timer("serialize"):
                lines = event_lines(chunk.frame, chunk.keys).to_frame("line")
                validated.add(chunk.frame[CANON], lines, chunk.keys)
            start = 0
            while start < lines.height:
                if not parts or parts[-1].rows == max_rows_per_file:
                    parts.append(_Part(number=len(parts), path=os.path.join(workdir, f"{len(parts)}.gz")))
                part = parts[-1]
                take = min(max_rows_per_file - part.rows, lines.height - start)
                with timer("serialize"):
                    data = jsonl_bytes(lines.slice(start, take))
                part.note(take, chunk.keys)
                to_compressor(compress, part, data)
                del data
                start += take
                if part.rows == max_rows_per_file:
                    hand_over(part)
            del chunk, lines
        if parts and parts[-1].rows < max_rows_per_file:
            hand_over(parts[-1])
        while queued:
            queued.popleft().result()

        extras = shaped.extras
        for part in parts:
            if any(set(keys) != set(extras) for _, keys in part.segments):
                _rebuild(part, extras, timer)
                seal(part, f"{run}-{part.number:06d}-1")

        lease.confirm()  # the hour is still ours: only now does the container change
        delete_if_exists(container, layout.marker(hour))
        with timer("upload"):
            list(uploads.map(lambda part: _commit(container, layout.part(hour, part.number), part), parts))

    manifest = finish_hour(
        container, layout, hour, [p.info for p in parts], shaped.rejects, shaped.identities, shaped.counts, source,
        shaped.repairs, lease=lease, validated=validated.record(),
    )
    columns = {**event_schema(), **{k: pl.String for k in extras}}
    result = HourResult(
        hour=hour, frame=pl.DataFrame(schema=columns), rejects=shaped.rejects,
        identities=pl.DataFrame(schema={c: event_schema()[c] for c in IDENTITY_COLUMNS}), counts=shaped.counts,
        repairs=shaped.repairs,
    )
    return manifest, result


def _rebuild(part: _Part, extras: list[str], timer: Timer) -> None:
    """Rewrite a part's lines with the hour's extra keys, from its compressed copy.

    A segment written before a new key turned up lacks it at the end of each line: the
    key is added there, as null. A segment whose keys are not the start of the hour's
    (a key seen earlier only outside the hour, then inside it) has its fields read back
    (the lines are the exporter's own, so they give the same values) and is re-encoded.
    The copy is read a few megabytes at a time, so only the new text is held whole.
    """
    with timer("serialize"):
        segments = [(rows, list(keys)) for rows, keys in part.segments]
        copy_path, part.path = part.path, part.path + ".rebuilt"
        part.file = open(part.path, "wb")
        part.gz = Gzipper(part.file)
        written = 0
        with igzip.open(copy_path, "rb") as copy:
            for chunk in line_chunks(copy):
                lines = read_lines([chunk])
                start = 0
                while start < len(lines):
                    rows, keys = segments[0]
                    take = min(rows, len(lines) - start)
                    rewritten = with_keys(lines.slice(start, take), keys, extras)
                    check(rewritten["line"], extras)
                    part.gz.write(jsonl_bytes(rewritten))
                    start += take
                    written += take
                    segments[0] = (rows - take, keys)
                    if not segments[0][0]:
                        segments.pop(0)
        if written != part.rows or segments:
            raise RuntimeError(f"rebuilding part {part.number}: {written} lines where the part has {part.rows}")
        part.segments = [(part.rows, tuple(extras))]
