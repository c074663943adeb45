"""`make bench`: one hour of events through the export, a naive baseline and the floor.

    BENCH_EVENTS=5000000 make bench

One run, one input: a cached ZIP of gzip JSON lines (bench/data.py) served by a local
Export API stand-in (bench/standin.py), exported to a local Azurite. Each contender runs
in its own process; its peak RSS is that process tree's (Azurite and the stand-in are
outside it, but they share the CPU, so their work is in the wall time). Then a week of
small hours goes through Dagster, batched as the default backfill policy does, and one
run per hour. Prints a table and writes bench/results/latest.json.

Settings (environment):
  BENCH_EVENTS                 events in the hour (default 1,000,000)
  BENCH_SEED                   input seed (default 0)
  BENCH_BASELINE_EVENTS        events the naive baseline processes (default: all, at most 1,000,000;
                               it is compared by events/s)
  BENCH_ONLY                   comma list among export,baseline,floor,dagster (default: all)
  BENCH_DAGSTER_EVENTS_PER_HOUR  size of the week's hours (default 1000)
  BENCH_DAGSTER_HOURS          hours in the Dagster comparison (default 168, a week)
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psutil

from bench import data
from tests.conftest import connection_string, free_port, start_azurite, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
API_KEY, SECRET_KEY = "bench-key", "bench-secret"
MAX_ROWS_PER_FILE = 500_000


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, "").replace("_", "") or default)


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


def machine() -> dict:
    model = ""
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    import polars as pl

    return {
        "cpu": model or platform.processor(), "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(), "python": platform.python_version(), "polars": pl.__version__,
    }


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def table(results: dict, events: int) -> str:
    rows = []
    base = results.get("baseline")
    floor = results.get("floor")
    head = f"{'contender':<10} {'events':>10} {'wall s':>8} {'events/s':>10} {'MB/s in':>8} {'peak RSS':>10} {'vs baseline':>12} {'vs floor':>9}"
    rows.append(head)
    rows.append("-" * len(head))
    for name in ("export", "baseline", "floor"):
        r = results.get(name)
        if not r:
            continue
        rate = r["events_in"] / r["seconds"]
        mbps = r["bytes_in"] / r["seconds"] / 1e6
        vs_base = f"{rate / (base['events_in'] / base['seconds']):.1f}x" if base else "-"
        vs_floor = f"{100 * rate / (floor['events_in'] / floor['seconds']):.0f}%" if floor else "-"
        rows.append(
            f"{name:<10} {r['events_in']:>10,} {r['seconds']:>8.1f} {rate:>10,.0f} {mbps:>8.0f} "
            f"{_mib(r['peak_rss']):>10} {vs_base:>12} {vs_floor:>9}"
        )
    for name in ("export", "baseline", "floor"):
        r = results.get(name)
        if not r:
            continue
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in r["stages"].items())
        rows.append(f"  {name} stages: {stages}")
        if r.get("cpu_seconds"):
            rows.append(f"  {name}: {r['cpu_seconds']:.0f} CPU s in {r['process_seconds']:.0f} s of its process "
                        f"({r['cpu_seconds'] / r['process_seconds']:.1f} cores busy on average)")
        if r.get("service_cpu_seconds"):
            rows.append(f"  {name}: Azurite and the stand-in used {r['service_cpu_seconds']:.1f} CPU s during it")
    dag = results.get("dagster")
    if dag:
        b, p = dag["batched"], dag["per_hour"]
        rows.append("")
        rows.append(f"Dagster, {b['hours']} hours of {b['events_per_hour']} events:")
        rows.append(f"  batched  {b['runs']:>4} runs  {b['seconds']:>7.1f} s  {b['per_hour_seconds']:.2f} s/hour")
        rows.append(f"  per hour {p['runs']:>4} runs  {p['seconds']:>7.1f} s  {p['per_hour_seconds']:.2f} s/hour")
    return "\n".join(rows)


def main() -> None:
    events = _env_int("BENCH_EVENTS", 1_000_000)
    seed = _env_int("BENCH_SEED", 0)
    baseline_events = _env_int("BENCH_BASELINE_EVENTS", min(events, 1_000_000))
    only = set(filter(None, os.environ.get("BENCH_ONLY", "export,baseline,floor,dagster").split(",")))
    dagster_events = _env_int("BENCH_DAGSTER_EVENTS_PER_HOUR", 1000)
    dagster_hours = _env_int("BENCH_DAGSTER_HOURS", 168)

    load_at_start = os.getloadavg()
    t = time.perf_counter()
    archive = data.cached_zip(events, seed)
    print(f"input: {events:,} events, {archive.stat().st_size / 1e6:,.0f} MB ZIP ({archive.name}, "
          f"ready in {time.perf_counter() - t:.1f}s)", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="amplitude-bench-"))
    az_port, api_port = free_port(), free_port()
    azurite = start_azurite(az_port, workdir / "azurite")
    standin = subprocess.Popen(
        [sys.executable, "-m", "bench.standin", str(api_port), str(archive),
         data.HOUR.strftime("%Y%m%dT%H"), API_KEY, SECRET_KEY], cwd=ROOT,
    )
    wait_for_port(api_port)
    services = [psutil.Process(azurite.pid), psutil.Process(standin.pid)]
    common = {
        "connection_string": connection_string(az_port), "base_url": f"http://127.0.0.1:{api_port}",
        "api_key": API_KEY, "secret_key": SECRET_KEY, "hour": data.HOUR.isoformat(),
        "project_id": data.PROJECT_ID, "max_rows_per_file": MAX_ROWS_PER_FILE, "zip": str(archive),
    }
    results: dict = {}
    try:
        for kind in ("export", "baseline", "floor"):
            if kind not in only:
                continue
            config = {**common, "container": f"bench-{kind}-{uuid.uuid4().hex[:8]}"}
            if kind == "baseline" and baseline_events < events:
                config["limit"] = baseline_events
            print(f"running {kind} ...", flush=True)
            results[kind] = run_worker(kind, config, services)
            r = results[kind]
            print(f"  {kind}: {r['events_in']:,} events in {r['seconds']:.1f}s, peak RSS {_mib(r['peak_rss'])}", flush=True)
        if "dagster" in only:
            results["dagster"] = {}
            for mode in ("batched", "per_hour"):
                print(f"running dagster ({mode}) ...", flush=True)
                config = {
                    **common, "container": f"bench-dagster-{mode.replace('_', '')}-{uuid.uuid4().hex[:6]}",
                    "start": "2024-01-01-00:00", "hours": dagster_hours, "hours_per_run": 24, "mode": mode,
                    "events_per_hour": dagster_events,
                }
                results["dagster"][mode] = run_worker("dagster", config, services)
    finally:
        standin.terminate()
        azurite.terminate()
        standin.wait(timeout=10)
        azurite.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)

    report = table(results, events)
    print()
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    latest = {
        "command": f"BENCH_EVENTS={events} make bench",
        "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {**machine(), "load_average_at_start": load_at_start},
        "input": {"events": events, "seed": seed, "zip_bytes": archive.stat().st_size, "hour": data.HOUR.isoformat()},
        "results": results,
        "table": report,
    }
    (RESULTS / "latest.json").write_text(json.dumps(latest, indent=1) + "\n")
    print(f"\nwrote {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    main()
