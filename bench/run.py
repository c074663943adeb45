"""`make bench`: one hour of Amplitude events exported by the user's command, beside the
floor and a plain naive exporter, plus the export path's own figures and Dagster's overhead.

    make bench

One input per size: a cached ZIP of gzip JSON lines in Amplitude's own form
(bench/data.py), served by a local Export API stand-in (bench/standin.py), exported to a
local Azurite. Each contender runs in a process of its own, so its peak RSS is its own
(Azurite and the stand-in are outside it, but they share the CPU, so their work is in the
wall time). The contenders:

- the user's command (bench/user_path.py): `dagster asset materialize -m
  amplitude_assets.definitions --select events --partition KEY`, checks included, with
  the `events` and `events_checks` steps timed from the run's event log, and every
  process's own peak RSS; then `--select merged_ids` on the same hour;
- the floor (`bench.workers floor`): the least any exporter of the hour must do, in one
  streaming process: download the ZIP, gunzip each entry, one DuckDB `json_valid` pass
  per line, igzip level 1, upload the parts (`MAX_ROWS_PER_FILE` lines each) to Azurite;
- the plain naive exporter (`bench.workers naive`): `json.loads` per line, dedup by
  uuid, `json.dumps(row, sort_keys=True, separators=(",", ":"))`, stdlib gzip level 6,
  one upload per part.

They run on the same hour at each size of BENCH_USER_EVENTS (2,000,000 and 5,000,000
events by default), and the report gives user command / floor and naive / user command
(whole processes), events step / floor (the step's wall against the floor's own work,
without its interpreter start), and each process's peak RSS, beside the targets.

Then, at BENCH_EVENTS, the export path called as a function (`export`) and today's
baseline (`baseline`: the same job done the straightforward way, every field normalized
by the spec in Python, compared by events per second); and a week of small hours through
Dagster, batched as the default backfill policy does, and one run per hour. Prints a
table and writes bench/results/latest.json.

Settings (environment):
  BENCH_USER_EVENTS            hour sizes of the user's command, the floor and the plain naive exporter,
                               comma separated (default 2000000,5000000)
  BENCH_NAIVE_EVENTS           the sizes the plain naive exporter runs at (default: every BENCH_USER_EVENTS size)
  BENCH_EVENTS                 events in the hour of `export` and `baseline` (default 1,000,000)
  BENCH_BASELINE_EVENTS        events the baseline processes (default: all, at most 1,000,000)
  BENCH_SEED                   input seed (default 0)
  BENCH_ONLY                   comma list among user,floor,naive,export,baseline,dagster (default: all)
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

from amplitude_assets.partitions import partition_key
from bench import data, user_path
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


GIB = 2**30


TARGETS = {
    "user / floor": 2.5,  # the user's command, whole processes: at most
    "naive / user": 2.5,  # the plain naive exporter against the user's command: at least
    "events step / floor": 1.5,  # at most
    "peak RSS": 2.5 * GIB,  # every process, at the largest size: at most
    "run / events step": 1.4,  # at most
    "peak apart": 0.25,  # largest process, smallest size against largest: at most
}


def ratios(results: dict) -> list[dict]:
    """At each size: the user's command, its steps, the floor and the plain naive exporter, side by side."""
    runs = {str(r["events"]): r for r in results.get("user", {}).get("runs", [])}
    floors, naives = results.get("floor_by_size", {}), results.get("naive_by_size", {})
    out = []
    for size in sorted(set(runs) | set(floors) | set(naives), key=int):
        run, floor, naive = runs.get(size), floors.get(size), naives.get(size)
        step = run and run["events_step_seconds"]
        row = {
            "events": int(size), "user_seconds": run and run["process_seconds"], "events_step_seconds": step,
            "checks_step_seconds": run and run["steps"].get("events_checks", {}).get("seconds"),
            "floor_process_seconds": floor and floor["process_seconds"], "floor_seconds": floor and floor["seconds"],
            "naive_seconds": naive and naive["process_seconds"],
            "user_peak_rss": run and run["peak_rss"], "floor_peak_rss": floor and floor["peak_rss"],
            "naive_peak_rss": naive and naive["peak_rss"],
        }
        row["user / floor"] = run and floor and run["process_seconds"] / floor["process_seconds"]
        row["events step / floor"] = step and floor and step / floor["seconds"]
        row["naive / user"] = run and naive and naive["process_seconds"] / run["process_seconds"]
        out.append(row)
    return out


def user_targets(results: dict) -> list[dict]:
    """The issue's targets, each with its figure (the worst size) and whether it is met."""
    user = results["user"]
    rows = ratios(results)
    targets = []

    def worst(key: str, want: str, limit: float, at_most: bool, figure) -> None:
        sized = [r for r in rows if r[key]]
        if not sized:
            return
        r = (max if at_most else min)(sized, key=lambda r: r[key])
        targets.append({"target": f"{key} (the worst size)", "want": want, "figure": figure(r), "value": r[key],
                        "met": r[key] <= limit if at_most else r[key] >= limit})

    limit = TARGETS["user / floor"]
    worst("user / floor", f"<= {limit}x", limit, True, lambda r: (
        f"{r['user / floor']:.2f}x at {r['events']:,} (user {r['user_seconds']:.1f} s, floor {r['floor_process_seconds']:.1f} s)"))
    limit = TARGETS["naive / user"]
    worst("naive / user", f">= {limit}x", limit, False, lambda r: (
        f"{r['naive / user']:.2f}x at {r['events']:,} (naive {r['naive_seconds']:.1f} s, user {r['user_seconds']:.1f} s)"))
    limit = TARGETS["events step / floor"]
    worst("events step / floor", f"<= {limit}x", limit, True, lambda r: (
        f"{r['events step / floor']:.2f}x at {r['events']:,} (step {r['events_step_seconds']:.1f} s, "
        f"floor's work {r['floor_seconds']:.1f} s)"))

    largest = max((r["events"] for r in user["runs"]), default=None)
    if largest is not None:
        run = next(r for r in user["runs"] if r["events"] == largest)
        procs = [(p["label"], p["peak_rss"]) for p in run["processes"] if not p["service"]]
        for kind in ("floor", "naive"):
            other = results.get(f"{kind}_by_size", {}).get(str(largest))
            if other:
                procs.append((kind, other["peak_rss"]))
        label, peak = max(procs, key=lambda p: p[1])
        targets.append({
            "target": f"peak RSS of every process at {largest:,} events", "want": "<= 2.5 GiB",
            "figure": f"{peak / GIB:.2f} GiB ({label})", "value": peak, "met": peak <= TARGETS["peak RSS"],
        })

    runs = {r["events"]: r for r in user["runs"]}
    sized = [runs[n] for n in sorted(user["sizes"]) if n in runs]
    timed = [r for r in sized if r["run_seconds"] and r["events_step_seconds"]]
    if timed:
        r = max(timed, key=lambda r: r["run_seconds"] / r["events_step_seconds"])
        ratio = r["run_seconds"] / r["events_step_seconds"]
        targets.append({
            "target": "run wall / events step (the worst size)", "want": f"<= {TARGETS['run / events step']}",
            "figure": f"{ratio:.2f} at {r['events']:,} events (run {r['run_seconds']:.1f} s, "
                      f"events step {r['events_step_seconds']:.1f} s)",
            "value": ratio, "met": ratio <= TARGETS["run / events step"],
        })
    if len(sized) >= 2:
        small, big = sized[0], sized[-1]
        apart = abs(big["peak_rss"] - small["peak_rss"]) / small["peak_rss"]
        targets.append({
            "target": f"{big['events']:,} peak vs {small['events']:,} peak (largest process of each run)",
            "want": "<= 25% apart",
            "figure": f"{100 * apart:.0f}% ({_mib(big['peak_rss'])} vs {_mib(small['peak_rss'])})",
            "value": apart, "met": apart <= TARGETS["peak apart"],
        })
    return targets


def _s(value) -> str:
    return f"{value:.1f}" if value else "-"


def _x(value) -> str:
    return f"{value:.2f}x" if value else "-"


def user_table(results: dict, targets: list[dict]) -> str:
    user = results["user"]
    rows = []
    if user["runs"]:
        rows.append(f"The user's command: {user['runs'][0]['command']} (with its checks),")
        rows.append("beside the floor (download, gunzip, json_valid per line, igzip level 1, upload the parts) and the plain")
        rows.append("naive exporter (json.loads, dedup by uuid, json.dumps sorted and compact, gzip level 6, one upload a part).")
        rows.append("Wall seconds of whole processes; `floor work` is the floor's own work, without its interpreter start.")
    head = (f"{'events':>10} {'user s':>8} {'events s':>9} {'checks s':>9} {'floor s':>8} {'floor work':>11} "
            f"{'naive s':>8} {'user/floor':>11} {'step/floor':>11} {'naive/user':>11}")
    rows += [head, "-" * len(head)]
    table_rows = ratios(results)
    for r in table_rows:
        rows.append(
            f"{r['events']:>10,} {_s(r['user_seconds']):>8} {_s(r['events_step_seconds']):>9} {_s(r['checks_step_seconds']):>9} "
            f"{_s(r['floor_process_seconds']):>8} {_s(r['floor_seconds']):>11} {_s(r['naive_seconds']):>8} "
            f"{_x(r['user / floor']):>11} {_x(r['events step / floor']):>11} {_x(r['naive / user']):>11}"
        )
    rows.append(f"{'targets':>10} {'':>8} {'':>9} {'':>9} {'':>8} {'':>11} {'':>8} "
                f"{'<= ' + str(TARGETS['user / floor']) + 'x':>11} {'<= ' + str(TARGETS['events step / floor']) + 'x':>11} "
                f"{'>= ' + str(TARGETS['naive / user']) + 'x':>11}")
    rows.append("")
    rows.append(f"{'events':>10} {'peak RSS: user (largest process)':>34} {'floor':>10} {'naive':>10}   (target: each <= 2.5 GiB)")
    for r in table_rows:
        rows.append(f"{r['events']:>10,} {_mib(r['user_peak_rss']) if r['user_peak_rss'] else '-':>34} "
                    f"{_mib(r['floor_peak_rss']) if r['floor_peak_rss'] else '-':>10} "
                    f"{_mib(r['naive_peak_rss']) if r['naive_peak_rss'] else '-':>10}")
    for kind in ("floor", "naive"):
        for size, r in results.get(f"{kind}_by_size", {}).items():
            stages = ", ".join(f"{k} {v:.1f}s" for k, v in r["stages"].items())
            rows.append(f"  {kind} at {int(size):,}: {r['events_in']:,} lines in, {r['rows_out']:,} out, {r['parts']} parts, "
                        f"{r['bytes_out'] / 1e6:,.0f} MB out; {stages}; {r['cpu_seconds']:.0f} CPU s")
    for r in user["runs"]:
        rows.append("")
        rows.append(f"{r['events']:,} events, steps (wall from the run's event log):")
        for key, step in r["steps"].items():
            rows.append(f"  {key:<40} {step.get('seconds', 0):>8.1f} s  {step.get('outcome', 'unfinished'):<8} pid {step['pid']}")
        checks = ", ".join(f"{c['check']} {'passed' if c['passed'] else 'FAILED'}" for c in r["checks"])
        rows.append(f"  checks: {checks or 'none ran'}")
        rows.append(f"{r['events']:,} events, processes (peak RSS each, sampled every 50 ms):")
        groups: dict[str, list[dict]] = {}
        for proc in r["processes"]:
            groups.setdefault(proc["label"] + (" (service)" if proc["service"] else ""), []).append(proc)
        for name, procs in groups.items():
            peak = max(p["peak_rss"] for p in procs)
            cpu = sum(p["cpu_seconds"] for p in procs)
            where = f"pid {procs[0]['pid']}" if len(procs) == 1 else f"{len(procs)} processes, the largest shown"
            rows.append(f"  {name:<42} {_mib(peak):>10} {cpu:>8.1f} CPU s  {where}")
        merged = r.get("merged_ids")
        if merged:
            steps = ", ".join(f"{k} {v.get('seconds', 0):.1f} s" for k, v in merged["steps"].items())
            rows.append(f"then --select merged_ids: {merged['process_seconds']:.1f} s ({steps}), "
                        f"largest process peak {_mib(merged['peak_rss'])}")
    if targets:
        rows.append("")
        rows.append("targets:")
        for t in targets:
            rows.append(f"  {t['target']:<58} {t['want']:>14}  {'met' if t['met'] else 'MISSED':<6} {t['figure']}")
    return "\n".join(rows)


def _sizes(name: str, default: str) -> list[int]:
    return [int(n.replace("_", "")) for n in (os.environ.get(name) or default).split(",") if n.strip()]


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


def main() -> None:
    events = _env_int("BENCH_EVENTS", 1_000_000)
    seed = _env_int("BENCH_SEED", 0)
    baseline_events = _env_int("BENCH_BASELINE_EVENTS", min(events, 1_000_000))
    only = set(filter(None, os.environ.get("BENCH_ONLY", "user,floor,naive,export,baseline,dagster").split(",")))
    dagster_events = _env_int("BENCH_DAGSTER_EVENTS_PER_HOUR", 1000)
    dagster_hours = _env_int("BENCH_DAGSTER_HOURS", 168)
    user_sizes = _sizes("BENCH_USER_EVENTS", "2000000,5000000")
    naive_sizes = _sizes("BENCH_NAIVE_EVENTS", ",".join(map(str, user_sizes))) if "naive" in only else []
    # The user's command, the floor and the plain naive exporter, side by side on the same hour.
    run_sizes = sorted(set(user_sizes if only & {"user", "floor"} else []) | set(naive_sizes))
    first = [kind for kind in ("export", "baseline") if kind in only]
    if first and "floor" in only and events not in run_sizes:
        first.append("floor")  # so that the export and the baseline have a floor at their size

    load_at_start = os.getloadavg()
    archive = None
    if first:
        t = time.perf_counter()
        archive = data.cached_zip(events, seed)
        print(f"input: {events:,} events, {archive.stat().st_size / 1e6:,.0f} MB ZIP ({archive.name}, "
              f"ready in {time.perf_counter() - t:.1f}s)", flush=True)
    archives = {}
    for size in run_sizes:
        t = time.perf_counter()
        archives[size] = data.cached_zip(size, seed)
        print(f"input: {size:,} events, {archives[size].stat().st_size / 1e6:,.0f} MB ZIP "
              f"({archives[size].name}, ready in {time.perf_counter() - t:.1f}s)", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="amplitude-bench-"))
    az_port = free_port()
    azurite = start_azurite(az_port, workdir / "azurite")
    common = {
        "connection_string": connection_string(az_port), "api_key": API_KEY, "secret_key": SECRET_KEY,
        "hour": data.HOUR.isoformat(), "project_id": data.PROJECT_ID, "max_rows_per_file": MAX_ROWS_PER_FILE,
    }
    results: dict = {}
    try:
        if first:
            standin, api_port = start_standin(archive)
            services = [psutil.Process(azurite.pid), psutil.Process(standin.pid)]
            try:
                warm(archive)
                for kind in first:
                    config = {**common, "base_url": f"http://127.0.0.1:{api_port}", "zip": str(archive),
                              "container": f"bench-{kind}-{uuid.uuid4().hex[:8]}"}
                    if kind == "baseline" and baseline_events < events:
                        config["limit"] = baseline_events
                    print(f"running {kind} ...", flush=True)
                    results[kind] = run_worker(kind, config, services)
                    r = results[kind]
                    print(f"  {kind}: {r['events_in']:,} events in {r['seconds']:.1f}s, peak RSS {_mib(r['peak_rss'])}",
                          flush=True)
            finally:
                stop(standin)
        if run_sizes:
            results["user"] = {"sizes": [n for n in user_sizes if "user" in only], "runs": []}
            results["floor_by_size"], results["naive_by_size"] = {}, {}
        for size in run_sizes:
            hour_standin, hour_port = start_standin(archives[size])
            services = [psutil.Process(azurite.pid), psutil.Process(hour_standin.pid)]
            base_url = f"http://127.0.0.1:{hour_port}"
            try:
                warm(archives[size])
                if "user" in only and size in user_sizes:
                    print(f"running the user's command: dagster asset materialize --select events, {size:,} events ...",
                          flush=True)
                    container = f"bench-user-{size}-{uuid.uuid4().hex[:6]}"
                    run = user_path.materialize_hour(
                        events=size, partition=partition_key(data.HOUR),
                        base_url=base_url, api_key=API_KEY, secret_key=SECRET_KEY,
                        connection_string=common["connection_string"], container=container,
                        project_id=data.PROJECT_ID, max_rows_per_file=MAX_ROWS_PER_FILE, workdir=workdir,
                        services={"azurite": azurite.pid, "export api stand-in": hour_standin.pid},
                    )
                    run["container"] = container
                    results["user"]["runs"].append(run)
                    print(f"  {size:,} events: {run['process_seconds']:.1f}s, events step "
                          f"{run['events_step_seconds'] or 0:.1f}s, largest process peak {_mib(run['peak_rss'])}",
                          flush=True)
                    merged = user_path.materialize_hour(
                        events=size, partition=partition_key(data.HOUR),
                        base_url=base_url, api_key=API_KEY, secret_key=SECRET_KEY,
                        connection_string=common["connection_string"], container=run["container"],
                        project_id=data.PROJECT_ID, max_rows_per_file=MAX_ROWS_PER_FILE, workdir=workdir,
                        services={"azurite": azurite.pid, "export api stand-in": hour_standin.pid},
                        select="merged_ids",
                    )
                    run["merged_ids"] = merged
                    print(f"  then merged_ids: {merged['process_seconds']:.1f}s, step "
                          f"{merged['events_step_seconds'] or 0:.1f}s, largest process peak {_mib(merged['peak_rss'])}",
                          flush=True)
                for kind in ("floor", "naive"):
                    if kind not in only or (kind == "naive" and size not in naive_sizes):
                        continue
                    print(f"running the {kind} on the same hour, {size:,} events ...", flush=True)
                    config = {**common, "base_url": base_url, "zip": str(archives[size]),
                              "container": f"bench-{kind}-{size}-{uuid.uuid4().hex[:6]}"}
                    r = results[f"{kind}_by_size"][str(size)] = run_worker(kind, config, services)
                    print(f"  {kind}: {r['events_in']:,} lines, {r['process_seconds']:.1f}s as a whole process, "
                          f"peak RSS {_mib(r['peak_rss'])}", flush=True)
            finally:
                stop(hour_standin)
        if "floor" not in results and str(events) in results.get("floor_by_size", {}):
            results["floor"] = results["floor_by_size"][str(events)]
        if "dagster" in only:
            results["dagster"] = {}
            for mode in ("batched", "per_hour"):
                print(f"running dagster ({mode}) ...", flush=True)
                config = {
                    **common, "container": f"bench-dagster-{mode.replace('_', '')}-{uuid.uuid4().hex[:6]}",
                    "start": "2024-01-01-00:00", "hours": dagster_hours, "hours_per_run": 24, "mode": mode,
                    "events_per_hour": dagster_events,
                }
                results["dagster"][mode] = run_worker("dagster", config, [psutil.Process(azurite.pid)])
    finally:
        stop(azurite)
        shutil.rmtree(workdir, ignore_errors=True)

    report = table(results, events) if first or "dagster" in results else ""
    if "user" in results:
        targets = user_targets(results)
        results["user"]["targets"] = targets
        report += "\n\n" + user_table(results, targets)
    print()
    print(report.strip("\n"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in sorted(os.environ.items()) if k.startswith("BENCH_")}
    command = " ".join([*(f"{k}={v}" for k, v in settings.items()), "make bench"])
    latest = {
        "command": command,
        "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {**machine(), "load_average_at_start": load_at_start},
        "input": {"events": events if first else None, "seed": seed,
                  "zip_bytes": archive.stat().st_size if archive else None, "hour": data.HOUR.isoformat(),
                  "by_size": {str(n): archives[n].stat().st_size for n in run_sizes}},
        "settings": settings,
        "results": results,
        "table": report,
    }
    (RESULTS / "latest.json").write_text(json.dumps(latest, indent=1) + "\n")
    print(f"\nwrote {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    main()
