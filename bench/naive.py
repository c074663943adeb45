"""The `naive` contender: what a first version of the exporter would do. Download the ZIP,
then per line json.loads, dedup by uuid, json.dumps(row, sort_keys=True,
separators=(",", ":")), stdlib gzip level 6, one upload per part."""

from __future__ import annotations

import gzip
import json
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime
from typing import IO

from bench.gzip_parts import GzipParts
from bench.worker_io import container, download, peak_rss


def _entry_lines(archive: IO[bytes]) -> Iterator[str]:
    """Every non-blank line of every entry, in the ZIP's order."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            with gzip.open(zf.open(info), "rt", encoding="utf-8") as entry:
                for text in entry:
                    if text.strip():
                        yield text


def naive(config: dict) -> dict:
    """What a first version would do: json.loads per line, dedup by uuid,
    json.dumps(row, sort_keys=True, separators=(",", ":")), stdlib gzip level 6, one upload per part."""
    from amplitude_assets.layout import EventsLayout

    hour = datetime.fromisoformat(config["hour"])
    client = container(config)
    layout = EventsLayout("", config["project_id"])
    timings = {"upload": 0.0}
    started = time.perf_counter()
    archive = download(config, timings)
    t = time.perf_counter()
    seen: set = set()
    events = 0
    parts = GzipParts(client, layout, hour, config["max_rows_per_file"], timings=timings)
    for text in _entry_lines(archive):
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
        "parts": len(parts.parts), "bytes_in": archive.seek(0, 2), "bytes_out": parts.bytes_out,
        "peak_rss": peak_rss(),
    }
