"""Helpers shared by the tests: the definitions and runs, sensor ticks, runs the daemon would
record, a loopback HTTP server, and checks that must be able to fail.

Fixtures live in tests/conftest.py; this module holds plain functions and classes.
"""

from __future__ import annotations

import copy
import gzip
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg

from amplitude_assets.definitions import build_definitions
from amplitude_assets.partitions import hourly_partitions
from amplitude_assets.settings import Settings
from amplitude_assets.sources.files import FilesSource

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
LOCATION = "amplitude_assets"  # the code location's name in workspace.yaml and deploy/


def definitions() -> dg.Definitions:
    """The code location as it loads with the current environment (set it with `settings_env`)."""
    return build_definitions(Settings.from_env())


def materialize(defs: dg.Definitions, selection: list[str], *, partition: str | None = None,
                start: str | None = None, end: str | None = None, instance=None, raise_on_error=True):
    """Run `selection` for one partition, or for an inclusive range as Dagster's range runs do."""
    job = defs.resolve_implicit_global_asset_job_def()
    tags = {RANGE_START: start, RANGE_END: end} if start else None
    return job.execute_in_process(
        instance=instance or dg.DagsterInstance.ephemeral(),
        partition_key=partition,
        tags=tags,
        asset_selection=[dg.AssetKey(k) for k in selection],
        raise_on_error=raise_on_error,
    )


class Ticker:
    """Evaluates a sensor tick after tick in process, carrying its cursor as the daemon does.

    `build(settings, partitions, now=...)` builds the sensor from the environment at each tick,
    with "now" fixed at `now` (change it between ticks to move the clock). With `storage`, the
    context has the code location's definitions and its storage resource, which
    hourly_export_sensor reads. `tick()` returns what the daemon records of the tick
    (run requests, skip message, cursor, asset events)."""

    def __init__(self, build: Callable[..., dg.SensorDefinition], instance: dg.DagsterInstance, now: datetime,
                 *, storage: bool = False):
        self.build, self.instance, self.now, self.storage = build, instance, now, storage
        self.cursor: str | None = None

    def tick(self):
        settings = Settings.from_env()
        sensor = self.build(settings, hourly_partitions(settings), now=lambda: self.now)
        location = {}
        if self.storage:
            defs = definitions()
            location = {"definitions": defs, "resources": {"storage": defs.resources["storage"]}}
        data = sensor.evaluate_tick(dg.build_sensor_context(instance=self.instance, cursor=self.cursor, **location))
        self.cursor = data.cursor
        return data


def part_slices(height: int, max_rows: int) -> list[tuple[int, int]]:
    """(offset, length) of each part of a whole hour: at most `max_rows` rows, no empty part.

    With `whole_hour` (tests/reference.py), `encode_lines` and `gzip_bytes`, the whole-hour reference the
    chunked export is compared with, byte for byte."""
    return [(offset, min(max_rows, height - offset)) for offset in range(0, height, max_rows)]


def lines_of(gz: bytes) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(gz).decode().splitlines()]


def keys_in_order(line: str) -> list[str]:
    return list(json.loads(line, object_pairs_hook=lambda pairs: dict(pairs)).keys())


def read_as_export_files(root: Path, project: str, lines: list[str], hour: datetime) -> Iterator[bytes]:
    """`lines` written under `root` as Amplitude's export files of `hour` (two parts, as Amplitude
    splits an hour, and its non-gzip marker), then read back by the `files` source."""
    folder = root / project
    folder.mkdir()
    stem = f"{project}_{hour:%Y-%m-%d}_{hour.hour}"
    (folder / f"{stem}#0.json.gz").write_bytes(gzip.compress(("\n".join(lines[:2]) + "\n").encode()))
    (folder / f"{stem}#1.json.gz").write_bytes(gzip.compress(("\n".join(lines[2:]) + "\n").encode()))
    (folder / f"{stem}_complete").write_bytes(b"")
    return FilesSource(str(root), project).iter_lines(hour)


class LoopbackHTTP:
    """A real HTTP server on a free 127.0.0.1 port, answering with `handler` in threads of its own.

    Use it as a context manager (`with Server() as server:`): it serves inside the block and is
    shut down and closed after it."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def assert_notices(check: Callable[..., list[str]], change: Callable[..., object], expected: str, *documents) -> None:
    """A check that returns the differences it finds notices `change`: run on changed copies of
    `documents` (the originals are left as they are), one of its findings names `expected`."""
    changed = copy.deepcopy(documents)
    change(*changed)
    found = check(*changed)
    assert any(expected in difference for difference in found), found


# -- Dagster's private names: the only place the tests use them ------------------------------
#
# Three things the tests need have no public Dagster API:
#  - a sensor turned on: the UI and the daemon store its state (InstigatorState) with the sensor's
#    origin, and freshness_sensor reads it to tell whether hourly_export_sensor is on; the public
#    way, the UI's startSensor mutation, needs a running webserver (the e2e tests use it);
#  - a queued run: Dagster refuses to store one without its job's origin (RemoteJobOrigin), which
#    only the daemon and the webserver build;
#  - an in-progress backfill's target: amplitude_assets/backfills.py is the package's one adapter
#    onto it, and tests/test_backfills.py checks the private names that adapter relies on.
# Keep every `dagster._core` import in the functions below.


def _repository_origin():
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin

    return RemoteRepositoryOrigin(RegisteredCodeLocationOrigin(LOCATION), "__repository__")


def turn_on_sensor(instance: dg.DagsterInstance, name: str, min_interval: int = 300) -> None:
    """Store `name` as running in `instance`, as turning it on in the UI does."""
    from dagster._core.definitions.sensor_definition import SensorType
    from dagster._core.remote_origin import RemoteInstigatorOrigin
    from dagster._core.scheduler.instigation import (
        InstigatorState,
        InstigatorStatus,
        InstigatorType,
        SensorInstigatorData,
    )

    instance.add_instigator_state(InstigatorState(
        RemoteInstigatorOrigin(_repository_origin(), name), InstigatorType.SENSOR, InstigatorStatus.RUNNING,
        SensorInstigatorData(min_interval=min_interval, sensor_type=SensorType.STANDARD),
    ))


def add_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus, tags: dict[str, str],
            assets: tuple[str, ...] = ("events", "merged_ids")) -> dg.DagsterRun:
    """A run of the asset job in `instance` as the daemon records it: with its job's origin, which a
    queued run needs. Nothing executes it; report its end with `instance.report_run_failed(run)`."""
    from dagster._core.remote_origin import RemoteJobOrigin

    run = dg.DagsterRun(
        job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=status, tags=tags,
        asset_selection=frozenset(dg.AssetKey(a) for a in assets),
        remote_job_origin=RemoteJobOrigin(_repository_origin(), "__ASSET_JOB"),
    )
    instance.add_run(run)
    return run


def backfill_classes() -> tuple[type, type]:
    """(PartitionBackfill, AssetBackfillData): what `instance.get_backfills` returns, and its
    `asset_backfill_data`, which amplitude_assets/backfills.py reads."""
    from dagster._core.execution.asset_backfill import AssetBackfillData
    from dagster._core.execution.backfill import PartitionBackfill

    return PartitionBackfill, AssetBackfillData
