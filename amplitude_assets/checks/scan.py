"""One read of an hour's files for the schema and the unique checks, a batch at a time.

One thread downloads and decompresses the next batch; the batches before it are scanned
side by side, one DuckDB thread each (a batch is smaller than the row group DuckDB splits
work by, so one query would use one core); results are taken in order, on the calling
thread: the failed lines are diagnosed (`problems.SchemaProblems`) and the keys kept
(`repeats.HourKeys`).
"""

from __future__ import annotations

import collections
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import polars as pl
from azure.storage.blob import ContainerClient

from amplitude_assets import duck
from amplitude_assets.checks.blobs import BATCH_BYTES, Batch, iter_batches
from amplitude_assets.checks.outcome import MAX_REPORTED, Found
from amplitude_assets.checks.positions import Positions
from amplitude_assets.checks.problems import SchemaProblems
from amplitude_assets.checks.repeats import HourKeys
from amplitude_assets.lines import prefetch
from amplitude_assets.validation import LineRules, scan_sql


@dataclass
class LinesScan:
    """What one read of an hour's files found: per check, the problems, and the facts."""

    schema: list[Found]
    unique: list[Found]
    facts: dict
    largest_batch: int  # lines in the largest batch handled: the working set's bound


def scan_files(client: ContainerClient, names: list[str], rules: LineRules, *, schema: bool = True,
               unique: bool = True, batch_bytes: int = BATCH_BYTES) -> LinesScan:
    """Read the files once, a batch at a time, for the schema and the unique checks.

    One thread downloads and decompresses the next batch; the batches before it are
    scanned side by side, one DuckDB thread each (a batch is smaller than the row group
    DuckDB splits work by, so one query would use one core); results are taken in order.
    """
    connections = Connections(duck.limits()["threads"])
    hour = HourScan(rules, schema=schema, unique=unique)
    try:
        hour.read(client, names, batch_bytes, connections)
    finally:
        connections.close()
    return hour.result(client, names)


class Connections:
    """A DuckDB connection per thread that asks for one, single-threaded, all of them sharing the
    one database and its memory limit (`duck.connect`); all closed together."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.local = threading.local()
        self.opened: list = []

    def get(self):
        if not hasattr(self.local, "con"):
            self.local.con = duck.connect(threads=1)
            self.opened.append(self.local.con)
        return self.local.con

    def close(self) -> None:
        for con in self.opened:
            con.close()


def first_keys(con, batch: Batch) -> list[str] | None:
    """The keys, in order, of the batch's first line that is a JSON object; None when there is none."""
    con.register("lines", pl.DataFrame({"text": batch.lines}).with_row_index("_i").to_arrow())
    try:
        first = con.sql("SELECT k FROM (SELECT _i, try(json_keys(text)) AS k, try(json_type(text)) AS t "
                        "FROM lines) WHERE t = 'OBJECT' ORDER BY _i LIMIT 1").fetchall()
    finally:
        con.unregister("lines")
    return list(first[0][0]) if first else None


def scan_batch(connections: Connections, batch: Batch, sql: str | None, key_fields: list[str]) -> pl.DataFrame:
    """Per line of the batch: `ok` (passes the scan) and the unique keys' fields, as text."""
    if sql is None:  # no JSON object in the hour yet: every line is looked at closely
        return pl.DataFrame({"ok": [False] * len(batch.lines),
                             **{n: pl.Series([None] * len(batch.lines), dtype=pl.String) for n in key_fields}})
    con = connections.get()
    con.register("lines", pl.DataFrame({"text": batch.lines}).with_row_index("_i")
                 .to_arrow(compat_level=pl.CompatLevel.newest()))
    try:
        return con.sql(sql).pl()
    finally:
        con.unregister("lines")


class HourScan:
    """The state of one read of an hour: where each line is, the hour's keys once its first
    JSON object is read, and what the schema and unique checks found so far."""

    def __init__(self, rules: LineRules, *, schema: bool, unique: bool) -> None:
        self.rules, self.schema, self.unique = rules, schema, unique
        self.read_problems: list[dict] = []
        self.positions = Positions()
        self.schema_problems = SchemaProblems(rules)
        self.keys = HourKeys(rules.unique)
        self.key_fields = list(dict.fromkeys(n for key in rules.unique for n in key))
        self.expected: list[str] | None = None
        self.extras: set[str] = set()
        self.sql: str | None = None
        self.largest = 0

    def read(self, client: ContainerClient, names: list[str], batch_bytes: int, connections: Connections) -> None:
        """Scan the files' batches side by side, `connections.workers` at a time, taking each in order."""
        pending: collections.deque[tuple[Batch, int, Future]] = collections.deque()
        with ThreadPoolExecutor(max_workers=connections.workers, thread_name_prefix="amplitude-check") as pool:
            for batch in prefetch(iter_batches(client, names, self.read_problems, batch_bytes)):
                start = self.positions.add(batch)
                self.largest = max(self.largest, len(batch.lines))
                self.learn_keys(connections, batch)
                pending.append((batch, start, pool.submit(scan_batch, connections, batch, self.sql, self.key_fields)))
                del batch
                self.take_until(pending, connections.workers - 1, connections)
            self.take_until(pending, 0, connections)

    def learn_keys(self, connections: Connections, batch: Batch) -> None:
        """Until the hour's first JSON object is read: the hour's keys and the scan's SQL from it."""
        if self.expected is None and (first := first_keys(connections.get(), batch)) is not None:
            self.expected = self.rules.expected_keys(first)
            self.extras = set(self.expected) - set(self.rules.head)
            self.sql = scan_sql(self.rules, self.expected)

    def take_until(self, pending: collections.deque, left: int, connections: Connections) -> None:
        """Take the oldest scans, in order, until `left` are pending."""
        while len(pending) > left:
            batch, start, future = pending.popleft()
            self.take(connections, batch, start, future.result())

    def take(self, connections: Connections, batch: Batch, start: int, scanned: pl.DataFrame) -> None:
        if self.schema and not scanned["ok"].all():
            self.schema_problems.add(connections.get(), batch, scanned["ok"], self.expected, self.extras)
        if self.unique:
            self.keys.add(scanned, start)

    def result(self, client: ContainerClient, names: list[str]) -> LinesScan:
        """The checks' problems, once every batch is taken; repeated lines are read again to show their keys."""
        facts = {"files_checked": len(names), "lines_checked": self.positions.total}
        read = self.read_problems
        read_found = Found(read[:MAX_REPORTED], len(read))
        unique_found = [Found(read[:MAX_REPORTED], len(read))]
        if self.unique:
            unique_found += self.keys.found(client, self.positions)
        return LinesScan(schema=[read_found, *self.schema_problems.found()], unique=unique_found,
                         facts=facts, largest_batch=self.largest)
