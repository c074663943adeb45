"""The contenders, each run in its own process so its peak RSS is its own.

    python -m bench.workers KIND CONFIG_JSON

KIND is one of:
- `export`: the project's export path, called as a function (no Dagster);
- `baseline`: the same job done the straightforward way, spec and all (json.loads and
  json.dumps per row, normalizing every field, stdlib gzip level 6);
- `floor`: the least any exporter of the hour must do (download, gunzip, one JSON
  validation pass per line, igzip level 1, upload the parts), streaming;
- `naive`: the plain naive exporter (json.loads, dedup by uuid, json.dumps with sorted
  keys, stdlib gzip level 6, one upload per part);
- `dagster`: a week of small hours through Dagster.
The last line printed is a JSON object with the figures.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import queue
import sys
import tempfile
import threading
import time
import uuid as uuidlib
import zipfile
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO

from isal import igzip


def _peak_rss() -> int:
    """This process's own peak RSS (VmHWM; unlike ru_maxrss it does not carry over an exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _container(config: dict):
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(config["connection_string"])
    client = service.get_container_client(config["container"])
    if not client.exists():
        client.create_container()
    return client


def _source(config: dict):
    from amplitude_assets.sources.export_api import ExportApiSource

    return ExportApiSource(
        base_url=config["base_url"], api_key=config["api_key"], secret_key=config["secret_key"],
        max_attempts=2, timeout_seconds=600,
    )


class Timed:
    """Wraps a chunk iterator and adds the time spent producing chunks to `timings[name]`."""

    def __init__(self, chunks: Iterator[bytes], timings: dict, name: str, limit: int | None = None):
        self.chunks, self.timings, self.name, self.limit = chunks, timings, name, limit
        self.bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        lines = 0
        while True:
            started = time.perf_counter()
            try:
                chunk = next(self.chunks)
            except StopIteration:
                self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - started
                return
            self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - started
            if self.limit is not None:
                lines += chunk.count(b"\n")
                if lines > self.limit:
                    return
            self.bytes += len(chunk)
            yield chunk


# -- the project's export ----------------------------------------------------------------


def export(config: dict) -> dict:
    from amplitude_assets.destination import writer
    from amplitude_assets.layout import EventsLayout

    hour = datetime.fromisoformat(config["hour"])
    container = _container(config)
    layout = EventsLayout("", config["project_id"])
    timings: dict[str, float] = {}
    started = time.perf_counter()
    chunks = Timed(iter(_source(config).iter_lines(hour)), timings, "source")
    manifest, result = writer.export_events_hour(
        container, layout, chunks, hour, keep=None, source="export_api",
        max_rows_per_file=config["max_rows_per_file"], timings=timings,
    )
    counts = result.counts.as_dict()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds, "stages": timings, "events_in": counts["source_rows"], "rows_out": manifest.rows,
        "parts": len(manifest.parts), "bytes_in": chunks.bytes, "bytes_out": sum(p.bytes for p in manifest.parts),
        "peak_rss": _peak_rss(), "counts": counts,
    }


# -- parts of JSON lines, stdlib gzip level 6, one upload each: the baseline and the naive exporter


class _GzipParts:
    """Writes an hour's lines into parts of `max_rows` lines, each gzipped with the stdlib at
    level 6 and uploaded whole once full, then the marker (`close`).

    `mtime` goes into every gzip header (None: the time of writing, as gzip does by default);
    `content_md5` sends each part's MD5 with it; `timings["upload"]`, when given, adds up the uploads."""

    def __init__(self, container, layout, hour: datetime, max_rows: int, *, mtime: int | None = None,
                 content_md5: bool = False, timings: dict | None = None):
        self.container, self.layout, self.hour, self.max_rows = container, layout, hour, max_rows
        self.mtime, self.content_md5, self.timings = mtime, content_md5, timings
        self.parts: list[dict] = []
        self.rows = 0
        self._open()

    def _open(self) -> None:
        self.buffer, self.rows_in_part = io.BytesIO(), 0
        self.gzip = gzip.GzipFile(fileobj=self.buffer, mode="wb", compresslevel=6, mtime=self.mtime)

    def write(self, line: str) -> None:
        """One line, without its newline."""
        self.gzip.write((line + "\n").encode())
        self.rows_in_part += 1
        self.rows += 1
        if self.rows_in_part == self.max_rows:
            self._flush()

    def _flush(self) -> None:
        from azure.storage.blob import ContentSettings

        self.gzip.close()
        data = self.buffer.getvalue()
        name = self.layout.part(self.hour, len(self.parts))
        md5 = {"content_md5": bytearray(hashlib.md5(data).digest())} if self.content_md5 else {}
        started = time.perf_counter()
        self.container.upload_blob(name, data, overwrite=True,
                                   content_settings=ContentSettings(content_type="application/gzip", **md5))
        if self.timings is not None:
            self.timings["upload"] += time.perf_counter() - started
        self.parts.append({"name": name, "rows": self.rows_in_part, "bytes": len(data)})
        self._open()

    def close(self) -> None:
        """The last part, if it has lines, then the marker."""
        if self.rows_in_part:
            self._flush()
        _upload_marker(self.container, self.layout, self.hour, self.parts)


def _upload_marker(container, layout, hour: datetime, parts: list[dict]) -> None:
    """The hour's marker: its parts and their rows, as the bench's exporters write it."""
    container.upload_blob(layout.marker(hour), json.dumps({"parts": parts, "rows": sum(p["rows"] for p in parts)}),
                          overwrite=True)


# -- the straightforward way -----------------------------------------------------------


def _timestamp(value):
    if value is None:
        return None
    try:
        if isinstance(value, (int, float)) or str(value).lstrip("-").isdigit():
            parsed = datetime.fromtimestamp(int(value) / 1000, timezone.utc)
        else:
            text = str(value).strip().replace("T", " ")
            if text[4:5] == ":":
                text = text[:4] + "-" + text[5:7] + "-" + text[8:]
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if parsed.tzinfo:
                parsed = parsed.astimezone(timezone.utc)
        return parsed.replace(tzinfo=None)
    except (ValueError, OverflowError, OSError):
        return None


def _normalize(row: dict, kinds: dict) -> dict:
    from amplitude_assets.schema import Kind

    out = {}
    for name, kind in kinds.items():
        value = row.get(name)
        if value is None:
            out[name] = {} if kind is Kind.DICT else None
        elif kind is Kind.TIMESTAMP:
            ts = _timestamp(value)
            out[name] = ts.strftime("%Y-%m-%d %H:%M:%S.%f") if ts else None
        elif kind is Kind.INT:
            try:
                out[name] = int(float(value)) if float(value).is_integer() else None
            except (TypeError, ValueError):
                out[name] = None
        elif kind is Kind.FLOAT:
            try:
                out[name] = float(value)
            except (TypeError, ValueError):
                out[name] = None
        elif kind is Kind.BOOL:
            out[name] = value if isinstance(value, bool) else {"true": True, "false": False}.get(str(value).lower())
        elif kind is Kind.UUID:
            try:
                out[name] = str(uuidlib.UUID(str(value)))
            except ValueError:
                out[name] = None
        elif kind is Kind.DICT:
            out[name] = value if isinstance(value, dict) else {}
        elif kind is Kind.ARRAY_OR_STRING:
            out[name] = value if isinstance(value, (list, str)) else None
        elif kind is Kind.NUMBER:
            out[name] = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[name] = None if text == "" and name in ("user_id", "device_id") else text
    return out


def _lines(chunks) -> Iterator[str]:
    for chunk in chunks:
        for line in chunk.decode("utf-8").splitlines():
            if line.strip():
                yield line


def baseline(config: dict) -> dict:
    """json.loads / json.dumps per row, stdlib gzip level 6, one upload per part."""
    from amplitude_assets.layout import EventsLayout
    from amplitude_assets.schema import EVENT_KINDS

    hour = datetime.fromisoformat(config["hour"]).replace(tzinfo=None)
    end = hour + timedelta(hours=1)
    limit = config.get("limit")
    container = _container(config)
    layout = EventsLayout("", config["project_id"])
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def in_hour(row) -> bool:
        ts = _timestamp(row.get("server_upload_time"))
        return ts is not None and hour <= ts < end

    # Pass 1: the extra keys, in order of first appearance.
    t = time.perf_counter()
    extras: dict[str, None] = {}
    source = Timed(iter(_source(config).iter_lines(hour)), timings, "source", limit)
    for line in _lines(source):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and in_hour(row):
            for key in row:
                if key not in EVENT_KINDS:
                    extras.setdefault(key)
    timings["pass 1 (keys)"] = time.perf_counter() - t - timings["source"]

    # Pass 2: parse, reject, normalize, dedup, serialize, gzip, upload part by part.
    seen_uuid, seen_pair = set(), set()
    events_in = 0
    parts = _GzipParts(container, layout, hour, config["max_rows_per_file"], mtime=0, content_md5=True)
    t = time.perf_counter()
    source2 = Timed(iter(_source(config).iter_lines(hour)), timings, "source (pass 2)", limit)
    for line in _lines(source2):
        events_in += 1
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or not in_hour(row):
            continue
        out = _normalize(row, EVENT_KINDS)
        key = out["uuid"]
        if key is not None:
            if key in seen_uuid:
                continue
            seen_uuid.add(key)
        if out["$insert_id"] is not None and out["device_id"] is not None:
            pair = (out["$insert_id"], out["device_id"])
            if pair in seen_pair:
                continue
            seen_pair.add(pair)
        for key in extras:
            out[key] = row.get(key)
        parts.write(json.dumps(out, ensure_ascii=False, separators=(",", ":")))
    parts.close()
    timings["pass 2 (shape, serialize, gzip, upload)"] = time.perf_counter() - t - timings["source (pass 2)"]
    return {
        "seconds": time.perf_counter() - started, "stages": timings, "events_in": events_in, "rows_out": parts.rows,
        "parts": len(parts.parts), "bytes_in": source2.bytes, "bytes_out": sum(p["bytes"] for p in parts.parts),
        "peak_rss": _peak_rss(),
    }


# -- the download the floor and the plain naive exporter share ------------------------


def _download(config: dict, timings: dict) -> IO[bytes]:
    """The hour's ZIP from the Export API, streamed to a temporary file."""
    import requests

    started = time.perf_counter()
    hour = datetime.fromisoformat(config["hour"]).strftime("%Y%m%dT%H")
    archive = tempfile.TemporaryFile(prefix="bench-export-", suffix=".zip")
    with requests.get(
        f"{config['base_url']}/api/2/export", params={"start": hour, "end": hour},
        auth=(config["api_key"], config["secret_key"]), stream=True, timeout=600,
    ) as response:
        response.raise_for_status()
        for block in response.iter_content(1 << 20):
            archive.write(block)
    archive.seek(0)
    timings["download"] = time.perf_counter() - started
    return archive


# -- the floor -----------------------------------------------------------------------------

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


def floor(config: dict) -> dict:
    """The least an export of the hour must do, in one process, streaming: download the ZIP,
    gunzip each entry, one DuckDB `json_valid` pass per line, igzip level 1, upload the parts
    (`max_rows_per_file` lines each) as staged blocks, beside the compression, and a marker."""
    import duckdb
    import pyarrow as pa
    import pyarrow.compute as pc
    from isal import isal_zlib

    from amplitude_assets.layout import EventsLayout

    hour = datetime.fromisoformat(config["hour"])
    max_rows = config["max_rows_per_file"]
    container = _container(config)
    layout = EventsLayout("", config["project_id"])
    timings = {"gunzip": 0.0, "validate (json_valid)": 0.0, "compress": 0.0}
    started = time.perf_counter()
    archive = _download(config, timings)
    con = duckdb.connect(config={"threads": os.cpu_count() or 1, "memory_limit": "512MB"})
    uploads = _Uploads(container)
    uploads.start()
    parts: list[dict] = []
    events = invalid = bytes_in = 0

    class Part:
        def __init__(self):
            self.name = layout.part(hour, len(parts))
            self.rows = self.bytes = 0
            self.blocks: list[str] = []
            self.pending = bytearray()
            self.gzip = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)

        def write(self, data) -> None:
            t = time.perf_counter()
            self.pending += self.gzip.compress(data)
            timings["compress"] += time.perf_counter() - t
            if len(self.pending) >= FLOOR_BLOCK:
                self.stage()

        def stage(self) -> None:
            block_id = f"{len(self.blocks):08d}".encode().hex()
            self.blocks.append(block_id)
            self.bytes += len(self.pending)
            uploads.put(("block", self.name, (block_id, bytes(self.pending))))
            self.pending = bytearray()

        def close(self) -> None:
            t = time.perf_counter()
            self.pending += self.gzip.flush()
            timings["compress"] += time.perf_counter() - t
            self.stage()
            uploads.put(("commit", self.name, self.blocks))
            parts.append({"name": self.name, "rows": self.rows, "bytes": self.bytes})

    part = Part()

    def feed(block: bytes) -> None:
        """Whole lines, each ending in a newline: validate them, then cut them into parts."""
        nonlocal part, events, invalid
        t = time.perf_counter()
        offsets = pa.array([0, len(block) - 1], pa.int64()).buffers()[1]
        text = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(block)])
        lines = pc.split_pattern(text, "\n").flatten()
        con.register("block_lines", pa.table({"line": lines}))
        invalid += con.execute("SELECT count(*) FILTER (WHERE NOT json_valid(line)) FROM block_lines").fetchall()[0][0]
        con.unregister("block_lines")
        timings["validate (json_valid)"] += time.perf_counter() - t
        n, done, at = len(lines), 0, 0
        events += n
        view = memoryview(block)
        starts = memoryview(lines.buffers()[1]).cast("q")[lines.offset:]  # where each line starts, newlines left out
        while done < n:
            take = min(n - done, max_rows - part.rows)
            end = len(block) if done + take == n else starts[done + take] + done + take
            part.write(view[at:end])
            part.rows += take
            done, at = done + take, end
            if part.rows == max_rows:
                part.close()
                part = Part()

    with zipfile.ZipFile(archive) as zf:
        # `#2` before `#10` (the project's source imports Dagster, which a floor has no need of).
        for info in sorted(zf.infolist(), key=lambda i: int(i.filename.rsplit("#", 1)[1].split(".", 1)[0])):
            with zf.open(info) as raw, igzip.IGzipFile(fileobj=raw) as entry:
                carry = b""
                while True:
                    t = time.perf_counter()
                    data = entry.read(FLOOR_READ)
                    timings["gunzip"] += time.perf_counter() - t
                    if not data:
                        break
                    bytes_in += len(data)
                    data = carry + data
                    cut = data.rfind(b"\n") + 1
                    carry = data[cut:]
                    if cut:
                        feed(data[:cut])
                if carry.strip():
                    feed(carry + b"\n")  # the last line of an entry may lack its newline
    if part.rows:
        part.close()
    t = time.perf_counter()
    uploads.queue.put(None)
    uploads.join()
    timings["upload (waiting for it)"] = uploads.waited + time.perf_counter() - t
    if uploads.error is not None:
        raise uploads.error
    rows = sum(p["rows"] for p in parts)
    _upload_marker(container, layout, hour, parts)
    return {
        "seconds": time.perf_counter() - started, "stages": timings, "events_in": events, "rows_out": rows,
        "invalid_lines": invalid, "parts": len(parts), "bytes_in": bytes_in,
        "bytes_out": sum(p["bytes"] for p in parts), "peak_rss": _peak_rss(),
    }


# -- the plain naive exporter --------------------------------------------------------------


def naive(config: dict) -> dict:
    """What a first version would do: json.loads per line, dedup by uuid,
    json.dumps(row, sort_keys=True, separators=(",", ":")), stdlib gzip level 6, one upload per part."""
    from amplitude_assets.layout import EventsLayout

    hour = datetime.fromisoformat(config["hour"])
    container = _container(config)
    layout = EventsLayout("", config["project_id"])
    timings = {"upload": 0.0}
    started = time.perf_counter()
    archive = _download(config, timings)
    t = time.perf_counter()
    seen: set = set()
    events = 0
    parts = _GzipParts(container, layout, hour, config["max_rows_per_file"], timings=timings)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            with gzip.open(zf.open(info), "rt", encoding="utf-8") as entry:
                for text in entry:
                    if not text.strip():
                        continue
                    events += 1
                    row = json.loads(text)
                    if row.get("uuid") in seen:
                        continue
                    seen.add(row.get("uuid"))
                    parts.write(json.dumps(row, sort_keys=True, separators=(",", ":")))
    parts.close()
    timings["parse, dedup, serialize, gzip"] = time.perf_counter() - t - timings["upload"]
    return {
        "seconds": time.perf_counter() - started, "stages": timings, "events_in": events, "rows_out": parts.rows,
        "parts": len(parts.parts), "bytes_in": archive.seek(0, 2), "bytes_out": sum(p["bytes"] for p in parts.parts),
        "peak_rss": _peak_rss(),
    }


# -- Dagster overhead --------------------------------------------------------------------


def dagster(config: dict) -> dict:
    """A week of small hours: 7 range runs of 24 hours (the default backfill policy) vs 168 runs."""
    import os

    os.environ.update({
        "AMPLITUDE_START": config["start"],
        "AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR": str(config["events_per_hour"]),
        "AZURE_STORAGE_CONNECTION_STRING": config["connection_string"],
        "AZURE_EVENTS_CONTAINER": config["container"],
        "AZURE_CREATE_CONTAINERS": "true",
        "AMPLITUDE_EXPORT_DELAY_MINUTES": "0",
    })
    import dagster as dg

    from amplitude_assets.partitions import parse_hour, partition_key
    from tests.helpers import definitions, materialize

    defs = definitions()
    selection = [key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()]
    first = parse_hour(config["start"])
    hours = [first + timedelta(hours=i) for i in range(config["hours"])]
    keys = [partition_key(h) for h in hours]
    per_run = config["hours_per_run"]
    instance = dg.DagsterInstance.ephemeral()
    started = time.perf_counter()
    runs = 0
    if config["mode"] == "batched":
        for i in range(0, len(keys), per_run):
            batch = keys[i : i + per_run]
            result = materialize(defs, selection, start=batch[0], end=batch[-1], instance=instance)
            assert result.success
            runs += 1
    else:
        for key in keys:
            result = materialize(defs, selection, partition=key, instance=instance)
            assert result.success
            runs += 1
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds, "runs": runs, "hours": len(keys), "per_hour_seconds": seconds / len(keys),
        "events_per_hour": config["events_per_hour"], "assets": selection, "peak_rss": _peak_rss(),
    }


if __name__ == "__main__":
    kind, raw = sys.argv[1], sys.argv[2]
    kinds = {"export": export, "baseline": baseline, "floor": floor, "naive": naive, "dagster": dagster}
    figures = kinds[kind](json.loads(raw))
    print(json.dumps(figures))
