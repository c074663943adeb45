"""Two exports of one hour at once: how many rounds end with the hour inconsistent.

    .venv/bin/python -m bench.concurrent_hour

Each round calls `export_events_hour` twice at once on one hour, in two threads, on the
same synthetic hour split into parts of 3,000 and of 7,000 rows, against a local Azurite.
A round is consistent when the hour has a marker that names exactly the parts present,
with their sizes, MD5s and rows, and the parts hold the hour's lines in order. Prints
one line per round and the totals.

Settings (environment):
  BENCH_ROUNDS           rounds (default 15)
  BENCH_EVENTS           events in the hour (default 10,000)
  BENCH_LOCK_WAIT        seconds an export waits for a held hour (default: the setting's default)
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import json
import os
import threading
import uuid
from datetime import datetime, timezone

from azure.storage.blob import BlobServiceClient

from amplitude_assets.layout import EventsLayout
from amplitude_assets.destination.writer import export_events_hour
from amplitude_assets.sources.synthetic import SyntheticSource
from tests.conftest import connection_string, free_port, start_azurite

HOUR = datetime(2020, 1, 25, 17, tzinfo=timezone.utc)
PROJECT = "187520"
SPLITS = (3_000, 7_000)


def check_hour(client, layout: EventsLayout, expected: list[str]) -> str | None:
    """None when the hour is consistent, else what is wrong."""
    listed = {b.name: b for b in client.list_blobs(name_starts_with=layout.parts_prefix(HOUR))}
    try:
        manifest = json.loads(client.download_blob(layout.marker(HOUR)).readall())
    except Exception as exc:  # noqa: BLE001 - any failure to read it is an inconsistent hour
        return f"no marker ({type(exc).__name__})"
    named = [layout.folder + p["name"] for p in manifest["parts"]]
    if sorted(named) != sorted(listed):
        return f"marker names {len(named)} part(s), {len(listed)} present"
    lines: list[str] = []
    for part, name in zip(manifest["parts"], named):
        data = client.download_blob(name).readall()
        text = gzip.decompress(data).decode().splitlines()
        if hashlib.md5(data).hexdigest() != part["md5"] or len(data) != part["bytes"] or len(text) != part["rows"]:
            return f"{name}: not the part its marker describes"
        lines.extend(text)
    if lines != expected:
        return "the parts do not hold the hour's lines"
    return None


def main() -> None:
    rounds = int(os.environ.get("BENCH_ROUNDS", "15"))
    events = int(os.environ.get("BENCH_EVENTS", "10000"))
    wait = os.environ.get("BENCH_LOCK_WAIT")
    source = SyntheticSource(PROJECT, events, 0)
    chunks = list(source.iter_lines(HOUR))
    kwargs = {}
    if wait is not None and "lock_wait_seconds" in inspect.signature(export_events_hour).parameters:
        kwargs["lock_wait_seconds"] = float(wait)

    port = free_port()
    azurite = start_azurite(port, None)
    try:
        service = BlobServiceClient.from_connection_string(connection_string(port))
        client = service.create_container(f"bench{uuid.uuid4().hex[:12]}")
        layout = EventsLayout("", PROJECT)
        # The hour's lines, from a lone export under another prefix.
        alone = EventsLayout("expected", PROJECT)
        export_events_hour(client, alone, iter(chunks), HOUR, keep=None, source="synthetic", max_rows_per_file=events)
        expected = gzip.decompress(client.download_blob(alone.part(HOUR, 0)).readall()).decode().splitlines()
        tally = {"inconsistent": 0, "one_failed": 0, "both_failed": 0, "both_succeeded": 0}
        for n in range(rounds):
            barrier = threading.Barrier(len(SPLITS))
            outcomes: dict[int, str] = {}

            def export(rows: int) -> None:
                barrier.wait()
                try:
                    export_events_hour(client, layout, iter(chunks), HOUR, keep=None, source="synthetic",
                                       max_rows_per_file=rows, **kwargs)
                    outcomes[rows] = "ok"
                except Exception as exc:  # noqa: BLE001 - the outcome is what is measured
                    outcomes[rows] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"

            threads = [threading.Thread(target=export, args=(rows,)) for rows in SPLITS]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            problem = check_hour(client, layout, expected)
            failed = sum(o != "ok" for o in outcomes.values())
            tally["inconsistent"] += problem is not None
            tally[("both_succeeded", "one_failed", "both_failed")[failed]] += 1
            print(f"round {n + 1:2d}: {problem or 'consistent'}; "
                  + "; ".join(f"{rows} rows/part: {outcomes[rows]}" for rows in SPLITS), flush=True)
        print(f"{tally['inconsistent']} of {rounds} rounds inconsistent; both succeeded {tally['both_succeeded']}, "
              f"one failed {tally['one_failed']}, both failed {tally['both_failed']}")
    finally:
        azurite.terminate()
        azurite.wait(timeout=10)


if __name__ == "__main__":
    main()
