"""One writer per hour, against a real Azurite: two exports of one hour at once never mix.

Each export of an events or merged-ID hour holds a renewed blob lease on the hour's lock
blob. These tests run two exports of one hour at the same time, with different splits
and different content, and check that every round ends with the hour exactly one
export's (its marker naming exactly the parts present, with their MD5s and rows) while
the other export failed, saying so. They also kill a process holding an hour's lease.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timezone

import dagster as dg
import polars as pl
import pytest
from azure.storage.blob import BlobLeaseClient, ContainerClient

from amplitude_assets.destination import lease as lease_module
from amplitude_assets.layout import EventsLayout, MergedIdsLayout
from amplitude_assets.destination.lease import HourLocked, LeaseLost, hour_lease
from amplitude_assets.destination.writer import (
    encode_records,
    export_events_hour,
    gzip_bytes,
    jsonl_bytes,
)
from amplitude_assets.destination.merged_writer import write_merged_ids_hour
from amplitude_assets.schema import MERGED_ID_FIELDS
from amplitude_assets.settings import Settings, SettingsError
from amplitude_assets.sources.synthetic import SyntheticSource
from tests.reference import whole_hour
from tests.conftest import ROOT, environment
from tests.helpers import definitions, materialize, part_slices

HOUR = datetime(2020, 1, 25, 17, tzinfo=timezone.utc)
PROJECT = "187520"
SCOPE = "-4242"
EVENTS = EventsLayout("", PROJECT)
MERGED = MergedIdsLayout("merged_ids", SCOPE)
SPLITS = (300, 700)
WAIT = 0.5  # seconds a second export waits; each export below holds its hour for seconds
SINCE = r"since \d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z"


@pytest.fixture
def client(fresh_container) -> ContainerClient:
    return fresh_container("lease")


def source_lines(seed: int, events: int = 900) -> list[str]:
    return [line for chunk in SyntheticSource(PROJECT, events, seed).iter_lines(HOUR) for line in chunk.decode().splitlines()]


def chunks_of(lines: list[str], pause: float = 0.0, per_chunk: int = 90):
    """The hour's source, `per_chunk` lines at a time, each chunk arriving `pause` seconds late."""
    for i in range(0, len(lines), per_chunk):
        time.sleep(pause)
        yield ("\n".join(lines[i : i + per_chunk]) + "\n").encode()


def expected_parts(lines: list[str], max_rows: int) -> list[bytes]:
    """The parts an export of `lines` must leave, from the whole-hour path."""
    whole = whole_hour(chunks_of(lines), HOUR)
    return [
        gzip_bytes(jsonl_bytes(whole.lines.slice(offset, length).to_frame()))
        for offset, length in part_slices(whole.frame.height, max_rows)
    ]


def export(client, lines, max_rows, *, pause=0.0, wait=WAIT, holder=None, notify=None):
    return export_events_hour(
        client, EVENTS, chunks_of(lines, pause), HOUR, keep=None, source="synthetic",
        max_rows_per_file=max_rows, lines_per_chunk=97, lock_wait_seconds=wait, holder=holder, notify=notify,
    )


def gunzip_lines(data: bytes) -> int:
    import gzip

    return len(gzip.decompress(data).splitlines())


def assert_events_hour_is(client: ContainerClient, parts: list[bytes]) -> None:
    """The hour holds exactly `parts`, and its marker names exactly them, with MD5s and rows."""
    marker = json.loads(client.download_blob(EVENTS.marker(HOUR)).readall())
    names = [EVENTS.part(HOUR, n) for n in range(len(parts))]
    listed = {b.name: b for b in client.list_blobs(name_starts_with=EVENTS.parts_prefix(HOUR))}
    assert sorted(listed) == sorted(names)
    assert [EVENTS.folder + p["name"] for p in marker["parts"]] == names
    for entry, name, want in zip(marker["parts"], names, parts):
        assert client.download_blob(name).readall() == want
        assert entry == {"name": name.rsplit("/", 1)[1], "rows": gunzip_lines(want), "bytes": len(want),
                         "md5": hashlib.md5(want).hexdigest()}
        assert bytes(listed[name].content_settings.content_md5) == hashlib.md5(want).digest()
    assert marker["rows"] == sum(gunzip_lines(p) for p in parts)


def lock_blobs(client: ContainerClient) -> list[str]:
    return [b.name for b in client.list_blobs(name_starts_with="_locks/")] + [
        b.name for b in client.list_blobs(name_starts_with="merged_ids/_locks/")
    ]


def run_at_once(*calls):
    """Run the calls in threads released together; each outcome is "ok" or the exception."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[object] = [None] * len(calls)

    def go(i, call):
        barrier.wait()
        try:
            call()
            outcomes[i] = "ok"
        except Exception as exc:  # noqa: BLE001 - the outcome is under test
            outcomes[i] = exc

    threads = [threading.Thread(target=go, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


# -- names and the setting ---------------------------------------------------------------


def test_lock_blobs_are_named_in_layout_outside_the_folders_readers_glob():
    assert EVENTS.lock(HOUR) == "_locks/187520/187520_2020-01-25_17.lock"
    assert EventsLayout("raw/amp", PROJECT).lock(HOUR.replace(hour=5)) == "raw/amp/_locks/187520/187520_2020-01-25_5.lock"
    assert MERGED.lock(HOUR) == "merged_ids/_locks/-4242/-4242_2020-01-25_17.lock"
    assert MergedIdsLayout("", PROJECT).lock(HOUR) == "_locks/187520/187520_2020-01-25_17.lock"
    assert not EVENTS.lock(HOUR).startswith(EVENTS.folder)
    assert not MERGED.lock(HOUR).startswith(MERGED.folder)


def test_the_wait_setting():
    assert Settings.from_env({}).hour_lock_wait_seconds == 600
    assert Settings.from_env({"AMPLITUDE_HOUR_LOCK_WAIT_SECONDS": "5"}).hour_lock_wait_seconds == 5
    with pytest.raises(SettingsError, match="AMPLITUDE_HOUR_LOCK_WAIT_SECONDS must be a whole number"):
        Settings.from_env({"AMPLITUDE_HOUR_LOCK_WAIT_SECONDS": "soon"})


# -- the lease ---------------------------------------------------------------------------


def test_the_lease_is_renewed_for_as_long_as_it_is_held(client):
    name = EVENTS.lock(HOUR)
    with hour_lease(client, name, "events 2020-01-25-17:00", 0, holder="run-a", lease_seconds=15) as held:
        time.sleep(17)  # past the lease's 15 s: only its renewals keep it
        with pytest.raises(HourLocked, match=r"\(run run-a, "):
            with hour_lease(client, name, "events 2020-01-25-17:00", 0, holder="run-b"):
                pass
        held.confirm()
        assert client.get_blob_client(name).get_blob_properties().metadata["run_id"] == "run-a"
    assert lock_blobs(client) == []


# -- events ------------------------------------------------------------------------------


def test_two_exports_of_one_events_hour_at_once_never_mix(client):
    for round_ in range(4):
        contents = [source_lines(seed=10 * round_ + i) for i in range(2)]
        outcomes = run_at_once(*[
            lambda i=i: export(client, contents[i], SPLITS[i], pause=0.25, holder=f"run-{i}") for i in range(2)
        ])
        assert sorted(o == "ok" for o in outcomes) == [False, True], outcomes
        winner = outcomes.index("ok")
        failure = outcomes[1 - winner]
        assert isinstance(failure, HourLocked)
        assert re.match(
            rf"events 2020-01-25-17:00: another export holds this hour {SINCE} \(run run-{winner}, host .+, pid {os.getpid()}\); "
            rf"gave up after waiting 0\.5 s \(AMPLITUDE_HOUR_LOCK_WAIT_SECONDS\)\. Nothing of the hour was changed\.",
            str(failure),
        ), str(failure)
        want = expected_parts(contents[winner], SPLITS[winner])
        assert len(want) == (3, 2)[winner]
        assert_events_hour_is(client, want)
        assert lock_blobs(client) == []  # the lease ends with the export


def test_a_locked_hour_fails_clearly_and_leaves_the_earlier_export_whole(client):
    first, second = source_lines(seed=1), source_lines(seed=2)
    export(client, first, 300)
    before = {b.name: (b.etag, bytes(b.content_settings.content_md5 or b"")) for b in client.list_blobs()}
    with hour_lease(client, EVENTS.lock(HOUR), "events 2020-01-25-17:00", 0, holder="run-x"):
        started = time.monotonic()
        told: list[str] = []
        with pytest.raises(HourLocked) as failure:
            export(client, second, 700, wait=1, notify=told.append)
        assert 1 <= time.monotonic() - started < 5
    assert len(told) == 1 and re.fullmatch(
        rf"events 2020-01-25-17:00: another export holds this hour {SINCE} \(run run-x, host .+, pid {os.getpid()}\); "
        r"waiting up to 1 s for it \(AMPLITUDE_HOUR_LOCK_WAIT_SECONDS\)", told[0]), told
    assert str(failure.value).startswith("events 2020-01-25-17:00: another export holds this hour since ")
    assert re.search(rf"{SINCE} \(run run-x, host .+, pid {os.getpid()}\); gave up after waiting 1 s "
                     r"\(AMPLITUDE_HOUR_LOCK_WAIT_SECONDS\)\. Nothing of the hour was changed\. The hour is free once that "
                     r"export ends, or within 30 s if it was killed: run it again then\.$", str(failure.value))
    after = {b.name: (b.etag, bytes(b.content_settings.content_md5 or b"")) for b in client.list_blobs()}
    assert after == before
    assert_events_hour_is(client, expected_parts(first, 300))


def test_an_export_waits_for_the_hour_and_then_replaces_it(client):
    first, second = source_lines(seed=1), source_lines(seed=2)
    export(client, first, 300)
    outcome: list[object] = []
    with hour_lease(client, EVENTS.lock(HOUR), "events 2020-01-25-17:00", 0, holder="run-x"):
        thread = threading.Thread(target=lambda: outcome.append(export(client, second, 700, wait=30)))
        thread.start()
        time.sleep(1.5)
        assert thread.is_alive()  # waiting for the hour
        assert_events_hour_is(client, expected_parts(first, 300))
    thread.join(timeout=60)
    assert len(outcome) == 1
    assert_events_hour_is(client, expected_parts(second, 700))


def test_an_export_that_loses_its_lease_writes_no_marker(client):
    lines = source_lines(seed=3)
    outcomes: list[object] = []

    def run():
        try:
            export(client, lines, 300, pause=0.3)
            outcomes.append("ok")
        except Exception as exc:  # noqa: BLE001
            outcomes.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    lock = client.get_blob_client(EVENTS.lock(HOUR))
    deadline = time.monotonic() + 10
    while lock.get_blob_properties().lease.state != "leased" if lock.exists() else True:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    BlobLeaseClient(lock).break_lease(lease_break_period=0)  # as if it had lapsed ...
    BlobLeaseClient(lock).acquire(lease_duration=15)  # ... and another export had taken the hour
    thread.join(timeout=60)
    assert len(outcomes) == 1 and isinstance(outcomes[0], LeaseLost), outcomes
    assert "events 2020-01-25-17:00: this export lost its lease on the hour" in str(outcomes[0])
    assert [b.name for b in client.list_blobs() if not b.name.startswith("_locks/")] == []


def test_a_locked_hour_fails_alone_in_a_range_run(synthetic_hours, settings_env, blobs):
    settings_env(AMPLITUDE_HOUR_LOCK_WAIT_SECONDS=1)
    client = blobs.service.get_container_client(synthetic_hours)
    middle = datetime(2020, 1, 25, 7, tzinfo=timezone.utc)
    instance = dg.DagsterInstance.ephemeral()
    with hour_lease(client, EVENTS.lock(middle), "events 2020-01-25-07:00", 0, holder="run-x"):
        result = materialize(definitions(), ["events"], start="2020-01-25-06:00", end="2020-01-25-08:00",
                             raise_on_error=False, instance=instance)
    assert not result.success
    logged = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any(re.fullmatch(rf"events 2020-01-25-07:00: another export holds this hour {SINCE} \(run run-x, .+\); "
                            r"waiting up to 1 s for it \(AMPLITUDE_HOUR_LOCK_WAIT_SECONDS\)", m) for m in logged), logged
    failure = result.failure_data_for_node("events")
    assert "1 of 3 hour(s) failed to export" in failure.error.message
    [failed] = failure.user_failure_data.metadata["failed_hours"].value
    assert re.match(rf"2020-01-25-07:00: HourLocked: events 2020-01-25-07:00: another export holds this hour {SINCE} "
                    r"\(run run-x, ", failed), failed
    names = {b.name for b in client.list_blobs()}
    assert {f"{PROJECT}/{PROJECT}_2020-01-25_6_complete", f"{PROJECT}/{PROJECT}_2020-01-25_8_complete"} <= names
    assert not any(n.startswith(f"{PROJECT}/{PROJECT}_2020-01-25_7") for n in names)


# -- merged IDs --------------------------------------------------------------------------


class SlowClient(ContainerClient):
    """A real client whose every upload starts late, so that one export holds its hour for a while."""

    def upload_blob(self, *args, **kwargs):
        time.sleep(0.5)
        return super().upload_blob(*args, **kwargs)


def merged_rows(count: int, base: int) -> pl.DataFrame:
    return pl.DataFrame(
        {"scope": [int(SCOPE)] * count, "merge_time": [1579971598455 + i for i in range(count)],
         "merge_server_time": [1579971604040 + i for i in range(count)],
         "amplitude_id": [base + 2 * i for i in range(count)], "merged_amplitude_id": [base + 2 * i + 1 for i in range(count)]},
        schema={name: pl.Int64 for name in MERGED_ID_FIELDS},
    )


def test_two_exports_of_one_merged_ids_hour_at_once_never_mix(client, azurite):
    slow = SlowClient.from_connection_string(azurite, client.container_name)
    for round_, counts in enumerate([(3, 5), (4, 0), (2, 6)]):
        rows = [merged_rows(n, 1000 * (round_ + 1) + 100 * i) for i, n in enumerate(counts)]
        states = [f"state {round_} {i}".encode() for i in range(2)]

        def write(i):
            extra = {"state": {"name": MERGED.state(HOUR), "md5": hashlib.md5(states[i]).hexdigest()}}
            write_merged_ids_hour(slow, MERGED, HOUR, rows[i], states[i], source="synthetic",
                                  counts={"merges": rows[i].height}, extra=extra, lock_wait_seconds=WAIT, holder=f"run-{i}")

        outcomes = run_at_once(lambda: write(0), lambda: write(1))
        assert sorted(o == "ok" for o in outcomes) == [False, True], outcomes
        winner = outcomes.index("ok")
        failure = outcomes[1 - winner]
        assert isinstance(failure, HourLocked)
        assert re.match(rf"merged_ids 2020-01-25-17:00: another export holds this hour {SINCE} \(run run-{winner}, ",
                        str(failure)), str(failure)

        marker = json.loads(client.download_blob(MERGED.marker(HOUR)).readall())
        present = sorted(b.name for b in client.list_blobs(name_starts_with=MERGED.folder) if not b.name.endswith("_complete"))
        state = client.download_blob(MERGED.state(HOUR)).readall()
        assert state == states[winner] and marker["state"]["md5"] == hashlib.md5(state).hexdigest()
        if rows[winner].height:
            data = encode_records(rows[winner])
            assert present == [MERGED.file(HOUR)]
            assert client.download_blob(MERGED.file(HOUR)).readall() == data
            assert marker["parts"] == [{"name": MERGED.file(HOUR).rsplit("/", 1)[1], "rows": rows[winner].height,
                                        "bytes": len(data), "md5": hashlib.md5(data).hexdigest()}]
        else:
            assert present == [] and marker["parts"] == []
        assert marker["counts"] == {"merges": rows[winner].height}
        assert lock_blobs(client) == []


def test_a_locked_merged_ids_hour_fails_the_asset_naming_the_hour(synthetic_hours, settings_env, blobs):
    settings_env(AMPLITUDE_ORG_ID=4242, AMPLITUDE_HOUR_LOCK_WAIT_SECONDS=1)
    client = blobs.service.get_container_client(synthetic_hours)
    hour = datetime(2020, 1, 25, 9, tzinfo=timezone.utc)
    assert materialize(definitions(), ["events"], partition="2020-01-25-09:00").success
    with hour_lease(client, MERGED.lock(hour), "merged_ids 2020-01-25-09:00", 0, holder="run-x"):
        result = materialize(definitions(), ["merged_ids"], partition="2020-01-25-09:00", raise_on_error=False)
    assert not result.success
    message = result.failure_data_for_node("merged_ids").error.message
    assert re.search(rf"merged_ids 2020-01-25-09:00 failed: HourLocked: merged_ids 2020-01-25-09:00: another export "
                     rf"holds this hour {SINCE} \(run run-x, ", message), message
    assert not any(b.name.startswith(MERGED.folder) or b.name.startswith("merged_ids/_state/") for b in client.list_blobs())
    assert materialize(definitions(), ["merged_ids"], partition="2020-01-25-09:00").success


# -- a killed holder ---------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime, timezone
    from azure.storage.blob import ContainerClient
    from amplitude_assets.destination import lease
    from amplitude_assets.layout import EventsLayout
    from amplitude_assets.destination.writer import export_events_hour
    from amplitude_assets.sources.synthetic import SyntheticSource

    lease.LEASE_SECONDS = 15
    hour = datetime(2020, 1, 25, 17, tzinfo=timezone.utc)
    client = ContainerClient.from_connection_string(sys.argv[1], sys.argv[2])

    def chunks():
        yield from SyntheticSource("187520", 900, 99).iter_lines(hour)
        print("holding", flush=True)
        time.sleep(600)

    export_events_hour(client, EventsLayout("", "187520"), chunks(), hour, keep=None, source="synthetic",
                       max_rows_per_file=300, lines_per_chunk=97, holder="killed-run")
    """
)


def test_after_a_holder_is_killed_the_hour_exports_again_once_its_lease_lapses(client, azurite):
    first, last = source_lines(seed=1), source_lines(seed=2)
    export(client, first, 300)
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, azurite, client.container_name],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=environment(PYTHONPATH=str(ROOT)),
    )
    try:
        assert process.stdout.readline().strip() == "holding"
        assert client.get_blob_client(EVENTS.lock(HOUR)).get_blob_properties().lease.state == "leased"
        part = client.get_blob_client(EVENTS.part(HOUR, 0))
        deadline = time.monotonic() + 20
        while not part.get_block_list("uncommitted")[1]:  # killed midway: its blocks are staged
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    killed = time.monotonic()
    assert process.returncode == -signal.SIGKILL

    # The dead process still holds the hour until its lease lapses; the hour is as it was.
    with pytest.raises(HourLocked, match=rf"{SINCE} \(run killed-run, host .+, pid {process.pid}\)"):
        export(client, last, 700, wait=0)
    assert_events_hour_is(client, expected_parts(first, 300))

    # Once it lapses (15 s here, LEASE_SECONDS in production), a new export takes the hour.
    export(client, last, 700, wait=60)
    assert time.monotonic() - killed < 15 + lease_module.POLL_SECONDS + 5
    assert_events_hour_is(client, expected_parts(last, 700))
    assert lock_blobs(client) == []
