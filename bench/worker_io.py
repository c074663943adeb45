"""What the contenders in bench/workers.py share: the container they write to, the Export
API stand-in they read from (through the project's source or as a raw download), the
hour's marker as the bench's exporters write it, and the process's own peak RSS.

Heavy imports stay inside the functions, so a contender's process loads only what it uses.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO


def peak_rss() -> int:
    """This process's own peak RSS (VmHWM; unlike ru_maxrss it does not carry over an exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def container(config: dict):
    """The contender's container on Azurite, created if it is not there yet."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(config["connection_string"])
    client = service.get_container_client(config["container"])
    if not client.exists():
        client.create_container()
    return client


def source(config: dict):
    """The project's Export API source, pointed at the stand-in."""
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


def download(config: dict, timings: dict) -> IO[bytes]:
    """The hour's ZIP from the Export API, streamed to a temporary file (the floor and the
    plain naive exporter share it); its time goes to `timings["download"]`."""
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


def upload_marker(container, layout, hour: datetime, parts: list[dict]) -> None:
    """The hour's marker: its parts and their rows, as the bench's exporters write it."""
    container.upload_blob(layout.marker(hour), json.dumps({"parts": parts, "rows": sum(p["rows"] for p in parts)}),
                          overwrite=True)
