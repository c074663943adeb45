"""Amplitude's Export API over HTTP: `GET {base}/api/2/export?start=YYYYMMDDTHH&end=YYYYMMDDTHH`.

- HTTP Basic auth with the project's API key and secret key. `end` is inclusive, so one
  hour is `start=H&end=H` and no two windows overlap.
- The body is a ZIP of `{project_id}/{project_id}_{date}_{H}#{n}.json.gz` entries of JSON
  lines. It is streamed to a temporary file and checked (every entry's CRC) before anyone
  reads it; `archive_entries` then reads it entry by entry in part order.
- 404: the window has no events. 400 (over 4 GB) and 504: `fetch` halves the window down
  to one hour, then fails. 429 (honouring Retry-After), other 5xx, timeouts, a 200 that is
  not a ZIP and a truncated ZIP: retry with backoff and jitter, then fail naming the hour.
  401 and 403 fail at once. The key and secret never appear in a message or a log.

`export_api.ExportApiSource` is the source built on this client: it pages hours into windows.
"""

from __future__ import annotations

import base64
import random
import re
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import IO

import dagster as dg
import requests

from amplitude_assets.lines import gzip_line_chunks, is_gzip, line_chunks
from amplitude_assets.partitions import partition_key
from amplitude_assets.settings import SettingsError, redact

HOUR_FORMAT = "%Y%m%dT%H"
DOWNLOAD_BLOCK = 1 << 20

log = dg.get_dagster_logger("amplitude_assets.export_api")


class ExportApiError(RuntimeError):
    """An hour could not be fetched from the Export API; the message names the hour."""


class ExportApiAuthError(SettingsError, ExportApiError):
    """The Export API refused the credentials (401/403): retrying cannot help, the settings must change."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _TooLarge(Exception):
    """400 (the window is over 4 GB) or 504 (the export timed out): ask for less."""

    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


@dataclass(frozen=True)
class Window:
    """Hours `first`..`last`, both included, as the Export API's `start` and `end` mean them."""

    first: datetime
    last: datetime

    @property
    def hours(self) -> int:
        return int((self.last - self.first).total_seconds() // 3600) + 1

    @property
    def params(self) -> dict[str, str]:
        return {"start": self.first.strftime(HOUR_FORMAT), "end": self.last.strftime(HOUR_FORMAT)}

    def halves(self) -> tuple[Window, Window]:
        """Two windows that cover this one without overlapping (`end` is inclusive)."""
        mid = self.first + timedelta(hours=self.hours // 2)
        return Window(self.first, mid - timedelta(hours=1)), Window(mid, self.last)

    def __str__(self) -> str:
        if self.hours == 1:
            return f"hour {partition_key(self.first)}"
        return f"hours {partition_key(self.first)}..{partition_key(self.last)}"


def entry_order(name: str) -> list:
    """Natural order of ZIP entry names, so `#2` comes before `#10` and hour 9 before 17."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def check_archive(archive: IO[bytes]) -> int:
    """The number of entries of a complete ZIP; `_Retryable` for a body that is not one."""
    archive.seek(0)
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()  # reads every entry and checks its CRC
            count = len(zf.infolist())
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        archive.seek(0)
        head = archive.read(16)
        raise _Retryable(f"the response is not a complete ZIP ({type(exc).__name__}; starts with {head[:16]!r})") from None
    if bad is not None:
        raise _Retryable(f"the response ZIP is corrupt (entry {bad} fails its CRC)")
    return count


def archive_entries(archive: IO[bytes], chunk_bytes: int) -> Iterator[tuple[str, Iterator[bytes]]]:
    """(name, line-aligned chunks) of every entry, in part order (`#2` before `#10`)."""
    archive.seek(0)
    with zipfile.ZipFile(archive) as zf:
        for info in sorted(zf.infolist(), key=lambda i: entry_order(i.filename)):
            if info.is_dir():
                continue
            with zf.open(info) as entry:
                if is_gzip(entry.peek(2)):
                    yield info.filename, gzip_line_chunks(entry, chunk_bytes)
                else:  # a plain JSON-lines entry
                    yield info.filename, line_chunks(entry, chunk_bytes)


@dataclass(frozen=True)
class ExportApiOptions:
    """Where the Export API is, the project's credentials, and how patiently to ask it.

    The first five fields may be given by position, in this order; the rest by keyword."""

    base_url: str
    api_key: str = field(repr=False)  # never shown
    secret_key: str = field(repr=False)
    max_attempts: int = 6
    timeout_seconds: float = 600  # the longest wait for the response's next bytes (read timeout)
    base_delay: float = field(default=2.0, kw_only=True)  # the first retry's backoff, doubled each retry
    max_delay: float = field(default=120.0, kw_only=True)
    max_retry_after: float = field(default=900.0, kw_only=True)  # the longest Retry-After honoured
    connect_timeout: float = field(default=30.0, kw_only=True)


class ExportClient:
    """Fetches windows of hours from the Export API as checked ZIPs in temporary files."""

    def __init__(self, options: ExportApiOptions, session: requests.Session | None = None):
        self.base_url = options.base_url.rstrip("/")
        self._auth = (options.api_key, options.secret_key)
        self.max_attempts = max(1, int(options.max_attempts))
        self.timeout = (options.connect_timeout, options.timeout_seconds)
        self.base_delay = options.base_delay
        self.max_delay = options.max_delay
        self.max_retry_after = options.max_retry_after
        self._session = session or requests.Session()

    def __repr__(self) -> str:  # never show the credentials
        return f"ExportClient(base_url={self.base_url!r})"

    @property
    def url(self) -> str:
        return f"{self.base_url}/api/2/export"

    def fetch(
        self, window: Window, on_error: Callable[[Window, ExportApiError], None] | None = None
    ) -> Iterator[tuple[Window, IO[bytes] | None]]:
        """(sub-window, temporary ZIP file or None for a 404) covering `window`, in order.

        A window the API refuses as too large (400) or too slow (504) is halved until it
        is one hour; a one-hour window it still refuses fails, naming the hour. With
        `on_error`, a sub-window that fails is reported there and the rest still come.
        """
        try:
            archive = self.download(window)
        except _TooLarge as exc:
            if window.hours > 1:
                first, second = window.halves()
                log.warning(f"Export API: {window} answered HTTP {exc.status}; splitting into {first} and {second}")
                yield from self.fetch(first, on_error)
                yield from self.fetch(second, on_error)
                return
            reason = (
                "the export is over Amplitude's 4 GB limit" if exc.status == 400
                else "the Export API timed out (504) even for one hour"
            )
            error = ExportApiError(
                f"Export API: {window} failed with HTTP {exc.status} ({reason}); "
                "it cannot be split further, try again later or export it from Amplitude's UI"
            )
            if on_error is None:
                raise error from None
            on_error(window, error)
        except ExportApiAuthError:
            raise
        except ExportApiError as error:
            if on_error is None:
                raise
            on_error(window, error)
        else:
            yield window, archive

    def download(self, window: Window) -> IO[bytes] | None:
        """One window's ZIP in a temporary file (None when the API has no data), with retries."""
        last: _Retryable | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._attempt(window)
            except _Retryable as exc:
                last = exc
                if attempt == self.max_attempts:
                    break
                delay = self._delay(attempt, exc.retry_after)
                log.warning(
                    f"Export API: {window}: {exc.reason}; attempt {attempt} of {self.max_attempts}, "
                    f"retrying in {delay:.1f}s"
                )
                time.sleep(delay)
        raise ExportApiError(
            f"Export API: {window} failed after {self.max_attempts} attempt(s): "
            f"{last.reason if last else 'no attempt'} (AMPLITUDE_API_MAX_ATTEMPTS)"
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        backoff = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return backoff * random.uniform(0.5, 1.0)

    def _attempt(self, window: Window) -> IO[bytes] | None:
        started = time.perf_counter()
        try:
            response = self._session.get(
                self.url, params=window.params, auth=self._auth, stream=True, timeout=self.timeout
            )
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise _Retryable(self._redact(f"{type(exc).__name__}: {exc}")) from None
        with response:
            status = response.status_code
            if status == 404:
                log.info(f"Export API: {window} has no data (HTTP 404)")
                return None
            if status in (401, 403):
                raise ExportApiAuthError(
                    f"Export API refused the credentials for {window} (HTTP {status}) at {self.base_url}: "
                    "check AMPLITUDE_API_KEY, AMPLITUDE_SECRET_KEY and AMPLITUDE_REGION (the key and "
                    "secret are the project's, and the region must be the one the project lives in)"
                )
            if status in (400, 504):
                raise _TooLarge(status)
            if status == 429 or status >= 500:
                reason = "HTTP 429 rate limit exceeded" if status == 429 else f"HTTP {status}"
                raise _Retryable(reason, retry_after_seconds(response.headers.get("Retry-After")))
            if status != 200:
                raise ExportApiError(f"Export API: {window} answered an unexpected HTTP {status}")
            archive = tempfile.TemporaryFile(prefix="amplitude-export-", suffix=".zip")
            try:
                size = self._stream_to(response, archive)
                entries = check_archive(archive)
            except BaseException:
                archive.close()
                raise
        log.info(
            f"Export API: {window}: {size} bytes, {entries} entr{'y' if entries == 1 else 'ies'} "
            f"in {time.perf_counter() - started:.1f}s"
        )
        return archive

    def _stream_to(self, response: requests.Response, target: IO[bytes]) -> int:
        size = 0
        try:
            for block in response.iter_content(DOWNLOAD_BLOCK):
                target.write(block)
                size += len(block)
        except requests.RequestException as exc:
            raise _Retryable(self._redact(f"download interrupted after {size} bytes: {type(exc).__name__}")) from None
        target.flush()
        return size

    def _redact(self, text: str) -> str:
        key, secret = self._auth
        token = base64.b64encode(f"{key}:{secret}".encode()).decode()
        return redact(text, [token, key, secret])
