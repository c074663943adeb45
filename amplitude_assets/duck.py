"""DuckDB connections with explicit limits.

DuckDB's defaults are 80% of the machine's RAM and one thread per core. In a container
both describe the node, not the pod: a pod limited to 4 GiB on a 64 GiB node would let
DuckDB plan for 51 GiB and be OOM-killed. So every connection gets a `memory_limit` and
`threads` derived from the cgroup limits where there are any, and the settings
`AMPLITUDE_DUCKDB_MEMORY_LIMIT` (e.g. `1GB`) and `AMPLITUDE_DUCKDB_THREADS` override them.
"""

from __future__ import annotations

import functools
import math
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path

import duckdb

from amplitude_assets.errors import SettingsError

MEMORY_SHARE = 0.25  # of the process's memory limit: DuckDB shares the process with polars and the upload
MIN_MEMORY = 256 << 20
CGROUP = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def memory_limit_bytes(root: Path = CGROUP) -> int:
    """The memory this process may use: the cgroup limit (v2 or v1), else the machine's RAM."""
    limits = []
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        text = _read(root / name)
        if text and text.isdigit() and int(text) < 1 << 60:  # v1 says "no limit" with a huge number
            limits.append(int(text))
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        pass
    return min(limits) if limits else 4 << 30


def cpu_limit(root: Path = CGROUP) -> int:
    """The cores this process may use: the cgroup quota (v2 or v1), the affinity mask, the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    text = _read(root / "cpu.max")
    if text:
        quota, _, period = text.partition(" ")
        if quota.isdigit() and period.isdigit() and int(period):
            cores = min(cores, math.ceil(int(quota) / int(period)))
    quota, period = _read(root / "cpu/cpu.cfs_quota_us"), _read(root / "cpu/cpu.cfs_period_us")
    if quota and period and quota.isdigit() and period.isdigit() and int(period):
        cores = min(cores, math.ceil(int(quota) / int(period)))
    return max(1, cores)


_SIZE = re.compile(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)


def settings(env: Mapping[str, str] | None = None) -> tuple[str, int | None]:
    """The two settings, checked: (`memory_limit` or "", `threads` or None)."""
    env = os.environ if env is None else env
    memory = env.get("AMPLITUDE_DUCKDB_MEMORY_LIMIT", "").strip()
    threads = env.get("AMPLITUDE_DUCKDB_THREADS", "").strip()
    if memory and not _SIZE.fullmatch(memory):
        raise SettingsError(f"AMPLITUDE_DUCKDB_MEMORY_LIMIT must be a size such as 1GB or 512MiB, got {memory!r}")
    if threads and not (threads.isdigit() and int(threads) > 0):
        raise SettingsError(f"AMPLITUDE_DUCKDB_THREADS must be a positive whole number, got {threads!r}")
    return memory, int(threads) if threads else None


@functools.cache
def limits() -> dict[str, str | int]:
    """DuckDB's `memory_limit` and `threads` for this process (settings win over cgroups)."""
    memory, threads = settings()
    if not memory:
        memory = f"{max(MIN_MEMORY, int(memory_limit_bytes() * MEMORY_SHARE)) >> 20}MB"
    return {"memory_limit": memory, "threads": threads or cpu_limit()}


_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def size_bytes(text: str) -> int:
    """`1.5GB` -> 1500000000 (DuckDB's units: KB is 1000 bytes, KiB 1024)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text.strip().lower())
    return int(float(match.group(1)) * _UNITS[match.group(2)])


_DATABASES: dict[tuple[str, int], duckdb.DuckDBPyConnection] = {}
_DATABASES_LOCK = threading.Lock()


def connect(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection within this process's limits.

    Opening an in-memory database takes about 17 ms, more than reading a small batch of
    lines, so each process keeps one database per setting and hands out a cursor of it:
    a connection of its own (its registered frames are its own; it may run in another
    thread) that shares the database's limits. `threads` asks for fewer threads.
    Connections that run side by side share the one database, and so its memory limit.
    """
    config = dict(limits())
    if threads is not None:
        config["threads"] = min(threads, config["threads"])
    key = (str(config["memory_limit"]), int(config["threads"]))
    with _DATABASES_LOCK:
        database = _DATABASES.get(key)
        if database is None:
            database = _DATABASES[key] = duckdb.connect(config=config)
        return database.cursor()
