"""The contenders, each run in its own process so its peak RSS is its own.

    python -m bench.workers KIND CONFIG_JSON

KIND is `export` (the project's export path), `baseline` (the same job done the
straightforward way), `floor` (polars read + write + the fastest gzip, no upload, no
transforms) or `dagster` (a week of small hours through Dagster). The last line printed
is a JSON object with the figures.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import time
import uuid as uuidlib
import zipfile
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
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
    from azure.storage.blob import ContentSettings

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
    part, rows_in_part, parts, rows, events_in = io.BytesIO(), 0, [], 0, 0
    gz = gzip.GzipFile(fileobj=part, mode="wb", compresslevel=6, mtime=0)
    t = time.perf_counter()
    source2 = Timed(iter(_source(config).iter_lines(hour)), timings, "source (pass 2)", limit)

    def flush():
        nonlocal part, gz, rows_in_part
        gz.close()
        data = part.getvalue()
        name = layout.part(hour, len(parts))
        container.upload_blob(name, data, overwrite=True, content_settings=ContentSettings(
            content_type="application/gzip", content_md5=bytearray(hashlib.md5(data).digest())))
        parts.append({"name": name, "rows": rows_in_part, "bytes": len(data)})
        part, rows_in_part = io.BytesIO(), 0
        gz = gzip.GzipFile(fileobj=part, mode="wb", compresslevel=6, mtime=0)

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
        gz.write((json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
        rows_in_part += 1
        rows += 1
        if rows_in_part == config["max_rows_per_file"]:
            flush()
    if rows_in_part:
        flush()
    container.upload_blob(layout.marker(hour), json.dumps({"parts": parts, "rows": rows}), overwrite=True)
    timings["pass 2 (shape, serialize, gzip, upload)"] = time.perf_counter() - t - timings["source (pass 2)"]
    return {
        "seconds": time.perf_counter() - started, "stages": timings, "events_in": events_in, "rows_out": rows,
        "parts": len(parts), "bytes_in": source2.bytes, "bytes_out": sum(p["bytes"] for p in parts),
        "peak_rss": _peak_rss(),
    }


# -- the floor -----------------------------------------------------------------------------


def floor(config: dict) -> dict:
    """polars read_ndjson + write_ndjson + the fastest igzip level, entry by entry; no upload."""
    from amplitude_assets.sources.export_api import entry_order

    timings = {"read (gunzip)": 0.0, "parse (read_ndjson)": 0.0, "serialize (write_ndjson)": 0.0, "compress": 0.0}
    started = time.perf_counter()
    events = rows = bytes_in = bytes_out = 0
    with zipfile.ZipFile(config["zip"]) as zf:
        for info in sorted(zf.infolist(), key=lambda i: entry_order(i.filename)):
            t = time.perf_counter()
            data = igzip.decompress(zf.read(info))
            bytes_in += len(data)
            timings["read (gunzip)"] += time.perf_counter() - t
            t = time.perf_counter()
            frame = pl.read_ndjson(io.BytesIO(data))
            del data
            timings["parse (read_ndjson)"] += time.perf_counter() - t
            t = time.perf_counter()
            text = frame.write_ndjson().encode()
            timings["serialize (write_ndjson)"] += time.perf_counter() - t
            t = time.perf_counter()
            bytes_out += len(igzip.compress(text, compresslevel=0))
            timings["compress"] += time.perf_counter() - t
            events += frame.height
            rows += frame.height
    return {
        "seconds": time.perf_counter() - started, "stages": timings, "events_in": events, "rows_out": rows,
        "bytes_in": bytes_in, "bytes_out": bytes_out, "peak_rss": _peak_rss(),
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
    figures = {"export": export, "baseline": baseline, "floor": floor, "dagster": dagster}[kind](json.loads(raw))
    print(json.dumps(figures))
