"""The `floor` contender: the least any exporter of the hour must do, in one process,
streaming: download the ZIP, gunzip each entry, one DuckDB `json_valid` pass per line,
igzip level 1, upload the parts (`max_rows_per_file` lines each) as staged blocks, beside
the compression, and a marker.

The pieces, each with its own job: `_Reader` cuts an entry's decompressed bytes into blocks
of whole lines, `_Validator` counts the invalid lines of a block, `_Parts` cuts the lines
into parts and `_Part` compresses one and stages its blocks, on `_Uploads`, the thread
that talks to Azurite.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime
from typing import IO

from isal import igzip

from bench.worker_io import container, download, peak_rss, upload_marker

FLOOR_READ = 16 << 20  # decompressed bytes read at a time
FLOOR_BLOCK = 8 << 20  # compressed bytes per staged block


class _Uploads(threading.Thread):
    """Stages blocks and commits parts from a bounded queue, beside the compressing thread."""

    def __init__(self, container):
        super().__init__(daemon=True, name="floor-upload")
        self.container, self.queue, self.error = container, queue.Queue(maxsize=4), None
        self.waited = 0.0

    def put(self, item) -> None:
        started = time.perf_counter()
        self.queue.put(item)
        self.waited += time.perf_counter() - started

    def run(self) -> None:
        from azure.storage.blob import BlobBlock, ContentSettings

        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain, so the producer never blocks
            try:
                kind, name, payload = item
                blob = self.container.get_blob_client(name)
                if kind == "block":
                    block_id, data = payload
                    blob.stage_block(block_id, data, length=len(data))
                else:
                    blob.commit_block_list([BlobBlock(block_id=i) for i in payload],
                                           content_settings=ContentSettings(content_type="application/gzip"))
            except Exception as exc:  # reported by the producer
                self.error = exc

    def finish(self, timings: dict) -> None:
        """Waits for the last upload; the producer's waits and this one go to the timings."""
        t = time.perf_counter()
        self.queue.put(None)
        self.join()
        timings["upload (waiting for it)"] = self.waited + time.perf_counter() - t
        if self.error is not None:
            raise self.error


class _Part:
    """One part: igzip level 1, its compressed bytes staged a block of FLOOR_BLOCK at a time,
    then the block list committed (`close`). `rows` is counted by the caller."""

    def __init__(self, name: str, uploads: _Uploads, timings: dict):
        from isal import isal_zlib

        self.name, self.uploads, self.timings = name, uploads, timings
        self.rows = self.bytes = 0
        self.blocks: list[str] = []
        self.pending = bytearray()
        self.gzip = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)

    def write(self, data) -> None:
        t = time.perf_counter()
        self.pending += self.gzip.compress(data)
        self.timings["compress"] += time.perf_counter() - t
        if len(self.pending) >= FLOOR_BLOCK:
            self.stage()

    def stage(self) -> None:
        block_id = f"{len(self.blocks):08d}".encode().hex()
        self.blocks.append(block_id)
        self.bytes += len(self.pending)
        self.uploads.put(("block", self.name, (block_id, bytes(self.pending))))
        self.pending = bytearray()

    def close(self) -> dict:
        """The rest of the part staged and the part committed; returns its marker entry."""
        t = time.perf_counter()
        self.pending += self.gzip.flush()
        self.timings["compress"] += time.perf_counter() - t
        self.stage()
        self.uploads.put(("commit", self.name, self.blocks))
        return {"name": self.name, "rows": self.rows, "bytes": self.bytes}


class _Parts:
    """Cuts blocks of whole lines into parts of `max_rows` lines; `parts` are the parts closed."""

    def __init__(self, layout, hour: datetime, max_rows: int, uploads: _Uploads, timings: dict):
        self.layout, self.hour, self.max_rows = layout, hour, max_rows
        self.uploads, self.timings = uploads, timings
        self.parts: list[dict] = []
        self.part = self._next()

    def _next(self) -> _Part:
        return _Part(self.layout.part(self.hour, len(self.parts)), self.uploads, self.timings)

    def write(self, block: bytes, lines) -> None:
        """`lines` are the block's lines, newlines left out, as an Arrow string array over it."""
        n, done, at = len(lines), 0, 0
        view = memoryview(block)
        starts = memoryview(lines.buffers()[1]).cast("q")[lines.offset:]  # where each line starts, newlines left out
        while done < n:
            take = min(n - done, self.max_rows - self.part.rows)
            end = len(block) if done + take == n else starts[done + take] + done + take
            self.part.write(view[at:end])
            self.part.rows += take
            done, at = done + take, end
            if self.part.rows == self.max_rows:
                self.parts.append(self.part.close())
                self.part = self._next()

    def close(self) -> list[dict]:
        """The last part, if it has lines; returns every part's marker entry."""
        if self.part.rows:
            self.parts.append(self.part.close())
        return self.parts


class _Validator:
    """One DuckDB `json_valid` pass over each block's lines; counts the lines and the invalid ones."""

    def __init__(self, timings: dict):
        import duckdb

        self.con = duckdb.connect(config={"threads": os.cpu_count() or 1, "memory_limit": "512MB"})
        self.timings = timings
        self.events = self.invalid = 0

    def lines(self, block: bytes):
        """Whole lines, each ending in a newline: validated, and returned as an Arrow string array."""
        import pyarrow as pa
        import pyarrow.compute as pc

        t = time.perf_counter()
        offsets = pa.array([0, len(block) - 1], pa.int64()).buffers()[1]
        text = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(block)])
        lines = pc.split_pattern(text, "\n").flatten()
        self.con.register("block_lines", pa.table({"line": lines}))
        self.invalid += self.con.execute(
            "SELECT count(*) FILTER (WHERE NOT json_valid(line)) FROM block_lines").fetchall()[0][0]
        self.con.unregister("block_lines")
        self.timings["validate (json_valid)"] += time.perf_counter() - t
        self.events += len(lines)
        return lines


class _Reader:
    """The ZIP's entries in order, gunzipped FLOOR_READ bytes at a time, as blocks of whole
    lines; `bytes_in` counts the decompressed bytes."""

    def __init__(self, archive: IO[bytes], timings: dict):
        self.archive, self.timings = archive, timings
        self.bytes_in = 0

    def blocks(self) -> Iterator[bytes]:
        with zipfile.ZipFile(self.archive) as zf:
            # `#2` before `#10` (the project's source imports Dagster, which a floor has no need of).
            for info in sorted(zf.infolist(), key=lambda i: int(i.filename.rsplit("#", 1)[1].split(".", 1)[0])):
                with zf.open(info) as raw, igzip.IGzipFile(fileobj=raw) as entry:
                    yield from self._entry_blocks(entry)

    def _entry_blocks(self, entry) -> Iterator[bytes]:
        carry = b""
        while True:
            t = time.perf_counter()
            data = entry.read(FLOOR_READ)
            self.timings["gunzip"] += time.perf_counter() - t
            if not data:
                break
            self.bytes_in += len(data)
            data = carry + data
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            if cut:
                yield data[:cut]
        if carry.strip():
            yield carry + b"\n"  # the last line of an entry may lack its newline


def floor(config: dict) -> dict:
    """The least an export of the hour must do (the module's docstring says what)."""
    # Imported before the clock starts, as the floor's own work leaves its imports out.
    import duckdb  # noqa: F401
    import pyarrow  # noqa: F401
    import pyarrow.compute  # noqa: F401
    from isal import isal_zlib  # noqa: F401

    from amplitude_assets.layout import EventsLayout

    hour = datetime.fromisoformat(config["hour"])
    client = container(config)
    layout = EventsLayout("", config["project_id"])
    timings = {"gunzip": 0.0, "validate (json_valid)": 0.0, "compress": 0.0}
    started = time.perf_counter()
    archive = download(config, timings)
    validator = _Validator(timings)
    uploads = _Uploads(client)
    uploads.start()
    cutter = _Parts(layout, hour, config["max_rows_per_file"], uploads, timings)
    reader = _Reader(archive, timings)
    for block in reader.blocks():
        cutter.write(block, validator.lines(block))
    parts = cutter.close()
    uploads.finish(timings)
    rows = sum(p["rows"] for p in parts)
    upload_marker(client, layout, hour, parts)
    return {
        "seconds": time.perf_counter() - started, "stages": timings, "events_in": validator.events, "rows_out": rows,
        "invalid_lines": validator.invalid, "parts": len(parts), "bytes_in": reader.bytes_in,
        "bytes_out": sum(p["bytes"] for p in parts), "peak_rss": peak_rss(),
    }
