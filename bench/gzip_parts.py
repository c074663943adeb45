"""Parts of JSON lines, stdlib gzip level 6, one upload each: how the baseline
(bench/baseline.py) and the plain naive exporter (bench/naive.py) write an hour."""

from __future__ import annotations

import gzip
import hashlib
import io
import time
from datetime import datetime

from bench.worker_io import upload_marker


class GzipParts:
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
        upload_marker(self.container, self.layout, self.hour, self.parts)

    @property
    def bytes_out(self) -> int:
        """The compressed bytes of the parts written so far."""
        return sum(p["bytes"] for p in self.parts)
