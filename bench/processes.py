"""The processes of a `make bench` run: each contender (`python -m bench.workers KIND`)
run and sampled on its own, its peak RSS and CPU seconds beside those of the services,
and the Export API stand-in started and stopped."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench import data
from bench.settings import API_KEY, ROOT, SECRET_KEY
from tests.conftest import free_port, wait_for_port


class Sampler(threading.Thread):
    """Peak RSS of a process and its children, sampled every 50 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak = 0
        self.cpu = 0.0  # CPU seconds of the tree, as last seen
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
                self.cpu = max(self.cpu, sum(sum(p.cpu_times()[:2]) for p in procs))
            except psutil.Error:
                pass
            self.stop.wait(0.05)


def cpu_seconds(process: psutil.Process) -> float:
    try:
        times = [process.cpu_times(), *(c.cpu_times() for c in process.children(recursive=True))]
    except psutil.Error:
        return 0.0
    return sum(t.user + t.system for t in times)


def run_worker(kind: str, config: dict, services: list[psutil.Process]) -> dict:
    """The contender `kind` in a process of its own: its figures, with the whole process's
    wall, CPU and peak RSS, and the CPU the services used meanwhile."""
    before = [cpu_seconds(s) for s in services]
    started = time.perf_counter()
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.workers", kind, json.dumps(config)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
    )
    sampler = Sampler(process.pid)
    sampler.start()
    out, _ = process.communicate()
    sampler.stop.set()
    sampler.join()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        log.seek(0)
        sys.stderr.write(log.read()[-5000:])
        raise SystemExit(f"bench: the {kind} worker failed (exit {process.returncode})")
    log.close()
    figures = json.loads(out.strip().splitlines()[-1])
    figures["peak_rss"] = max(figures.get("peak_rss", 0), sampler.peak)
    figures["process_seconds"] = wall
    figures["cpu_seconds"] = sampler.cpu
    figures["service_cpu_seconds"] = sum(cpu_seconds(s) - b for s, b in zip(services, before))
    return figures


def start_standin(archive: Path) -> tuple[subprocess.Popen, int]:
    """The Export API stand-in serving `archive` as the bench hour, on a free port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.standin", str(port), str(archive),
         data.HOUR.strftime("%Y%m%dT%H"), API_KEY, SECRET_KEY], cwd=ROOT,
    )
    wait_for_port(port)
    return process, port


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=10)


def warm(archive: Path) -> None:
    """Read the input once, so that no contender pays for a cold page cache."""
    with archive.open("rb") as f:
        while f.read(1 << 24):
            pass
