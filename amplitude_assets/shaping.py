"""An hour of events shaped chunk by chunk: the rows to export, as Polars frames.

`ShapedHour` is what the `events` asset produces for each hour: iterating it reads the
source's chunks, parses them (DuckDB), rejects lines that are not events of the hour,
normalizes, drops duplicates (first row wins, decided chunk by chunk by `FirstWins`) and
applies the event filter, yielding each chunk's exported rows as a Polars frame with the
hour's extra keys known so far. Memory is bounded by the chunks in flight: reading (and
decompressing) the next chunk and parsing it run in background threads while the caller
works on this one. When the iteration ends, the hour's counts, rejects, repairs, identity
columns (as Parquet) and final list of extra keys are known; the writer needs them for
the marker.

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
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from amplitude_assets.line_form import canonical_rows, event_lines
from amplitude_assets.lines import prefetch
from amplitude_assets.schema import DICT_FIELDS, event_schema
from amplitude_assets.transform import (
    EXTRA,
    IDENTITY_COLUMNS,
    LINE,
    NO_DICTS,
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

CHUNK_LINES = 250_000
CHUNK_BYTES = 96 << 20  # a chunk ends at whichever limit comes first
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


class FirstWins:
    """Dedup decided one chunk at a time in source order: the first row wins.

    A row is kept when its uuid is null or unseen, then when its ($insert_id,
    device_id), both non-null, is unseen among the rows kept by uuid. Each chunk is
    checked against the keys of the chunks before it, held in `SeenKeys`: a uuid as its
    128 bits, a pair as two 64-bit hashes of its exact text (within a chunk, pairs are
    compared whole). So the keys take 32 bytes an event, whatever the ids' lengths.
    """

    def __init__(self) -> None:
        self.uuids = SeenKeys()
        self.pairs = SeenKeys()

    def __call__(self, keys: pl.DataFrame) -> pl.Series:
        """The chunk's mask: True for a row that is the first of its keys in the hour."""
        uuid = keys["uuid"]
        first = (uuid.is_null() | uuid.is_first_distinct()).fill_null(True)
        rows = (first & uuid.is_not_null()).arg_true()
        digits = uuid.gather(rows).str.replace_all("-", "", literal=True)  # canonical: 32 hex digits
        high = digits.str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64)
        low = digits.str.slice(16, 16).str.to_integer(base=16, dtype=pl.UInt64)
        first = first.scatter(rows.filter(self.uuids.check(high, low)), False)

        both = first & keys["$insert_id"].is_not_null() & keys["device_id"].is_not_null()
        rows = both.arg_true()
        # One exact string per pair: the first part's length, then both parts.
        pair = keys.select(
            pl.concat_str(pl.col("$insert_id").str.len_bytes().cast(pl.String), pl.lit(":"), "$insert_id", "device_id")
        ).to_series().gather(rows)
        repeated = ~pair.is_first_distinct()
        fresh = (~repeated).arg_true()
        fresh_pairs = pair.gather(fresh)
        # Across chunks a pair is kept as 128 bits of hash (two seeds): 16 bytes an event
        # instead of its text, and a false match between two of an hour's millions of
        # pairs has odds of about 2^-80.
        seen = self.pairs.check(fresh_pairs.hash(seed=0), fresh_pairs.hash(seed=1))
        repeated = repeated.scatter(fresh.filter(seen), True)
        return first.scatter(rows.filter(repeated), False).rename("unique")


class SeenKeys:
    """A set of keys, each a 64-bit `high` part and the rest, in the order they came.

    A chunk's keys are looked up by probing every key seen so far against a hash of
    the chunk's `high` parts (one pass over the hour's integers, which is cheaper than
    hashing the hour's keys each time); the few matches are then compared whole.
    """

    def __init__(self) -> None:
        self.high = pl.Series("high", [], dtype=pl.UInt64)
        self.rest: pl.Series | None = None

    def check(self, high: pl.Series, rest: pl.Series) -> pl.Series:
        """Which keys were seen before; records the others (distinct, as given)."""
        seen = pl.zeros(len(high), pl.Boolean, eager=True)
        if len(self.high) and len(high):
            matches = self.high.is_in(high.implode()).arg_true()
            if len(matches):
                known = pl.struct(self.high.gather(matches).alias("h"), self.rest.gather(matches).alias("r"), eager=True)
                seen = pl.struct(high.alias("h"), rest.alias("r"), eager=True).is_in(known.implode())
        self.high = self.high.append(high.filter(~seen).rename("high"))
        fresh = rest.filter(~seen).rename("rest")
        self.rest = fresh if self.rest is None else self.rest.append(fresh)
        return seen


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


class ShapedHour:
    """One hour's exported rows as Polars frames, a chunk at a time (iterate it once).

    After the iteration: `counts`, `rejects`, `repairs`, `identities` (Parquet bytes of the
    identity columns of the deduplicated rows, before the filter) and `extras` (the hour's
    extra keys, in order of first appearance).
    """

    def __init__(self, chunks: Iterable[bytes], hour: datetime, *, keep: pl.Expr | None,
                 lines_per_chunk: int = CHUNK_LINES, chunk_bytes: int = CHUNK_BYTES,
                 timings: dict | None = None, all_dicts: bool = False) -> None:
        self.chunks = chunks
        self.hour = hour
        self.keep = keep
        self.lines_per_chunk = lines_per_chunk
        self.chunk_bytes = chunk_bytes
        self.timer = Timer(timings)
        # A line written as it came needs no text of its dict fields, unless the filter reads them.
        self.all_dicts = all_dicts or (keep is not None and bool(set(keep.meta.root_names()) & set(DICT_FIELDS)))
        self.counts: Counts | None = None
        self.rejects: pl.DataFrame | None = None
        self.repairs: pl.DataFrame | None = None
        self.identities: bytes | None = None
        self.extras: list[str] | None = None

    def _parsed(self, order: dict[str, None], tally: dict[str, int]) -> Iterator[tuple]:
        """Parse each chunk (in a background thread): (offset, parsed, unparseable, its extras, the hour's so far)."""
        for chunk in prefetch(line_batches(self.chunks, self.lines_per_chunk, self.chunk_bytes)):
            with self.timer("parse"):
                lines = read_lines(chunk)
                del chunk
                parsed, unparseable, chunk_extras = parse(lines, all_dicts=self.all_dicts)
            offset = tally["source_rows"]
            tally["source_rows"] += len(lines)
            del lines
            order.update(dict.fromkeys(chunk_extras))
            yield offset, parsed, unparseable, chunk_extras, list(order)

    def __iter__(self) -> Iterator[ShapedChunk]:
        hour, keep, timer = self.hour, self.keep, self.timer
        dedup = FirstWins()
        order: dict[str, None] = {}  # extra keys of parsed lines, in order of first appearance
        present: set[str] = set()  # extra keys that some in-hour row carries
        reject_frames: list[bytes] = []
        repair_frames: list[bytes] = []
        identity_files: list[str] = []  # each chunk's identities, as a file
        tally = {"source_rows": 0, "in_hour": 0, "unique": 0, "exported": 0}
        with tempfile.TemporaryDirectory(prefix="amplitude-shaped-") as workdir:
            # The next chunk is parsed while this one is shaped, and no further: two parsed chunks at most.
            for offset, parsed, unparseable, chunk_extras, known in prefetch(self._parsed(order, tally), handoff=True):
                with timer("normalize"):
                    in_hour, outside = reject_outside_hour(parsed, hour)
                    del parsed
                    reject_frames.append(packed(pl.concat([unparseable, outside]).with_columns(pl.col("_pos") + offset)))
                    carried = [k for k in chunk_extras if in_hour[k].is_not_null().any()]
                    present.update(carried)
                    normalized, chunk_repairs = normalize_with_repairs(in_hour, carried)
                    if chunk_repairs.height:
                        repair_frames.append(packed(chunk_repairs))
                    tally["in_hour"] += normalized.height
                    canon = canonical_rows(in_hour, normalized)
                    normalized = restore_dicts(in_hour, normalized, (in_hour[NO_DICTS] & ~canon).arg_true())
                    normalized = normalized.with_columns(in_hour[LINE], in_hour[EXTRA], canon)
                    del in_hour
                with timer("dedup"):
                    unique = dedup(normalized.select(KEY_COLUMNS))
                    path = os.path.join(workdir, f"identities-{len(identity_files):06d}.arrow")
                    normalized.select(IDENTITY_COLUMNS).filter(unique).write_ipc(path, compression="zstd")
                    identity_files.append(path)
                    exported = unique
                    if keep is not None:
                        missing = [c for c in keep.meta.root_names() if c not in normalized.columns]
                        # with_columns, not select: a condition on an extra field this chunk lacks
                        # is a scalar, which must broadcast to every row.
                        kept = normalized.with_columns(pl.lit(None, pl.String).alias(c) for c in missing).with_columns(
                            keep.fill_null(False).alias("_keep")
                        )["_keep"]
                        exported = unique & kept
                    tally["unique"] += int(unique.sum())
                    tally["exported"] += int(exported.sum())
                # The hour's extra keys so far, in order: all of the hour's, unless a later
                # chunk brings a new one (the writer then puts it into the lines before).
                keys = tuple(k for k in known if k in present)
                yield ShapedChunk(normalized.filter(exported), keys)
                del normalized

            self.extras = [k for k in order if k in present]
            self.rejects = (
                pl.concat(unpacked(reject_frames)).sort("_pos").drop("_pos") if reject_frames
                else pl.DataFrame(schema={"reason": pl.String, "line": pl.String})
            )
            self.repairs = pl.concat(unpacked(repair_frames)) if repair_frames else no_repairs()
            # The hour's identities go into one Parquet file as a stream, never whole in memory.
            schema = {c: event_schema()[c] for c in IDENTITY_COLUMNS}
            parquet = os.path.join(workdir, "identities.parquet")
            scanned = pl.scan_ipc(identity_files) if identity_files else pl.LazyFrame(schema=schema)
            scanned.sink_parquet(parquet, compression="zstd", statistics=False)
            with open(parquet, "rb") as file:
                self.identities = file.read()
        self.counts = Counts(
            source_rows=tally["source_rows"],
            exported=tally["exported"],
            duplicates=tally["in_hour"] - tally["unique"],
            filtered=tally["unique"] - tally["exported"],
            rejected=self.rejects.height,
            repaired=self.repairs.height,
        )


def process_hour(chunks: Iterable[bytes], hour: datetime, keep: pl.Expr | None = None) -> HourResult:
    """The whole hour through the same path as one chunk, collected in memory.

    For scripts, tests and small hours: the export itself never holds an hour whole. The
    frame, rejects, repairs and identities are those the export writes for the hour.
    """
    shaped = ShapedHour(chunks, hour, keep=keep, lines_per_chunk=sys.maxsize, chunk_bytes=sys.maxsize, all_dicts=True)
    chunks = list(shaped)  # one chunk, or none for an empty hour
    frame = chunks[0].frame if chunks else pl.DataFrame(schema=event_schema())
    lines = event_lines(frame, shaped.extras) if chunks else pl.Series("line", [], dtype=pl.String)
    identities = pl.read_parquet(io.BytesIO(shaped.identities))
    return HourResult(hour=hour, frame=frame.drop(RESERVED, strict=False), rejects=shaped.rejects,
                      identities=identities, counts=shaped.counts, repairs=shaped.repairs, lines=lines)
