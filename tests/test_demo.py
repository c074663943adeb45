"""What `make demo` prints: the backfill's summary table in a log file, and the hour it suggests."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

from amplitude_assets.__main__ import output_console, summary_table
from amplitude_assets.destination.credentials import AzureStorage
from amplitude_assets.settings import Settings
from scripts.demo import suggested_hour
from tests.conftest import unique_name

ROW = ("2026-11-29-10:00", "[red]FAILED (run)", "1234567", "12", "4898123456", "12345", "67890", "54321", "98765")
HEADERS = ["hour", "status", "rows", "parts", "bytes", "dups", "filtered", "rejected", "merges"]


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("│┃").split("│" if "│" in line else "┃")]


def render(file) -> str:
    console = output_console(file=file)
    console.print(summary_table("What landed (amplitude-events-of-a-long-name/exports/amplitude)", [ROW, ROW]))
    return file.getvalue() if isinstance(file, io.StringIO) else ""


def test_the_summary_table_sent_to_a_log_keeps_whole_values(settings_env):
    # A terminal-less stream is what `make demo > demo.log` gives the backfill; rich used to
    # fit the table to 80 columns there: `par…`, `fil…`, bytes as `4898…`. COLUMNS=80 must not cut it either.
    settings_env(COLUMNS=80)
    text = render(io.StringIO())
    lines = text.splitlines()
    assert "…" not in text
    assert "What landed (amplitude-events-of-a-long-name/exports/amplitude)" in text
    header = next(line for line in lines if "hour" in line and "merges" in line)
    assert cells(header) == HEADERS
    rows = [cells(line) for line in lines if "2026-11-29-10:00" in line]
    assert rows == [["2026-11-29-10:00", "FAILED (run)", "1234567", "12", "4898123456", "12345", "67890", "54321", "98765"]] * 2
    assert max(len(line) for line in lines) > 80


def test_the_summary_table_in_a_log_file(tmp_path):
    path = tmp_path / "demo.log"
    with path.open("w") as log:
        output_console(file=log).print(summary_table("What landed (amplitude/)", [ROW]))
    rows = [cells(line) for line in path.read_text().splitlines() if "2026-11-29-10:00" in line]
    assert rows == [list(ROW[:1]) + ["FAILED (run)"] + list(ROW[2:])]


def _settings(azurite: str, start: str, container: str) -> Settings:
    return Settings.from_env({
        "AMPLITUDE_START": start, "AZURE_STORAGE_CONNECTION_STRING": azurite, "AZURE_EVENTS_CONTAINER": container,
    })


def test_each_start_suggests_an_hour_not_exported_yet(azurite, fresh_container):
    client = fresh_container("demo-")
    container = client.container_name
    storage = AzureStorage(connection_string=azurite)
    settings = _settings(azurite, "2024-03-05-00:00", container)
    hour = lambda h: datetime(2024, 3, 5, h, tzinfo=timezone.utc)  # noqa: E731
    window = [hour(h) for h in range(10, 14)]

    # Nothing exported: the hour just before the window.
    assert suggested_hour(settings, storage, window) == (hour(9), False)

    def export(*hours: int) -> None:
        for h in hours:
            client.upload_blob(f"187520/187520_2024-03-05_{h}_complete", b"{}", overwrite=True)

    # The first start exported its window; the user then materialized the suggested 09:00.
    export(10, 11, 12, 13, 9)
    assert suggested_hour(settings, storage, window) == (hour(8), False)
    # A later start, its window moved on by two hours, still suggests an hour not exported.
    later = [w + timedelta(hours=2) for w in window]
    export(14, 15)
    assert suggested_hour(settings, storage, later) == (hour(8), False)
    # Only a failed hour of the window is left: that one.
    export(*range(0, 9))
    client.delete_blob("187520/187520_2024-03-05_14_complete")
    assert suggested_hour(settings, storage, later) == (hour(14), False)
    # Every hour exported: the first, said to be exported already.
    export(14)
    assert suggested_hour(settings, storage, later) == (hour(0), True)


def test_a_missing_container_means_nothing_is_exported(azurite):
    settings = _settings(azurite, "2024-03-05-00:00", unique_name("demo-missing-"))
    window = [datetime(2024, 3, 5, h, tzinfo=timezone.utc) for h in (4, 5)]
    assert suggested_hour(settings, AzureStorage(connection_string=azurite), window) == (
        datetime(2024, 3, 5, 3, tzinfo=timezone.utc), False
    )
