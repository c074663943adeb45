"""The Export API client against a real local HTTP server serving real ZIP-of-gzip bodies."""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

import pytest

from amplitude_assets.resources import AmplitudeSource
from amplitude_assets.settings import Settings
from amplitude_assets.sources.export_api import ExportApiAuthError, ExportApiError, ExportApiSource, Window
from tests.helpers import LoopbackHTTP, definitions, lines_of, materialize
from tests.test_transform import MESSY

KEY = "test-api-key-0f1e2d3c"
SECRET = "test-secret-9a8b7c6d"
PROJECT = "187520"
HOUR = datetime(2020, 1, 25, 17, tzinfo=timezone.utc)


def make_zip(entries: dict[str, bytes]) -> bytes:
    """A ZIP whose entries are gzip files, in the given (possibly unsorted) order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in entries.items():
            zf.writestr(name, gzip.compress(text))
    return buffer.getvalue()


def entry(hour: datetime, n: int) -> str:
    return f"{PROJECT}/{PROJECT}_{hour:%Y-%m-%d}_{hour.hour}#{n}.json.gz"


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    cut: int | None = None  # send only this many bytes of the body, then close
    sleep: float = 0.0


@dataclass
class Request:
    start: str
    end: str
    auth: str | None


class ExportServer(LoopbackHTTP):
    """The Export API on 127.0.0.1 (`with ExportServer() as server:`): the replies `script`ed for
    a window, else `fallback(start, end)`, decide each reply."""

    def __init__(self):
        self.requests: list[Request] = []
        self.queues: dict[tuple[str, str], list[Reply]] = {}
        self.fallback: Callable[[str, str], Reply] = lambda start, end: Reply(404)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                url = urlparse(self.path)
                query = parse_qs(url.query)
                start, end = query.get("start", [""])[0], query.get("end", [""])[0]
                server.requests.append(Request(start, end, self.headers.get("Authorization")))
                reply = server.reply(url.path, start, end)
                if reply.sleep:
                    time.sleep(reply.sleep)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                if reply.cut is not None:
                    self.send_header("Connection", "close")
                self.end_headers()
                try:
                    self.wfile.write(reply.body if reply.cut is None else reply.body[: reply.cut])
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if reply.cut is not None:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        super().__init__(Handler)

    def reply(self, path: str, start: str, end: str) -> Reply:
        if path != "/api/2/export":
            return Reply(400, b"wrong path")
        queue = self.queues.get((start, end))
        if queue:
            return queue.pop(0) if len(queue) > 1 else queue[0]
        return self.fallback(start, end)

    def script(self, hour: datetime, *replies: Reply, last: datetime | None = None) -> None:
        key = (hour.strftime("%Y%m%dT%H"), (last or hour).strftime("%Y%m%dT%H"))
        self.queues[key] = list(replies)

    @property
    def windows(self) -> list[tuple[str, str]]:
        return [(r.start, r.end) for r in self.requests]


@pytest.fixture
def server():
    with ExportServer() as export_api:
        yield export_api


def source(server: ExportServer, **kwargs) -> ExportApiSource:
    options = {"max_attempts": 4, "timeout_seconds": 5, "base_delay": 0.01, "max_delay": 0.05, **kwargs}
    return ExportApiSource(base_url=server.url, api_key=KEY, secret_key=SECRET, **options)


TWO_ENTRIES = make_zip({
    # Written out of order: the reader sorts by part number, #10 after #2.
    entry(HOUR, 10): b'{"n": 4}\n',
    entry(HOUR, 0): b'{"n": 0}\n{"n": 1}',  # no final newline
    entry(HOUR, 2): b'{"n": 2}\n{"n": 3}\n',
})
EXPECTED = b"".join(b'{"n": %d}\n' % i for i in range(5))


def test_an_hour_is_read_entry_by_entry_in_part_order(server):
    server.script(HOUR, Reply(200, TWO_ENTRIES, {"Content-Type": "application/zip"}))
    chunks = list(source(server, chunk_bytes=7).iter_lines(HOUR))
    assert b"".join(chunks) == EXPECTED
    assert all(chunk.endswith(b"\n") for chunk in chunks)
    assert server.windows == [("20200125T17", "20200125T17")]  # `end` is inclusive
    assert server.requests[0].auth == "Basic " + base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()


def test_404_is_an_empty_hour(server):
    assert list(source(server).iter_lines(HOUR)) == []
    assert server.windows == [("20200125T17", "20200125T17")]


def test_429_honours_retry_after_then_succeeds(server):
    server.script(HOUR, Reply(429, b"Rate limit exceeded", {"Retry-After": "1"}), Reply(200, TWO_ENTRIES))
    started = time.monotonic()
    assert b"".join(source(server).iter_lines(HOUR)) == EXPECTED
    assert time.monotonic() - started >= 0.9  # waited as told, not the 10 ms base delay
    assert len(server.requests) == 2


def test_a_200_that_is_not_a_zip_is_retried(server):
    server.script(HOUR, Reply(200, b"<html>edge error</html>"), Reply(200, TWO_ENTRIES))
    assert b"".join(source(server).iter_lines(HOUR)) == EXPECTED
    assert len(server.requests) == 2


@pytest.mark.parametrize("truncated", [
    Reply(200, TWO_ENTRIES[: len(TWO_ENTRIES) // 2]),  # a complete response of half a ZIP
    Reply(200, TWO_ENTRIES, cut=len(TWO_ENTRIES) // 2),  # the connection drops mid-body
])
def test_a_truncated_zip_is_retried(server, truncated):
    server.script(HOUR, truncated, Reply(200, TWO_ENTRIES))
    assert b"".join(source(server).iter_lines(HOUR)) == EXPECTED
    assert len(server.requests) == 2


def test_a_read_timeout_is_retried(server):
    server.script(HOUR, Reply(200, TWO_ENTRIES, sleep=1.5), Reply(200, TWO_ENTRIES))
    assert b"".join(source(server, timeout_seconds=0.5).iter_lines(HOUR)) == EXPECTED
    assert len(server.requests) == 2


def test_500s_exhaust_the_retries_and_fail_naming_the_hour(server):
    server.script(HOUR, Reply(500, b"boom"))
    with pytest.raises(ExportApiError) as failure:
        list(source(server, max_attempts=3).iter_lines(HOUR))
    assert "hour 2020-01-25-17:00" in str(failure.value)
    assert "3 attempt" in str(failure.value) and "HTTP 500" in str(failure.value)
    assert len(server.requests) == 3


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_fail_at_once_without_showing_the_secrets(server, caplog, status):
    server.script(HOUR, Reply(status, b"Invalid API key"))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ExportApiAuthError) as failure:
        list(source(server).iter_lines(HOUR))
    message = str(failure.value)
    for name in ("AMPLITUDE_API_KEY", "AMPLITUDE_SECRET_KEY", "AMPLITUDE_REGION", "hour 2020-01-25-17:00"):
        assert name in message
    assert len(server.requests) == 1
    token = base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()
    for secret in (KEY, SECRET, token):
        assert secret not in message and secret not in caplog.text and secret not in repr(failure.value)
    assert KEY not in repr(source(server))


@pytest.mark.parametrize("status", [400, 504])
def test_400_and_504_for_one_hour_fail_clearly(server, status):
    server.script(HOUR, Reply(status, b"too big"))
    with pytest.raises(ExportApiError, match=rf"hour 2020-01-25-17:00 failed with HTTP {status}"):
        list(source(server).iter_lines(HOUR))
    assert len(server.requests) == 1  # not retried as the same window


def test_400_halves_a_multi_hour_window_without_overlap(server):
    hours = [HOUR + timedelta(hours=i) for i in range(5)]

    def reply(start: str, end: str) -> Reply:
        if start != end:
            return Reply(400, b"Raw data files too large")
        hour = datetime.strptime(start, "%Y%m%dT%H").replace(tzinfo=timezone.utc)
        return Reply(200, make_zip({entry(hour, 0): b'{"hour": %d}' % hour.hour}))

    server.fallback = reply
    api = source(server)
    lines = b"".join(b"".join(api.read_archive(a)) for _, a in api.fetch(Window(hours[0], hours[-1])) if a)
    assert lines == b"".join(b'{"hour": %d}\n' % h.hour for h in hours)
    single = [s for s, e in server.windows if s == e]
    assert single == [h.strftime("%Y%m%dT%H") for h in hours]  # each hour once, in order
    assert server.windows[0] == ("20200125T17", "20200125T21")


def window_server(server: ExportServer, extra: Callable[[datetime], list[str]] = lambda h: []) -> None:
    """Answer any window with one entry per hour, as Amplitude does (`#0` per hour here)."""

    def reply(start: str, end: str) -> Reply:
        first = datetime.strptime(start, "%Y%m%dT%H").replace(tzinfo=timezone.utc)
        last = datetime.strptime(end, "%Y%m%dT%H").replace(tzinfo=timezone.utc)
        entries = {}
        hour = first
        while hour <= last:
            rows = [json.dumps({"server_upload_time": f"{hour:%Y-%m-%d %H}:{m:02d}:00.5", "m": m}) for m in (1, 2)]
            entries[entry(hour, 0)] = "\n".join(rows + extra(hour)).encode()
            hour += timedelta(hours=1)
        return Reply(200, make_zip(dict(reversed(entries.items()))))

    server.fallback = reply


def test_prefetch_fetches_non_overlapping_windows_and_splits_them_by_hour(server):
    hours = [HOUR + timedelta(hours=i) for i in range(5)]
    window_server(server)
    alone = {h: b"".join(source(server).iter_lines(h)) for h in hours}
    server.requests.clear()

    api = source(server, window_hours=3)
    api.prefetch(reversed(hours))
    ranged = {h: b"".join(api.iter_lines(h)) for h in hours}
    assert ranged == alone  # an hour in a range run is the same hour exported alone
    assert server.windows == [("20200125T17", "20200125T19"), ("20200125T20", "20200125T21")]
    assert not api._spools and not api._plan


def test_prefetch_routes_rows_by_server_upload_time(server):
    hours = [HOUR + timedelta(hours=i) for i in range(3)]
    late = json.dumps({"server_upload_time": "2020-01-25T19:59:59Z", "m": "late"})
    broken = json.dumps({"server_upload_time": "garbage", "m": "broken"})
    outside = json.dumps({"server_upload_time": "2020-01-26 03:00:00", "m": "outside"})
    window_server(server, lambda h: [late, broken, outside] if h == HOUR else [])
    api = source(server)
    api.prefetch(hours)
    got = {h: [json.loads(line)["m"] for line in b"".join(api.iter_lines(h)).splitlines()] for h in hours}
    assert got == {hours[0]: [1, 2, "broken", "outside"], hours[1]: [1, 2], hours[2]: ["late", 1, 2]}  # entry order, then line order
    assert len(server.requests) == 1


def test_prefetch_halves_too_large_windows_and_fails_only_the_hour_that_cannot_split(server):
    hours = [HOUR + timedelta(hours=i) for i in range(4)]
    window_server(server)
    answer = server.fallback

    def reply(start: str, end: str) -> Reply:
        if start != end or start == "20200125T18":
            return Reply(400, b"Raw data files too large")
        return answer(start, end)

    server.fallback = reply
    api = source(server)
    api.prefetch(hours)
    assert len(b"".join(api.iter_lines(hours[0])).splitlines()) == 2
    with pytest.raises(ExportApiError, match="hour 2020-01-25-18:00 failed with HTTP 400"):
        list(api.iter_lines(hours[1]))
    assert [len(b"".join(api.iter_lines(h)).splitlines()) for h in hours[2:]] == [2, 2]
    singles = [s for s, e in server.windows if s == e]
    assert sorted(singles) == sorted(set(singles)) == [h.strftime("%Y%m%dT%H") for h in hours]


def test_prefetch_of_an_empty_window_and_of_refused_credentials(server):
    hours = [HOUR + timedelta(hours=i) for i in range(3)]
    api = source(server)
    api.prefetch(hours)
    assert [list(api.iter_lines(h)) for h in hours] == [[], [], []]  # 404 for the window
    assert len(server.requests) == 1

    server.fallback = lambda start, end: Reply(401)
    api = source(server)
    api.prefetch(hours)
    for h in hours:
        with pytest.raises(ExportApiAuthError):
            list(api.iter_lines(h))
    assert len(server.requests) == 2


def test_window_halves_never_overlap():
    for n in range(1, 30):
        window = Window(HOUR, HOUR + timedelta(hours=n - 1))
        if n == 1:
            continue
        first, second = window.halves()
        assert first.first == window.first and second.last == window.last
        assert second.first == first.last + timedelta(hours=1)
        assert first.hours + second.hours == window.hours


def test_region_hosts_and_the_url_override(clean_env):
    eu = Settings.from_env({"AMPLITUDE_REGION": "eu", "AMPLITUDE_SOURCE": "export_api"})
    assert eu.export_api_base_url == "https://analytics.eu.amplitude.com"
    assert Settings.from_env({}).export_api_base_url == "https://amplitude.com"
    proxied = Settings.from_env({"AMPLITUDE_REGION": "eu", "AMPLITUDE_EXPORT_API_URL": "http://127.0.0.1:9/"})
    assert proxied.export_api_base_url == "http://127.0.0.1:9"
    api = AmplitudeSource(kind="export_api", export_api_url=eu.export_api_base_url, api_key=KEY,
                          secret_key=SECRET).open()
    assert isinstance(api, ExportApiSource)
    assert api.url == "https://analytics.eu.amplitude.com/api/2/export"


# -- through Dagster, into Azurite ----------------------------------------------------------


@pytest.fixture
def api_env(container, settings_env, server):
    settings_env(AMPLITUDE_SOURCE="export_api", AMPLITUDE_EXPORT_API_URL=server.url, AMPLITUDE_API_KEY=KEY,
                 AMPLITUDE_SECRET_KEY=SECRET, AMPLITUDE_START="2020-01-25-00:00")
    return container


def test_messy_hour_end_to_end_through_dagster(api_env, server, blobs):
    # The messy hour arrives split over two entries, the first without its final newline.
    half = len(MESSY) // 2
    server.script(HOUR, Reply(200, make_zip({
        entry(HOUR, 1): "\n".join(MESSY[half:]).encode(),
        entry(HOUR, 0): "\n".join(MESSY[:half]).encode(),
    })))
    result = materialize(definitions(), ["events"], partition="2020-01-25-17:00")
    assert result.success
    stored = blobs(api_env)
    folder = f"{PROJECT}/{PROJECT}_2020-01-25_17"
    rows = lines_of(stored[f"{folder}#0.json.gz"])
    assert [r["server_upload_time"][11:] for r in rows] == [
        "17:00:01.123456", "17:10:00.000000", "17:20:00.100000", "17:40:00.000000", "17:59:59.999999"]
    manifest = json.loads(stored[f"{folder}_complete"])
    assert manifest["source"] == "export_api"
    assert manifest["counts"] == {"source_rows": 13, "exported": 5, "duplicates": 3, "filtered": 0,
                                  "rejected": 5, "repaired": 1}
    rejected = lines_of(stored[f"_rejected/{PROJECT}/{PROJECT}_2020-01-25_17.jsonl.gz"])
    assert [r["line"] for r in rejected] == [MESSY[4], MESSY[5], MESSY[9], MESSY[10], MESSY[11]]
    assert all(r["reason"] for r in rejected)
    # The repaired value's original is kept beside the hour, as sent.
    repaired = f"_repaired/{PROJECT}/{PROJECT}_2020-01-25_17.jsonl.gz"
    assert gzip.decompress(stored[repaired]) == (
        b'{"uuid":"0a6e8a48-6c5e-4a1d-9d7a-0f0b7a1e2c02","$insert_id":null,"field":"app","value":"12x"}\n'
    )

    metadata = result.asset_materializations_for_node("events")[0].metadata
    assert metadata["count_source_rows"].value == 13 and metadata["reconciled"].value is True
    assert metadata["repaired_values"].value == f"{api_env}/{repaired}"
    assert metadata["rejected_lines"].value == f"{api_env}/_rejected/{PROJECT}/{PROJECT}_2020-01-25_17.jsonl.gz"
    everything = " ".join(str(e) for e in result.all_events) + " ".join(map(repr, stored.values()))
    assert KEY not in everything and SECRET not in everything


def hours_between(start: str, end: str) -> list[datetime]:
    first = datetime.strptime(start, "%Y%m%dT%H").replace(tzinfo=timezone.utc)
    last = datetime.strptime(end, "%Y%m%dT%H").replace(tzinfo=timezone.utc)
    return [first + timedelta(hours=i) for i in range(int((last - first).total_seconds() // 3600) + 1)]


def test_range_run_fetches_each_hour_once_with_an_inclusive_end(api_env, server, blobs):
    def reply(start: str, end: str) -> Reply:
        entries = {}
        for hour in hours_between(start, end):
            if hour.hour != 16:  # hour 16 has no events
                line = {"server_upload_time": f"{hour:%Y-%m-%d %H}:30:00", "event_type": f"h{hour.hour}"}
                entries[entry(hour, 0)] = json.dumps(line).encode()
        return Reply(200, make_zip(entries)) if entries else Reply(404, b"Raw data files were not found.")

    server.fallback = reply
    result = materialize(definitions(), ["events"], start="2020-01-25-16:00", end="2020-01-25-18:00")
    assert result.success
    # The range is fetched as one window (the run prefetches it), and no hour twice.
    assert server.windows == [("20200125T16", "20200125T18")]
    fetched = [h.strftime("%Y%m%dT%H") for s, e in server.windows for h in hours_between(s, e)]
    assert fetched == ["20200125T16", "20200125T17", "20200125T18"]
    stored = blobs(api_env)
    empty = json.loads(stored[f"{PROJECT}/{PROJECT}_2020-01-25_16_complete"])
    assert empty["parts"] == [] and empty["counts"]["source_rows"] == 0
    assert not any(n.startswith(f"{PROJECT}/{PROJECT}_2020-01-25_16#") for n in stored)
    for h in (17, 18):
        assert [r["event_type"] for r in lines_of(stored[f"{PROJECT}/{PROJECT}_2020-01-25_{h}#0.json.gz"])] == [f"h{h}"]


def test_requests_use_an_inclusive_end_hour_by_hour(server):
    api = source(server)
    for i in range(3):
        list(api.iter_lines(HOUR + timedelta(hours=i)))
    assert server.windows == [("20200125T17", "20200125T17"), ("20200125T18", "20200125T18"),
                              ("20200125T19", "20200125T19")]


def test_a_failing_hour_fails_the_run_naming_the_hour(api_env, server):
    server.script(HOUR, Reply(401, b"Invalid"))
    result = materialize(definitions(), ["events"], partition="2020-01-25-17:00", raise_on_error=False)
    assert not result.success
    text = " ".join(str(e) for e in result.all_events)
    assert "2020-01-25-17:00" in text and "AMPLITUDE_API_KEY" in text
    assert KEY not in text and SECRET not in text
