"""Writing an hour to the container: parts, stale parts, rejects and the marker, in order.

Exporting an hour runs in this order, so an hour that has a marker is always complete:
  1. delete the hour's marker, if there is one;
  2. write and commit the parts (gzip JSON lines), each with its Content-MD5;
  3. delete stale parts (a higher `n` left by an earlier export);
  4. write the new marker, whose body is the JSON manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

import polars as pl
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient, ContentSettings
from isal import igzip

from amplitude_assets import __version__
from amplitude_assets.destination.layout import EventsLayout
from amplitude_assets.schema import EVENT_FIELDS, EVENT_KINDS, TIMESTAMP_FORMAT, Kind, event_schema
from amplitude_assets.transform import (
    IDENTITY_COLUMNS,
    Counts,
    HourResult,
    normalize,
    parse,
    read_lines,
    reject_outside_hour,
)

GZIP_LEVEL = 2  # isal igzip: level 2 compresses about as well as zlib 6, ten times faster
GZIP_CONTENT = ContentSettings(content_type="application/gzip")
JSON_CONTENT = ContentSettings(content_type="application/json")
PARQUET_CONTENT = ContentSettings(content_type="application/vnd.apache.parquet")
MANIFEST_VERSION = 1
SOFTWARE = f"amplitude_assets {__version__}"


# -- encoding ---------------------------------------------------------------------------


def _json_scalar(expr: pl.Expr) -> pl.Expr:
    """A column's values as JSON literals (`"text"`, `12`, `1.5`, `true`, `null`)."""
    return pl.struct(expr.alias("v")).struct.json_encode().str.slice(5).str.head(-1)


def json_fragment(name: str, kind: Kind | None) -> pl.Expr:
    """The JSON text of field `name`; `kind` None means an extra field already held as JSON."""
    col = pl.col(name)
    if kind is None:
        return col.fill_null("null")
    if kind is Kind.DICT:
        return col.fill_null("{}")
    if kind is Kind.TIMESTAMP:
        return pl.concat_str(pl.lit('"'), col.dt.strftime(TIMESTAMP_FORMAT), pl.lit('"')).fill_null("null")
    return _json_scalar(col)


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


def jsonl_bytes(lines: pl.DataFrame) -> bytes:
    """UTF-8 JSON lines, each ending in a newline."""
    if lines.height == 0:
        return b""
    buffer = io.BytesIO()
    lines.write_csv(buffer, include_header=False, quote_style="never", line_terminator="\n")
    return buffer.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip: fixed compressor and level, mtime 0."""
    return igzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


def encode_records(frame: pl.DataFrame) -> bytes:
    """gzip JSON lines of a frame whose columns are all plain scalars (rejects, merged IDs)."""
    kinds = {name: Kind.STRING for name in frame.columns}
    return gzip_bytes(jsonl_bytes(encode_lines(frame, kinds)))


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
            "hour": self.hour.strftime("%Y-%m-%dT%H:00:00Z"),
            "source": self.source,
            "parts": [p.as_dict() for p in self.parts],
            "rows": self.rows,
            "counts": self.counts,
            **self.extra,
            "exported_at": self.exported_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "software": SOFTWARE,
        }
        return json.dumps(body, indent=1).encode()



def upload(container: ContainerClient, name: str, data: bytes, content: ContentSettings) -> PartInfo:
    """One atomic blob write with its Content-MD5 set, replacing any blob of that name."""
    digest = hashlib.md5(data).digest()
    settings = ContentSettings(
        content_type=content.content_type,
        content_md5=bytearray(digest),
    )
    container.upload_blob(
        name, data, overwrite=True, content_settings=settings, max_concurrency=4
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


def part_slices(height: int, max_rows: int) -> list[tuple[int, int]]:
    """(offset, length) of each part: at most `max_rows` rows, no empty part."""
    return [(offset, min(max_rows, height - offset)) for offset in range(0, height, max_rows)]


def write_events_hour(
    container: ContainerClient,
    layout: EventsLayout,
    result: HourResult,
    *,
    source: str,
    max_rows_per_file: int,
) -> Manifest:
    """Export one hour in the four-step order; returns the manifest written in the marker."""
    hour = result.hour
    delete_if_exists(container, layout.marker(hour))

    slices = part_slices(result.frame.height, max_rows_per_file)

    def write_part(n: int, offset: int, length: int) -> PartInfo:
        lines = encode_lines(result.frame.slice(offset, length))
        info = upload(container, layout.part(hour, n), gzip_bytes(jsonl_bytes(lines)), GZIP_CONTENT)
        return PartInfo(name=info.name, rows=length, bytes=info.bytes, md5=info.md5)

    # Parts are independent: encode, compress and upload them concurrently (polars and
    # igzip release the GIL); keep them in part order in the manifest.
    with ThreadPoolExecutor(max_workers=2) as pool:
        parts = list(pool.map(lambda args: write_part(*args), [(n, o, ln) for n, (o, ln) in enumerate(slices)]))

    return finish_hour(container, layout, hour, parts, result.rejects, result.identities, result.counts, source)


def finish_hour(
    container: ContainerClient,
    layout: EventsLayout,
    hour: datetime,
    parts: list[PartInfo],
    rejects: pl.DataFrame,
    identities: pl.DataFrame,
    counts: Counts,
    source: str,
) -> Manifest:
    """Steps 3 and 4, once the parts are committed: stale parts, rejects, identities, marker."""
    delete_stale_parts(container, layout, hour, keep=len(parts))
    if rejects.height:
        upload(container, layout.rejected(hour), encode_records(rejects), GZIP_CONTENT)
    else:
        delete_if_exists(container, layout.rejected(hour))
    upload(container, layout.identities(hour), parquet_bytes(identities), PARQUET_CONTENT)
    manifest = Manifest(hour=hour, source=source, parts=parts, counts=counts.as_dict())
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
# reads it in chunks (CHUNK_LINES lines or CHUNK_BYTES, whichever comes first) and shapes
# each chunk with the same transform functions `process_hour` uses. Each chunk's 49
# fields are serialized right away and spilled with its extra fields (as JSON text) to a
# temporary Arrow IPC file. Reading the next chunk, parsing this one and spilling the one
# before run side by side. What needs the whole hour comes after the last chunk, from
# small columns only: the dedup mask (first row in source order wins, so it is one pass
# over the hour's keys) and the hour's extra keys. The parts are then assembled from the
# spill; one compresses while the next is assembled, and uploads run two at a time. The
# bytes are the same as `write_events_hour` writes for `process_hour` of the same input:
# same rows, order, split, keys and compressor.

CHUNK_LINES = 250_000
CHUNK_BYTES = 96 << 20  # a chunk ends at whichever limit comes first
_KEY_COLUMNS = ("uuid", "$insert_id", "device_id")


def _event_prefix() -> pl.Expr:
    """`{"server_received_time":...,"client_event_time":...` (the 49 fields, no closing brace).

    The same text `encode_lines` gives them, faster: the scalar fields between two dict
    fields are encoded as one struct (one JSON encoder call, not one per field), and
    only the dict fields, already JSON text, are spliced in between.
    """
    parts: list[pl.Expr] = []
    run: list[pl.Expr] = []

    def close_run() -> None:
        if run:
            parts.append(pl.struct(run).struct.json_encode().str.slice(1).str.head(-1))
            run.clear()

    for name, kind in EVENT_FIELDS:
        if kind is Kind.DICT:
            close_run()
            parts.append(pl.concat_str(pl.lit(json.dumps(name, ensure_ascii=False) + ":"), json_fragment(name, kind)))
        else:
            value = pl.col(name).dt.strftime(TIMESTAMP_FORMAT) if kind is Kind.TIMESTAMP else pl.col(name)
            run.append(value.alias(name))
    close_run()
    pieces: list[pl.Expr] = [pl.lit("{")]
    for i, part in enumerate(parts):
        pieces.extend([pl.lit(","), part] if i else [part])
    return pl.concat_str(pieces)


def _line_chunks(chunks: Iterable[bytes], lines_per_chunk: int, max_bytes: int = CHUNK_BYTES) -> Iterator[list[bytes]]:
    """Group line-aligned source chunks into batches of about `lines_per_chunk` lines.

    A batch is a list, not one joined bytes object: `read_lines` takes the pieces as they
    are, which saves copying the hour once more.
    """
    pending: list[bytes] = []
    count = size = 0
    for chunk in chunks:
        if not chunk:
            continue
        pending.append(chunk)
        count += chunk.count(b"\n")
        size += len(chunk)
        if count >= lines_per_chunk or size >= max_bytes:
            yield pending
            pending, count, size = [], 0, 0
    if pending:
        yield pending


def _prefetch(items: Iterator, depth: int = 1) -> Iterator:
    """Produce the next items in a background thread while the caller works on this one.

    If the caller stops early (an error in the hour), the producer is told to stop and
    its queue drained, so no thread is left holding a chunk or the source's download.
    """
    done = object()
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    failure: list[BaseException] = []

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    break
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)
        finally:
            put(done)
            close = getattr(items, "close", None)
            if stop.is_set() and close is not None:
                close()

    thread = threading.Thread(target=produce, name="amplitude-source", daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not done:
            yield item
    finally:
        stop.set()
        while True:
            try:
                buffer.get_nowait()
            except queue.Empty:
                break
        thread.join(timeout=30)
    if failure:
        raise failure[0]


@dataclass
class _Spilled:
    path: str
    rows: int
    extras: dict[str, str]  # extra key -> its column in the spill file


class _Timer:
    def __init__(self, timings: dict | None):
        self.timings = timings if timings is not None else {}
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - started


def unique_mask(keys: pl.DataFrame) -> pl.Series:
    """`transform.dedup` as a mask over the hour's rows: first by uuid, then by ($insert_id, device_id)."""
    first = keys.select(pl.col("uuid").is_null() | pl.col("uuid").is_first_distinct()).to_series()
    both = pl.col("$insert_id").is_not_null() & pl.col("device_id").is_not_null()
    pair = pl.struct("$insert_id", "device_id")
    kept = keys.with_row_index("_row").filter(first).filter(~both | pair.is_first_distinct().over(both))["_row"]
    return pl.zeros(keys.height, dtype=pl.Boolean, eager=True).scatter(kept, True).rename("unique")


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
) -> tuple[Manifest, HourResult]:
    """Shape and export one hour from its source chunks, in bounded memory.

    Same blobs, bytes and order of steps as `write_events_hour(process_hour(chunks))`.
    Returns the manifest and the hour's result; its `frame` is empty (the rows went to
    the parts) but has the exported columns.
    """
    timer = _Timer(timings)
    with tempfile.TemporaryDirectory(prefix="amplitude-hour-") as spill_dir:
        spilled, rejects, order, present, source_rows, repaired = _shape_and_spill(
            chunks, hour, keep, spill_dir, lines_per_chunk, timer
        )
        extras = [k for k in order if k in present]
        with timer("dedup"):
            keys = pl.concat([pl.read_ipc(s.path, columns=[*_KEY_COLUMNS, "_keep"]) for s in spilled]) if spilled \
                else pl.DataFrame(schema={**{k: pl.String for k in _KEY_COLUMNS}, "_keep": pl.Boolean})
            unique = unique_mask(keys.select(_KEY_COLUMNS))
            exported = unique & keys["_keep"]
            del keys
            identities = (
                pl.concat([pl.read_ipc(s.path, columns=list(IDENTITY_COLUMNS)) for s in spilled]).filter(unique)
                if spilled else pl.DataFrame(schema={c: event_schema()[c] for c in IDENTITY_COLUMNS})
            )
        counts = Counts(
            source_rows=source_rows,
            exported=int(exported.sum()),
            duplicates=len(unique) - int(unique.sum()),
            filtered=int(unique.sum()) - int(exported.sum()),
            rejected=rejects.height,
            repaired=repaired,
        )

        delete_if_exists(container, layout.marker(hour))
        parts = _write_parts(container, layout, hour, spilled, exported, extras, max_rows_per_file, timer)

    manifest = finish_hour(container, layout, hour, parts, rejects, identities, counts, source)
    columns = {**event_schema(), **{k: pl.String for k in extras}}
    result = HourResult(hour=hour, frame=pl.DataFrame(schema=columns), rejects=rejects, identities=identities, counts=counts)
    return manifest, result


def _shape_and_spill(chunks, hour, keep, spill_dir, lines_per_chunk, timer):
    """Shape every chunk and spill it; returns what the whole hour needs afterwards.

    Three chunks are in flight: the next one is read (and decompressed) in the
    background, this one is parsed, and the one before is normalized, serialized and
    spilled in a second thread, in order.
    """
    spilled: list[_Spilled] = []
    reject_frames: list[pl.DataFrame] = []
    order: dict[str, None] = {}  # extra keys of parsed lines, in order of first appearance
    present: set[str] = set()  # extra keys that some in-hour row carries
    repaired = [0]
    source_rows = 0
    prefix = _event_prefix()

    def finish(index: int, offset: int, parsed: pl.DataFrame, unparseable: pl.DataFrame, chunk_extras: list[str]) -> None:
        with timer("normalize"):
            in_hour, outside = reject_outside_hour(parsed, hour)
            del parsed
            reject_frames.append(pl.concat([unparseable, outside]).with_columns(pl.col("_pos") + offset))
            carried = [k for k in chunk_extras if in_hour[k].is_not_null().any()]
            present.update(carried)
            normalized, chunk_repaired = normalize(in_hour, carried)
            repaired[0] += chunk_repaired
            del in_hour
            if keep is not None:
                missing = [c for c in keep.meta.root_names() if c not in normalized.columns]
                # with_columns, not select: a condition on an extra field this chunk lacks
                # is a scalar, which must broadcast to every row.
                kept = normalized.with_columns(pl.lit(None, pl.String).alias(c) for c in missing).with_columns(
                    keep.fill_null(False).alias("_keep")
                )["_keep"]
            else:
                kept = pl.repeat(True, normalized.height, dtype=pl.Boolean, eager=True).alias("_keep")
        with timer("serialize"):
            names = {k: f"x{i}" for i, k in enumerate(carried)}
            spill = normalized.select(
                prefix.alias("_prefix"),
                *[pl.col(k).alias(names[k]) for k in carried],
                *_KEY_COLUMNS,
                *[c for c in IDENTITY_COLUMNS if c not in _KEY_COLUMNS],
            ).with_columns(kept)
            del normalized
            path = os.path.join(spill_dir, f"{index}.arrow")
            spill.write_ipc(path, compression="lz4")  # lz4: less to write and read than it costs
            spilled.append(_Spilled(path=path, rows=spill.height, extras=names))

    raw = _line_chunks(chunks, lines_per_chunk)
    with ThreadPoolExecutor(max_workers=1) as shaper:
        pending: Future | None = None
        for index, chunk in enumerate(_prefetch(raw)):
            with timer("parse"):
                lines = read_lines(chunk)
                del chunk
                parsed, unparseable, chunk_extras = parse(lines)
            offset = source_rows
            source_rows += len(lines)
            del lines
            order.update(dict.fromkeys(chunk_extras))
            if pending is not None:
                pending.result()
            pending = shaper.submit(finish, index, offset, parsed, unparseable, chunk_extras)
            del parsed, unparseable
        if pending is not None:
            pending.result()
    rejects = (
        pl.concat(reject_frames).sort("_pos").drop("_pos") if reject_frames
        else pl.DataFrame(schema={"reason": pl.String, "line": pl.String})
    )
    return spilled, rejects, order, present, source_rows, repaired[0]


def _write_parts(container, layout, hour, spilled, exported, extras, max_rows, timer) -> list[PartInfo]:
    """Assemble the parts from the spill in order; compress and upload them concurrently."""

    def lines_of(s: _Spilled, mask: pl.Series) -> pl.DataFrame:
        frame = pl.read_ipc(s.path, columns=["_prefix", *s.extras.values()]).filter(mask)
        pieces: list[pl.Expr] = [pl.col("_prefix")]
        for key in extras:
            pieces.append(pl.lit("," + json.dumps(key, ensure_ascii=False) + ":"))
            pieces.append(pl.col(s.extras[key]).fill_null("null") if key in s.extras else pl.lit("null"))
        pieces.append(pl.lit("}"))
        return frame.select(pl.concat_str(pieces).alias("line"))

    def send(n: int, rows: int, data: bytes) -> PartInfo:
        with timer("upload"):
            info = upload(container, layout.part(hour, n), data, GZIP_CONTENT)
        return PartInfo(name=info.name, rows=rows, bytes=info.bytes, md5=info.md5)

    def compress(n: int, rows: int, text: io.BytesIO) -> Future:
        with timer("compress"):
            with text.getbuffer() as view:
                data = gzip_bytes(view)
        text.close()
        return uploads.submit(send, n, rows, data)

    # One part compresses while the next is assembled (a part's text is held whole, since
    # the gzip stream must be the one-shot compressor's); uploads hold only gzip bytes.
    sent: list[Future] = []
    with ThreadPoolExecutor(max_workers=1) as compressor, ThreadPoolExecutor(max_workers=2) as uploads:
        compressing: Future | None = None
        number = 0

        def submit(rows: int, text: io.BytesIO) -> None:
            nonlocal compressing, number
            if compressing is not None:
                sent.append(compressing.result())
            compressing = compressor.submit(compress, number, rows, text)
            number += 1

        text, rows, offset = io.BytesIO(), 0, 0
        for s in spilled:
            mask = exported.slice(offset, s.rows)
            offset += s.rows
            if not mask.any():
                continue
            with timer("serialize"):
                lines = lines_of(s, mask)
            start = 0
            while start < lines.height:
                take = min(max_rows - rows, lines.height - start)
                with timer("serialize"):
                    lines.slice(start, take).write_csv(
                        text, include_header=False, quote_style="never", line_terminator="\n"
                    )
                rows += take
                start += take
                if rows == max_rows:
                    submit(rows, text)
                    text, rows = io.BytesIO(), 0
            del lines
        if rows:
            submit(rows, text)
        if compressing is not None:
            sent.append(compressing.result())
        return [f.result() for f in sent]
