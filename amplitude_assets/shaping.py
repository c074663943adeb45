"""An hour of events shaped chunk by chunk: the rows to export, as Polars frames.

`ShapedHour` is what the `events` asset produces for each hour: iterating it reads the
source's chunks, parses them (lines already in the form only for the fields the hour
needs, `transform.in_form`; the others in full with DuckDB), rejects lines that are not events of the hour,
normalizes, drops duplicates (first row wins, decided chunk by chunk by `FirstWins`) and
applies the event filter, yielding each chunk's exported rows as a Polars frame with the
hour's extra keys known so far. Memory is bounded by the chunks in flight: reading (and
decompressing) the next chunk and parsing it run in background threads while the caller
works on this one. When the iteration ends, the hour is summed up in an `HourSummary`
(`ShapedHour.summary()`): its counts, rejects, repairs, identity columns (as Parquet) and
final list of extra keys, which the writer needs for the side files and the marker.

The tests hold it to a whole-hour reference (the same stages over the whole hour at once):
the same rows, order and counts.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from amplitude_assets.first_wins import FirstWins
from amplitude_assets.line_form import canonical_rows, encode_events, event_lines
from amplitude_assets.lines import prefetch
from amplitude_assets.partitions import partition_key
from amplitude_assets.schema import DICT_FIELDS, event_schema
from amplitude_assets.transform import (
    CANON,
    ENCODED,
    EXTRA,
    KEY_SEPARATOR,
    IDENTITY_COLUMNS,
    LINE,
    NO_DICTS,
    POS,
    RESERVED,
    Counts,
    HourResult,
    no_repairs,
    normalize_with_repairs,
    parse,
    read_lines,
    reject_outside_hour,
    restore_dicts,
)
from amplitude_assets.transform.in_form import InForm, normalized_in_form, readable, split_in_form

CHUNK_LINES = 250_000
CHUNK_BYTES = 96 << 20  # a chunk ends at whichever limit comes first
PARSERS = 2  # chunks parsed side by side: the one handed on next and the one after it
KEY_COLUMNS = ("uuid", "$insert_id", "device_id")


def line_batches(chunks: Iterable[bytes], lines_per_chunk: int, max_bytes: int = CHUNK_BYTES) -> Iterator[list[bytes]]:
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


class Timer:
    """Seconds spent per stage, added up across threads."""

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


def packed(frame: pl.DataFrame) -> bytes:
    """A chunk's few kept rows, compressed, for the end of the hour.

    Held as frames, they would keep their chunk's whole text alive (a filtered string
    column still points into it).
    """
    buffer = io.BytesIO()
    frame.write_ipc(buffer, compression="zstd", compat_level=pl.CompatLevel.oldest())
    return buffer.getvalue()


def unpacked(packed: list[bytes]) -> list[pl.DataFrame]:
    return [pl.read_ipc(io.BytesIO(data)) for data in packed]


@dataclass
class ShapedChunk:
    """A chunk's exported rows (the 49 fields typed, then extra fields as JSON text), and the
    hour's extra keys, in order, as far as the hour has been read."""

    frame: pl.DataFrame
    keys: tuple[str, ...]


@dataclass(frozen=True)
class HourSummary:
    """What a shaped hour leaves once all its chunks were read: what the writer needs after the
    parts (the side files, the marker, the rebuild of parts that lack a late extra key)."""

    counts: Counts
    rejects: pl.DataFrame  # `reason`, `line`, in source order
    repairs: pl.DataFrame  # REPAIR_SCHEMA, in source order
    identities: bytes  # Parquet of the identity columns of the deduplicated rows, before the filter
    extras: tuple[str, ...]  # the hour's extra keys, in order of first appearance


class HourLedger:
    """What the chunks of an hour leave behind as they are shaped, until the hour's summary.

    A chunk's rejects and repairs are kept packed, its identities in a file under
    `workdir`; the tally counts rows at each stage. `FirstWins` decides dedup across chunks.
    """

    def __init__(self, workdir: str, keep: pl.Expr | None) -> None:
        self.workdir = workdir
        self.keep = keep
        self.dedup = FirstWins()
        self.present: set[str] = set()  # extra keys that some in-hour row carries
        self.reject_frames: list[bytes] = []
        self.repair_frames: list[bytes] = []
        self.identity_files: list[str] = []  # each chunk's identities, as a file
        self.tally = {"source_rows": 0, "in_hour": 0, "unique": 0, "exported": 0}

    def reject(self, unparseable: pl.DataFrame, outside: pl.DataFrame, offset: int) -> None:
        """Keep a chunk's rejected lines, placed by their position in the hour's source."""
        self.reject_frames.append(packed(pl.concat([unparseable, outside]).with_columns(pl.col("_pos") + offset)))

    def normalize(self, in_hour: pl.DataFrame, chunk_extras: list[str]) -> pl.DataFrame:
        """A chunk's in-hour rows normalized (a line in the exported form keeps its dicts as
        sent), with the line, its extras and whether it is written as it came."""
        carried = [k for k in chunk_extras if in_hour[k].is_not_null().any()]
        self.present.update(carried)
        normalized, chunk_repairs = normalize_with_repairs(in_hour, carried)
        if chunk_repairs.height:
            self.repair_frames.append(packed(chunk_repairs))
        self.tally["in_hour"] += normalized.height
        canon = canonical_rows(in_hour, normalized)
        normalized = restore_dicts(in_hour, normalized, (in_hour[NO_DICTS] & ~canon).arg_true())
        return normalized.with_columns(in_hour[POS], in_hour[LINE], in_hour[EXTRA], canon)

    def with_in_form(self, normalized: pl.DataFrame, in_form: pl.DataFrame, extras: tuple[str, ...],
                     fields: list[str], known: list[str]) -> pl.DataFrame:
        """The chunk's rows to export, its in-hour lines in the form among the others, in source order.

        Only the columns the hour still needs are joined (`fields`, the line, its extra
        keys, whether it is written as it came): the other rows' lines that need encoding
        are encoded here, with the extra keys known so far, exactly as the writer would
        encode them, and marked ENCODED, so the writer validates them.
        """
        if not in_form.height:
            return normalized
        self.present.update(extras)
        self.tally["in_hour"] += in_form.height
        rows = normalized_in_form(InForm(in_form, extras), fields).with_columns(pl.lit(False).alias(ENCODED))
        if normalized.height:
            keys = self.keys(known)
            encode = ~normalized[CANON]
            if encode.any():
                rows_to_encode = encode.arg_true()
                text = encode_events(normalized.filter(encode), keys)["line"]
                normalized = normalized.with_columns(
                    normalized[LINE].scatter(rows_to_encode, text),
                    normalized[EXTRA].scatter(rows_to_encode, KEY_SEPARATOR.join(sorted(keys))),
                    pl.lit(True).alias(CANON), encode.alias(ENCODED))
            else:
                normalized = normalized.with_columns(pl.lit(False).alias(ENCODED))
        slim = normalized.select(rows.columns) if normalized.height else rows.clear()
        both = pl.concat([slim, rows])
        return both.sort(POS) if slim.height else both

    def exported(self, normalized: pl.DataFrame) -> pl.Series:
        """The chunk's mask of exported rows: first of their keys in the hour, and kept by the
        filter. The identities of the first rows are kept, whatever the filter says."""
        unique = self.dedup(normalized.select(KEY_COLUMNS))
        path = os.path.join(self.workdir, f"identities-{len(self.identity_files):06d}.arrow")
        normalized.select(IDENTITY_COLUMNS).filter(unique).write_ipc(path, compression="zstd")
        self.identity_files.append(path)
        exported = unique
        if self.keep is not None:
            missing = [c for c in self.keep.meta.root_names() if c not in normalized.columns]
            # with_columns, not select: a condition on an extra field this chunk lacks
            # is a scalar, which must broadcast to every row.
            kept = normalized.with_columns(pl.lit(None, pl.String).alias(c) for c in missing).with_columns(
                self.keep.fill_null(False).alias("_keep")
            )["_keep"]
            exported = unique & kept
        self.tally["unique"] += int(unique.sum())
        self.tally["exported"] += int(exported.sum())
        return exported

    def keys(self, known: list[str]) -> tuple[str, ...]:
        """The hour's extra keys so far, in order: all of the hour's, unless a later chunk
        brings a new one (the writer then puts it into the lines before)."""
        return tuple(k for k in known if k in self.present)

    def summary(self, order: dict[str, None]) -> HourSummary:
        """The hour summed up, once its last chunk is shaped (`order`: its extra keys as parsed)."""
        rejects = (
            pl.concat(unpacked(self.reject_frames)).sort("_pos").drop("_pos") if self.reject_frames
            else pl.DataFrame(schema={"reason": pl.String, "line": pl.String})
        )
        repairs = pl.concat(unpacked(self.repair_frames)) if self.repair_frames else no_repairs()
        tally = self.tally
        counts = Counts(
            source_rows=tally["source_rows"],
            exported=tally["exported"],
            duplicates=tally["in_hour"] - tally["unique"],
            filtered=tally["unique"] - tally["exported"],
            rejected=rejects.height,
            repaired=repairs.height,
        )
        return HourSummary(counts=counts, rejects=rejects, repairs=repairs, identities=self._identities(),
                           extras=self.keys(list(order)))

    def _identities(self) -> bytes:
        """The hour's identities in one Parquet file, written as a stream, never whole in memory."""
        schema = {c: event_schema()[c] for c in IDENTITY_COLUMNS}
        parquet = os.path.join(self.workdir, "identities.parquet")
        scanned = pl.scan_ipc(self.identity_files) if self.identity_files else pl.LazyFrame(schema=schema)
        scanned.sink_parquet(parquet, compression="zstd", statistics=False)
        with open(parquet, "rb") as file:
            return file.read()


class ShapedHour:
    """One hour's exported rows as Polars frames, a chunk at a time (iterate it once).

    After the iteration, `summary()` gives the hour's `HourSummary`. The attributes `counts`,
    `rejects`, `repairs`, `identities` and `extras` read the same summary, and are None
    until the iteration ends.
    """

    def __init__(self, chunks: Iterable[bytes], hour: datetime, *, keep: pl.Expr | None,
                 lines_per_chunk: int = CHUNK_LINES, chunk_bytes: int = CHUNK_BYTES,
                 timings: dict | None = None, all_dicts: bool = False, in_form: bool = True) -> None:
        self.chunks = chunks
        self.hour = hour
        self.keep = keep
        self.lines_per_chunk = lines_per_chunk
        self.chunk_bytes = chunk_bytes
        self.timer = Timer(timings)
        # A line written as it came needs no text of its dict fields, unless the filter reads them.
        self.all_dicts = all_dicts or (keep is not None and bool(set(keep.meta.root_names()) & set(DICT_FIELDS)))
        # The fields read from lines in the form (`transform.in_form`); None where every line is parsed in full.
        needed = [*KEY_COLUMNS, *IDENTITY_COLUMNS, *(keep.meta.root_names() if keep is not None else [])]
        self.in_form_fields = list(dict.fromkeys(needed)) if in_form and not self.all_dicts and readable(needed) else None
        self._summary: HourSummary | None = None

    def summary(self) -> HourSummary:
        """The hour summed up; known only once every chunk was read."""
        if self._summary is None:
            raise RuntimeError(
                f"the summary of hour {partition_key(self.hour)} is known only once all its chunks were read: "
                "iterate the ShapedHour to its end first"
            )
        return self._summary

    @property
    def counts(self) -> Counts | None:
        return self._summary.counts if self._summary else None

    @property
    def rejects(self) -> pl.DataFrame | None:
        return self._summary.rejects if self._summary else None

    @property
    def repairs(self) -> pl.DataFrame | None:
        return self._summary.repairs if self._summary else None

    @property
    def identities(self) -> bytes | None:
        return self._summary.identities if self._summary else None

    @property
    def extras(self) -> list[str] | None:
        return list(self._summary.extras) if self._summary else None

    def _parse(self, chunk: list[bytes]) -> tuple:
        """One chunk's lines parsed: (its line count, parsed, unparseable, its extras, its lines in the form).

        The lines in the form (`transform.in_form`) have only the fields the hour needs read;
        the others are parsed in full.
        """
        with self.timer("parse"):
            lines = read_lines(chunk)
            del chunk
            in_form, others = split_in_form(lines, self.in_form_fields) if self.in_form_fields else (None, None)
            if in_form is None:
                parsed, unparseable, chunk_extras = parse(lines, all_dicts=self.all_dicts)
            else:
                parsed, unparseable, chunk_extras = _parsed_at(lines, others, self.all_dicts)
            return len(lines), parsed, unparseable, chunk_extras, in_form

    def _submitted(self, pool: ThreadPoolExecutor) -> Iterator:
        """Each chunk's parse, submitted to `pool` as the chunk is read."""
        for chunk in prefetch(line_batches(self.chunks, self.lines_per_chunk, self.chunk_bytes)):
            future = pool.submit(self._parse, chunk)
            del chunk
            yield future

    def _parsed(self, order: dict[str, None], tally: dict[str, int]) -> Iterator[tuple]:
        """The chunks parsed, two side by side, handed on in order as each is done: (offset,
        parsed, unparseable, its extras, its lines in the form, the hour's extras so far).

        The next chunk's parse is submitted once this one's is taken (`handoff`), so a
        chunk is handed on as soon as it is parsed, even while the source waits for more.
        """
        with ThreadPoolExecutor(max_workers=PARSERS, thread_name_prefix="amplitude-parse") as pool:
            futures = prefetch(self._submitted(pool), handoff=True)
            try:
                for future in futures:
                    count, parsed, unparseable, chunk_extras, in_form = future.result()
                    del future
                    offset = tally["source_rows"]
                    tally["source_rows"] += count
                    order.update(dict.fromkeys(first_appearance(parsed, chunk_extras, in_form)))
                    yield offset, parsed, unparseable, chunk_extras, in_form, list(order)
            finally:
                futures.close()
                pool.shutdown(cancel_futures=True)

    def __iter__(self) -> Iterator[ShapedChunk]:
        timer = self.timer
        order: dict[str, None] = {}  # extra keys of parsed lines, in order of first appearance
        with tempfile.TemporaryDirectory(prefix="amplitude-shaped-") as workdir:
            ledger = HourLedger(workdir, self.keep)
            # The next chunks are parsed while this one is shaped: PARSERS being parsed, one handed on.
            for offset, parsed, unparseable, chunk_extras, in_form, known in prefetch(self._parsed(order, ledger.tally), handoff=True):
                with timer("normalize"):
                    in_hour, outside = reject_outside_hour(parsed, self.hour)
                    del parsed
                    if in_form is not None:
                        form_in_hour, form_outside = reject_outside_hour(in_form.frame, self.hour)
                        outside = pl.concat([outside, form_outside])
                    ledger.reject(unparseable, outside, offset)
                    normalized = ledger.normalize(in_hour, chunk_extras)
                    del in_hour
                    if in_form is not None:
                        normalized = ledger.with_in_form(normalized, form_in_hour, in_form.extras, self.in_form_fields, known)
                        del in_form, form_in_hour
                with timer("dedup"):
                    exported = ledger.exported(normalized)
                yield ShapedChunk(normalized.filter(exported), ledger.keys(known))
                del normalized
            self._summary = ledger.summary(order)


def _parsed_at(lines: pl.Series, rows: pl.Series, all_dicts: bool) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """`parse` of the chunk's lines at `rows`, with positions in the whole chunk."""
    parsed, unparseable, extras = parse(lines.gather(rows), all_dicts=all_dicts)
    return (parsed.with_columns(rows.gather(parsed[POS]).alias(POS)),
            unparseable.with_columns(rows.gather(unparseable["_pos"]).alias("_pos")), extras)


def first_appearance(parsed: pl.DataFrame, extras: list[str], in_form: InForm | None) -> list[str]:
    """The chunk's extra keys in order of first appearance: those of the parsed lines (`extras`,
    already in that order) and those of its lines in the form, which all have the same."""
    if in_form is None or not in_form.height or not in_form.extras:
        return extras
    first: dict[str, tuple[int, int]] = {}
    for i, key in enumerate(extras):
        rows = parsed[key].is_not_null().arg_true()
        first[key] = (int(parsed[POS][int(rows[0])]), i)
    at = int(in_form.frame[POS][0])
    for j, key in enumerate(in_form.extras):
        first[key] = min(first.get(key, (at, j)), (at, j))
    return sorted(first, key=first.__getitem__)


def process_hour(chunks: Iterable[bytes], hour: datetime, keep: pl.Expr | None = None) -> HourResult:
    """The whole hour through the same path as one chunk, collected in memory.

    For scripts, tests and small hours: the export itself never holds an hour whole. The
    frame, rejects, repairs and identities are those the export writes for the hour.
    """
    shaped = ShapedHour(chunks, hour, keep=keep, lines_per_chunk=sys.maxsize, chunk_bytes=sys.maxsize, all_dicts=True)
    chunks = list(shaped)  # one chunk, or none for an empty hour
    summary = shaped.summary()
    frame = chunks[0].frame if chunks else pl.DataFrame(schema=event_schema())
    lines = event_lines(frame, summary.extras) if chunks else pl.Series("line", [], dtype=pl.String)
    identities = pl.read_parquet(io.BytesIO(summary.identities))
    return HourResult(hour=hour, frame=frame.drop(RESERVED, strict=False), rejects=summary.rejects,
                      identities=identities, counts=summary.counts, repairs=summary.repairs, lines=lines)
