"""The `baseline` contender: the same job as the project's export done the straightforward
way, spec and all: json.loads and json.dumps per row, every field normalized by the spec in
Python, dedup by uuid and by (insert_id, device_id), stdlib gzip level 6, one upload a part.

It reads the hour twice: once for the extra keys (in order of first appearance), once to
shape and write the rows. `limit` in the config stops each pass after that many lines.
"""

from __future__ import annotations

import json
import time
import uuid as uuidlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

from bench.gzip_parts import GzipParts
from bench.worker_io import Timed, container, peak_rss, source


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
    """Every field of the spec, in its order, normalized as its kind asks."""
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


def _row(line: str, start: datetime, end: datetime) -> dict | None:
    """The line parsed, if it is a JSON object whose `server_upload_time` falls in [start, end)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict):
        return None
    ts = _timestamp(row.get("server_upload_time"))
    return row if ts is not None and start <= ts < end else None


class _Dedup:
    """The first row of each uuid, and of each ($insert_id, device_id) pair, wins."""

    def __init__(self):
        self.uuids: set = set()
        self.pairs: set = set()

    def repeated(self, out: dict) -> bool:
        key = out["uuid"]
        if key is not None:
            if key in self.uuids:
                return True
            self.uuids.add(key)
        if out["$insert_id"] is not None and out["device_id"] is not None:
            pair = (out["$insert_id"], out["device_id"])
            if pair in self.pairs:
                return True
            self.pairs.add(pair)
        return False


def _extra_keys(config: dict, start: datetime, end: datetime, timings: dict) -> dict[str, None]:
    """Pass 1: the keys outside the spec, in order of first appearance."""
    from amplitude_assets.schema import EVENT_KINDS

    t = time.perf_counter()
    extras: dict[str, None] = {}
    chunks = Timed(iter(source(config).iter_lines(start)), timings, "source", config.get("limit"))
    for line in _lines(chunks):
        row = _row(line, start, end)
        if row is not None:
            for key in row:
                if key not in EVENT_KINDS:
                    extras.setdefault(key)
    timings["pass 1 (keys)"] = time.perf_counter() - t - timings["source"]
    return extras


def _write_rows(config: dict, start: datetime, end: datetime, extras: dict[str, None], parts: GzipParts,
                timings: dict) -> tuple[int, Timed]:
    """Pass 2: parse, reject, normalize, dedup, serialize, gzip, upload part by part.
    Returns the lines read and the source's chunks (their bytes are the bytes in)."""
    from amplitude_assets.schema import EVENT_KINDS

    dedup = _Dedup()
    events_in = 0
    t = time.perf_counter()
    chunks = Timed(iter(source(config).iter_lines(start)), timings, "source (pass 2)", config.get("limit"))
    for line in _lines(chunks):
        events_in += 1
        row = _row(line, start, end)
        if row is None:
            continue
        out = _normalize(row, EVENT_KINDS)
        if dedup.repeated(out):
            continue
        for key in extras:
            out[key] = row.get(key)
        parts.write(json.dumps(out, ensure_ascii=False, separators=(",", ":")))
    parts.close()
    timings["pass 2 (shape, serialize, gzip, upload)"] = time.perf_counter() - t - timings["source (pass 2)"]
    return events_in, chunks


def baseline(config: dict) -> dict:
    """json.loads / json.dumps per row, stdlib gzip level 6, one upload per part."""
    from amplitude_assets.layout import EventsLayout

    start = datetime.fromisoformat(config["hour"]).replace(tzinfo=None)
    end = start + timedelta(hours=1)
    client = container(config)
    layout = EventsLayout("", config["project_id"])
    timings: dict[str, float] = {}
    started = time.perf_counter()
    extras = _extra_keys(config, start, end, timings)
    parts = GzipParts(client, layout, start, config["max_rows_per_file"], mtime=0, content_md5=True)
    events_in, chunks = _write_rows(config, start, end, extras, parts, timings)
    return {
        "seconds": time.perf_counter() - started, "stages": timings, "events_in": events_in, "rows_out": parts.rows,
        "parts": len(parts.parts), "bytes_in": chunks.bytes, "bytes_out": parts.bytes_out,
        "peak_rss": peak_rss(),
    }
