"""Amplitude's Export API: `GET {base}/api/2/export?start=YYYYMMDDTHH&end=YYYYMMDDTHH`.

- HTTP Basic auth with the project's API key and secret key. `end` is inclusive, so one
  hour is `start=H&end=H` and no two windows overlap.
- The body is a ZIP of `{project_id}/{project_id}_{date}_{H}#{n}.json.gz` entries of JSON
  lines (the last line of an entry may lack its newline). It is streamed to a temporary
  file, checked, then read entry by entry in part order, never whole in memory.
- 404: the hour has no events. 400 (over 4 GB) and 504: halve the window down to one
  hour, then fail. 429 (honouring Retry-After), other 5xx, timeouts, a 200 that is not a
  ZIP and a truncated ZIP: retry with backoff and jitter, then fail naming the hour.
  401 and 403 fail at once. The key and secret never appear in a message or a log.

The HTTP and ZIP side (requests, retries, halving, checking the ZIP) is `export_client`;
this module is the source: it pages the hours of a run into windows and splits each
window's rows back into hours. Every name of `export_client` above is importable from here.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import IO

import requests
from isal import igzip

from amplitude_assets.layout import part_hour
from amplitude_assets.lines import CHUNK_BYTES, gzip_line_chunks
from amplitude_assets.partitions import utc_hour
from amplitude_assets.sources.export_client import (  # re-exported: importable from here as before
    DOWNLOAD_BLOCK,
    HOUR_FORMAT,
    ExportApiAuthError,
    ExportApiError,
    ExportApiOptions,
    ExportClient,
    Window,
    archive_entries,
    check_archive,
    entry_order,
    log,
    retry_after_seconds,
)

__all__ = [
    "DOWNLOAD_BLOCK", "HOUR_FORMAT", "ExportApiAuthError", "ExportApiError", "ExportApiOptions", "ExportApiSource",
    "ExportClient", "Window", "check_archive", "entry_order", "log", "retry_after_seconds", "split_by_upload_hour",
]


class ExportApiSource:
    """The `export_api` source: one Export API request per hour, `start=H&end=H`, or, for a
    range run (`prefetch`), one per window of consecutive hours, split back into hours."""

    name = "export_api"

    def __init__(
        self,
        *args,
        chunk_bytes: int = CHUNK_BYTES,
        window_hours: int = 24,
        session: requests.Session | None = None,
        **fields,
    ):
        """`args` and `fields` are those of `ExportApiOptions` (`base_url`, `api_key`, `secret_key`,
        `max_attempts`, ...), written there once for the source and its client; or one `ExportApiOptions`."""
        if len(args) == 1 and not fields and isinstance(args[0], ExportApiOptions):
            options = args[0]
        else:
            options = ExportApiOptions(*args, **fields)
        self.client = ExportClient(options, session=session)
        self.chunk_bytes = chunk_bytes
        self.window_hours = max(1, int(window_hours))
        # Range runs (see prefetch): the planned window of each hour, and the split results.
        self._plan: dict[datetime, Window] = {}
        self._split_windows: set[Window] = set()
        self._spools: dict[datetime, IO[bytes]] = {}
        self._errors: dict[datetime, ExportApiError] = {}

    def __repr__(self) -> str:  # never show the credentials
        return f"ExportApiSource(base_url={self.base_url!r})"

    @property
    def base_url(self) -> str:
        return self.client.base_url

    @property
    def url(self) -> str:
        return self.client.url

    # -- Source -----------------------------------------------------------------------

    def iter_lines(self, hour: datetime) -> Iterator[bytes]:
        """The hour's JSON lines, in ZIP entry order (`#0`, `#1`, ...), in line-aligned chunks."""
        hour = utc_hour(hour)
        window = self._plan.pop(hour, None)
        if window is None or window.hours == 1:
            for _, archive in self.fetch(Window(hour, hour)):
                if archive is not None:
                    with archive:
                        yield from self.read_archive(archive)
            return
        if window not in self._split_windows:
            self._split(window)
        if hour in self._errors:
            self._discard(hour)
            raise self._errors.pop(hour)
        spool = self._spools.pop(hour, None)
        if spool is not None:
            with spool:
                spool.seek(0)
                yield from gzip_line_chunks(spool, self.chunk_bytes)

    # -- range runs -------------------------------------------------------------------

    def prefetch(self, hours: Iterable[datetime]) -> None:
        """Plan a range run: consecutive hours go in windows of at most `window_hours`.

        Windows never overlap (`end` is inclusive). A window is fetched once, when its
        first hour is read, and its rows are split by server_upload_time into per-hour
        gzip spools on disk; each hour's rows keep their entry and line order. A row whose
        server_upload_time is unparseable or outside the window stays with the hour its
        ZIP entry is named after, where the transform rejects (and keeps) it.
        """
        ordered = sorted({utc_hour(h) for h in hours})
        group: list[datetime] = []
        for hour in [*ordered, None]:
            if group and (hour is None or hour != group[-1] + timedelta(hours=1) or len(group) == self.window_hours):
                window = Window(group[0], group[-1])
                self._plan.update((h, window) for h in group)
                group = []
            if hour is not None:
                group.append(hour)

    def _split(self, window: Window) -> None:
        """Fetch a planned window and spool its rows by hour; a failure fails the hours it covers."""
        self._split_windows.add(window)
        writers: dict[datetime, IO[bytes]] = {}
        try:
            for _, archive in self.fetch(window, on_error=self._fail):
                if archive is not None:
                    with archive:
                        self._spool_archive(archive, window, writers)
        except ExportApiAuthError as error:
            self._fail(window, error)
        except Exception as error:  # a broken entry: every hour of the window fails with it
            self._fail(window, ExportApiError(f"Export API: reading {window} failed: {type(error).__name__}: {error}"))
        finally:
            for writer in writers.values():
                writer.close()

    def _spool_archive(self, archive: IO[bytes], window: Window, writers: dict[datetime, IO[bytes]]) -> None:
        """Append each line of the archive to the gzip spool of its hour (see `prefetch`)."""
        for name, chunks in self.archive_entries(archive):
            default = part_hour(name)  # the hour the ZIP entry is named after
            if default is None or not window.first <= default <= window.last:
                default = window.first
            for chunk in chunks:
                for hour, lines in split_by_upload_hour(chunk, window, default).items():
                    if hour not in writers:
                        self._spools[hour] = tempfile.TemporaryFile(prefix="amplitude-hour-")
                        writers[hour] = igzip.IGzipFile(fileobj=self._spools[hour], mode="wb", compresslevel=1)
                    writers[hour].write(lines)

    def _fail(self, window: Window, error: ExportApiError) -> None:
        """Every hour of `window` fails with `error` when it is read."""
        for i in range(window.hours):
            self._errors[window.first + timedelta(hours=i)] = error

    def _discard(self, hour: datetime) -> None:
        spool = self._spools.pop(hour, None)
        if spool is not None:
            spool.close()

    # -- fetching and reading (the client's) ----------------------------------------------

    def fetch(
        self, window: Window, on_error: Callable[[Window, ExportApiError], None] | None = None
    ) -> Iterator[tuple[Window, IO[bytes] | None]]:
        """(sub-window, temporary ZIP file or None for a 404) covering `window`: `ExportClient.fetch`."""
        return self.client.fetch(window, on_error)

    def download(self, window: Window) -> IO[bytes] | None:
        """One window's ZIP in a temporary file (None when the API has no data): `ExportClient.download`."""
        return self.client.download(window)

    def archive_entries(self, archive: IO[bytes]) -> Iterator[tuple[str, Iterator[bytes]]]:
        """(name, line-aligned chunks) of every entry, in part order (`#2` before `#10`)."""
        return archive_entries(archive, self.chunk_bytes)

    def read_archive(self, archive: IO[bytes]) -> Iterator[bytes]:
        """Every entry's lines, entries in part order, chunks ending at line boundaries."""
        for _, chunks in self.archive_entries(archive):
            yield from chunks


# The hour of a line's server_upload_time in its usual forms (`2024-01-01 05:00:00.123456`,
# with `T`, `Z` or `+00:00`); anything else is left to the entry's hour and the transform.
_UPLOAD_HOUR = re.compile(
    rb'"server_upload_time"\s*:\s*"(\d{4}-\d{2}-\d{2})[ T](\d{2}):\d{2}:\d{2}(?:\.\d{0,9})?(?:Z|\+00:00)?"'
)


def split_by_upload_hour(chunk: bytes, window: Window, default: datetime) -> dict[datetime, bytes]:
    """A chunk's lines grouped by the hour of their server_upload_time, in line order.

    Lines whose hour cannot be read, or falls outside `window`, go to `default`.
    """
    hours: dict[bytes, datetime | None] = {}
    groups: dict[datetime, list[bytes]] = {}
    for line in chunk.split(b"\n")[:-1]:
        match = _UPLOAD_HOUR.search(line)
        hour = None
        if match:
            key = match.group(1) + match.group(2)
            if key not in hours:
                try:
                    hour = datetime.strptime(key.decode(), "%Y-%m-%d%H").replace(tzinfo=timezone.utc)
                except ValueError:
                    hour = None
                hours[key] = hour if hour is not None and window.first <= hour <= window.last else None
            hour = hours[key]
        groups.setdefault(hour or default, []).append(line)
    return {hour: b"\n".join(lines) + b"\n" for hour, lines in groups.items()}

