"""`make bench`: one hour of events through the export, a naive baseline and the floor,
and the path a user runs: `dagster asset materialize` for one hour, with its checks.

    make bench

One run, one input: a cached ZIP of gzip JSON lines (bench/data.py) served by a local
Export API stand-in (bench/standin.py), exported to a local Azurite. Each contender runs
in its own process; its peak RSS is that process tree's (Azurite and the stand-in are
outside it, but they share the CPU, so their work is in the wall time). Then the user's
path (bench/user_path.py): `dagster asset materialize --select events --partition KEY`
for one hour at each size of BENCH_USER_EVENTS, checks included, with each process's
peak RSS (the command, its step processes, Azurite and the stand-in, each on its own)
and each step's wall time; and the naive exporter as a whole process on an hour of
BENCH_NAIVE_EVENTS, against the same command on the same hour. Then a week of small
hours goes through Dagster, batched as the default backfill policy does, and one run per
hour. Prints a table and writes bench/results/latest.json.

Settings (environment):
  BENCH_EVENTS                 events in the hour (default 1,000,000)
  BENCH_SEED                   input seed (default 0)
  BENCH_BASELINE_EVENTS        events the naive baseline processes (default: all, at most 1,000,000;
                               it is compared by events/s)
  BENCH_ONLY                   comma list among export,baseline,floor,user,naive,dagster (default: all)
  BENCH_USER_EVENTS            hour sizes of the user's path, comma separated (default 1000000,5000000)
  BENCH_NAIVE_EVENTS           hour size of the whole-process comparison with the naive exporter
                               (default 2,000,000; the user's path also runs at this size)
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


def user_targets(results: dict, naive_events: int | None) -> list[dict]:
    """The issue's targets for the user's path, each with its figure and whether it is met."""
    user = results["user"]
    runs = {r["events"]: r for r in user["runs"]}
    sized = [runs[n] for n in sorted(user["sizes"]) if n in runs]
    targets = []
    naive = results.get("naive")
    if naive and naive_events in runs:
        ratio = naive["process_seconds"] / runs[naive_events]["process_seconds"]
        targets.append({
            "target": f"dagster run vs naive, {naive_events:,} events, whole processes", "want": ">= 4x",
            "figure": f"{ratio:.1f}x (naive {naive['process_seconds']:.1f} s, "
                      f"dagster {runs[naive_events]['process_seconds']:.1f} s)",
            "value": ratio, "met": ratio >= 4,
        })
    timed = [r for r in sized if r["run_seconds"] and r["events_step_seconds"]]
    if timed:
        worst = max(timed, key=lambda r: r["run_seconds"] / r["events_step_seconds"])
        ratio = worst["run_seconds"] / worst["events_step_seconds"]
        targets.append({
            "target": "run wall / events step (the worst size)", "want": "<= 1.4",
            "figure": f"{ratio:.2f} at {worst['events']:,} events (run {worst['run_seconds']:.1f} s, "
                      f"events step {worst['events_step_seconds']:.1f} s)",
            "value": ratio, "met": ratio <= 1.4,
        })
    if len(sized) >= 2:
        small, big = sized[0], sized[-1]
        apart = abs(big["peak_rss"] - small["peak_rss"]) / small["peak_rss"]
        targets.append({
            "target": f"{big['events']:,} peak vs {small['events']:,} peak (largest process of each run)",
            "want": "<= 25% apart",
            "figure": f"{100 * apart:.0f}% ({_mib(big['peak_rss'])} vs {_mib(small['peak_rss'])})",
            "value": apart, "met": apart <= 0.25,
        })
    if user["runs"]:
        top = max(user["runs"], key=lambda r: r["peak_rss"])
        label = next(p["label"] for p in top["processes"] if p["peak_rss"] == top["peak_rss"] and not p["service"])
        targets.append({
            "target": "max peak RSS of any process of the run", "want": "<= 2.5 GiB",
            "figure": f"{top['peak_rss'] / GIB:.2f} GiB ({label}, {top['events']:,} events)",
            "value": top["peak_rss"], "met": top["peak_rss"] <= 2.5 * GIB,
        })
    return targets


def user_table(results: dict, targets: list[dict]) -> str:
    user = results["user"]
    rows = []
    if user["runs"]:
        rows.append(f"The user's path: {user['runs'][0]['command']} (with its checks)")
    head = f"{'events':>10} {'wall s':>8} {'run s':>8} {'events step s':>14} {'run/step':>9} {'largest peak':>13} {'tree peak':>10}"
    rows += [head, "-" * len(head)]
    for r in user["runs"]:
        step = r["events_step_seconds"]
        ratio = f"{r['run_seconds'] / step:.2f}" if step and r["run_seconds"] else "-"
        rows.append(
            f"{r['events']:>10,} {r['process_seconds']:>8.1f} {r['run_seconds'] or 0:>8.1f} {step or 0:>14.1f} "
            f"{ratio:>9} {_mib(r['peak_rss']):>13} {_mib(r['peak_tree_rss']):>10}"
        )
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
    naive = results.get("naive")
    if naive:
        rows.append("")
        rows.append(f"naive exporter (json.loads/json.dumps per row, stdlib gzip, one upload per part): "
                    f"{naive['events_in']:,} events, {naive['process_seconds']:.1f} s as a whole process, "
                    f"peak RSS {_mib(naive['peak_rss'])}")
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


def main() -> None:
    events = _env_int("BENCH_EVENTS", 1_000_000)
    seed = _env_int("BENCH_SEED", 0)
    baseline_events = _env_int("BENCH_BASELINE_EVENTS", min(events, 1_000_000))
    only = set(filter(None, os.environ.get("BENCH_ONLY", "export,baseline,floor,user,naive,dagster").split(",")))
    dagster_events = _env_int("BENCH_DAGSTER_EVENTS_PER_HOUR", 1000)
    dagster_hours = _env_int("BENCH_DAGSTER_HOURS", 168)
    user_sizes = _sizes("BENCH_USER_EVENTS", "1000000,5000000") if "user" in only else []
    naive_events = _env_int("BENCH_NAIVE_EVENTS", 2_000_000) if "naive" in only else None
    # The naive exporter is compared with the user's command on the same hour.
    run_sizes = sorted(set(user_sizes) | ({naive_events} if naive_events else set()))

    load_at_start = os.getloadavg()
    t = time.perf_counter()
    # The first three contenders' hour (the week through Dagster makes its own small hours).
    archive = data.cached_zip(events if only & {"export", "baseline", "floor"} else min(run_sizes or [1]), seed)
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
    standin, api_port = start_standin(archive)
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
        if run_sizes:
            results["user"] = {"sizes": user_sizes, "runs": []}
        for size in run_sizes:
            hour_standin, hour_port = start_standin(archives[size])
            try:
                print(f"running the user's path: dagster asset materialize --select events, {size:,} events ...",
                      flush=True)
                container = f"bench-user-{size}-{uuid.uuid4().hex[:6]}"
                run = user_path.materialize_hour(
                    events=size, partition=partition_key(data.HOUR),
                    base_url=f"http://127.0.0.1:{hour_port}", api_key=API_KEY, secret_key=SECRET_KEY,
                    connection_string=common["connection_string"], container=container,
                    project_id=data.PROJECT_ID, max_rows_per_file=MAX_ROWS_PER_FILE, workdir=workdir,
                    services={"azurite": azurite.pid, "export api stand-in": hour_standin.pid},
                )
                run["container"] = container
                results["user"]["runs"].append(run)
                print(f"  {size:,} events: {run['process_seconds']:.1f}s, events step "
                      f"{run['events_step_seconds'] or 0:.1f}s, largest process peak {_mib(run['peak_rss'])}", flush=True)
                merged = user_path.materialize_hour(
                    events=size, partition=data.HOUR.strftime("%Y-%m-%d-%H:%M"),
                    base_url=f"http://127.0.0.1:{hour_port}", api_key=API_KEY, secret_key=SECRET_KEY,
                    connection_string=common["connection_string"], container=run["container"],
                    project_id=data.PROJECT_ID, max_rows_per_file=MAX_ROWS_PER_FILE, workdir=workdir,
                    services={"azurite": azurite.pid, "export api stand-in": hour_standin.pid}, select="merged_ids",
                )
                run["merged_ids"] = merged
                print(f"  then merged_ids: {merged['process_seconds']:.1f}s, step {merged['events_step_seconds'] or 0:.1f}s, "
                      f"largest process peak {_mib(merged['peak_rss'])}", flush=True)
                if size == naive_events:
                    print(f"running the naive exporter on the same hour, {size:,} events ...", flush=True)
                    config = {**common, "base_url": f"http://127.0.0.1:{hour_port}", "zip": str(archives[size]),
                              "container": f"bench-naive-{uuid.uuid4().hex[:8]}"}
                    results["naive"] = run_worker("baseline", config, [psutil.Process(azurite.pid),
                                                                      psutil.Process(hour_standin.pid)])
                    r = results["naive"]
                    print(f"  naive: {r['events_in']:,} events, {r['process_seconds']:.1f}s as a whole process",
                          flush=True)
            finally:
                stop(hour_standin)
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
        stop(standin)
        stop(azurite)
        shutil.rmtree(workdir, ignore_errors=True)

    report = table(results, events)
    if "user" in results:
        targets = user_targets(results, naive_events)
        results["user"]["targets"] = targets
        report += "\n\n" + user_table(results, targets)
    print()
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = "make bench" if not os.environ.get("BENCH_EVENTS") else f"BENCH_EVENTS={events} make bench"
    latest = {
        "command": command,
        "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {**machine(), "load_average_at_start": load_at_start},
        "input": {"events": events, "seed": seed, "zip_bytes": archive.stat().st_size, "hour": data.HOUR.isoformat(),
                  "user_path": {str(n): archives[n].stat().st_size for n in run_sizes}},
        "settings": {k: v for k, v in sorted(os.environ.items()) if k.startswith("BENCH_")},
        "results": results,
        "table": report,
    }
    (RESULTS / "latest.json").write_text(json.dumps(latest, indent=1) + "\n")
    print(f"\nwrote {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    main()
