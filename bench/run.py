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

This module runs them in order; the rest has a module each: bench/settings.py (the
settings below), bench/processes.py (a contender's process, sampled, and the stand-in),
bench/workers.py (the contenders), bench/targets.py and bench/report.py (the targets and
the tables), bench/latest.py (bench/results/latest.json).

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

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from amplitude_assets.partitions import partition_key
from bench import data, user_path
from bench.latest import machine, write_latest
from bench.processes import Sampler, cpu_seconds, run_worker, start_standin, stop, warm
from bench.report import table, user_table
from bench.settings import API_KEY, MAX_ROWS_PER_FILE, RESULTS, ROOT, SECRET_KEY, Settings
from bench.targets import GIB, TARGETS, mib, ratios, user_targets
from tests.conftest import connection_string, free_port, start_azurite

__all__ = [
    "API_KEY", "GIB", "MAX_ROWS_PER_FILE", "RESULTS", "ROOT", "SECRET_KEY", "TARGETS", "Sampler", "cpu_seconds",
    "machine", "main", "ratios", "run_worker", "start_standin", "stop", "table", "user_table", "user_targets", "warm",
]


def _input(events: int, seed: int) -> Path:
    """The cached ZIP of an hour of `events` events, made if it is not there yet."""
    t = time.perf_counter()
    archive = data.cached_zip(events, seed)
    print(f"input: {events:,} events, {archive.stat().st_size / 1e6:,.0f} MB ZIP ({archive.name}, "
          f"ready in {time.perf_counter() - t:.1f}s)", flush=True)
    return archive


def _run_first(settings: Settings, archive: Path, azurite, common: dict) -> dict:
    """The contenders at BENCH_EVENTS (export, baseline, and the floor if no hour has it), one after the other."""
    results = {}
    standin, api_port = start_standin(archive)
    services = [psutil.Process(azurite.pid), psutil.Process(standin.pid)]
    try:
        warm(archive)
        for kind in settings.first:
            config = {**common, "base_url": f"http://127.0.0.1:{api_port}", "zip": str(archive),
                      "container": f"bench-{kind}-{uuid.uuid4().hex[:8]}"}
            if kind == "baseline" and settings.baseline_events < settings.events:
                config["limit"] = settings.baseline_events
            print(f"running {kind} ...", flush=True)
            results[kind] = run_worker(kind, config, services)
            r = results[kind]
            print(f"  {kind}: {r['events_in']:,} events in {r['seconds']:.1f}s, peak RSS {mib(r['peak_rss'])}",
                  flush=True)
    finally:
        stop(standin)
    return results


def _run_user(size: int, base_url: str, common: dict, workdir: Path, services: dict[str, int]) -> dict:
    """The user's command on the hour of `size` events, `--select events` then `--select merged_ids`."""
    print(f"running the user's command: dagster asset materialize --select events, {size:,} events ...",
          flush=True)
    container = f"bench-user-{size}-{uuid.uuid4().hex[:6]}"
    hour = {
        "events": size, "partition": partition_key(data.HOUR),
        "base_url": base_url, "api_key": API_KEY, "secret_key": SECRET_KEY,
        "connection_string": common["connection_string"], "project_id": data.PROJECT_ID,
        "max_rows_per_file": MAX_ROWS_PER_FILE, "workdir": workdir, "services": services,
    }
    run = user_path.materialize_hour(**hour, container=container)
    run["container"] = container
    print(f"  {size:,} events: {run['process_seconds']:.1f}s, events step "
          f"{run['events_step_seconds'] or 0:.1f}s, largest process peak {mib(run['peak_rss'])}",
          flush=True)
    merged = user_path.materialize_hour(**hour, container=run["container"], select="merged_ids")
    run["merged_ids"] = merged
    print(f"  then merged_ids: {merged['process_seconds']:.1f}s, step "
          f"{merged['events_step_seconds'] or 0:.1f}s, largest process peak {mib(merged['peak_rss'])}",
          flush=True)
    return run


def _run_hour(settings: Settings, size: int, archive: Path, azurite, common: dict, workdir: Path,
              results: dict) -> None:
    """The user's command, the floor and the plain naive exporter on the same hour of `size`
    events, into `results["user"]`, `results["floor_by_size"]` and `results["naive_by_size"]`."""
    only = settings.only
    hour_standin, hour_port = start_standin(archive)
    services = [psutil.Process(azurite.pid), psutil.Process(hour_standin.pid)]
    base_url = f"http://127.0.0.1:{hour_port}"
    try:
        warm(archive)
        if "user" in only and size in settings.user_sizes:
            results["user"]["runs"].append(_run_user(
                size, base_url, common, workdir, {"azurite": azurite.pid, "export api stand-in": hour_standin.pid}))
        for kind in ("floor", "naive"):
            if kind not in only or (kind == "naive" and size not in settings.naive_sizes):
                continue
            print(f"running the {kind} on the same hour, {size:,} events ...", flush=True)
            config = {**common, "base_url": base_url, "zip": str(archive),
                      "container": f"bench-{kind}-{size}-{uuid.uuid4().hex[:6]}"}
            r = results[f"{kind}_by_size"][str(size)] = run_worker(kind, config, services)
            print(f"  {kind}: {r['events_in']:,} lines, {r['process_seconds']:.1f}s as a whole process, "
                  f"peak RSS {mib(r['peak_rss'])}", flush=True)
    finally:
        stop(hour_standin)


def _run_dagster(settings: Settings, azurite, common: dict) -> dict:
    """A week of small hours through Dagster, batched and one run per hour."""
    out = {}
    for mode in ("batched", "per_hour"):
        print(f"running dagster ({mode}) ...", flush=True)
        config = {
            **common, "container": f"bench-dagster-{mode.replace('_', '')}-{uuid.uuid4().hex[:6]}",
            "start": "2024-01-01-00:00", "hours": settings.dagster_hours, "hours_per_run": 24, "mode": mode,
            "events_per_hour": settings.dagster_events,
        }
        out[mode] = run_worker("dagster", config, [psutil.Process(azurite.pid)])
    return out


def _run_all(settings: Settings, archive: Path | None, archives: dict[int, Path]) -> dict:
    """Every contender asked for, against one Azurite started (and stopped) here."""
    workdir = Path(tempfile.mkdtemp(prefix="amplitude-bench-"))
    az_port = free_port()
    azurite = start_azurite(az_port, workdir / "azurite")
    common = {
        "connection_string": connection_string(az_port), "api_key": API_KEY, "secret_key": SECRET_KEY,
        "hour": data.HOUR.isoformat(), "project_id": data.PROJECT_ID, "max_rows_per_file": MAX_ROWS_PER_FILE,
    }
    results: dict = {}
    try:
        if settings.first:
            results.update(_run_first(settings, archive, azurite, common))
        if settings.run_sizes:
            results["user"] = {"sizes": [n for n in settings.user_sizes if "user" in settings.only], "runs": []}
            results["floor_by_size"], results["naive_by_size"] = {}, {}
        for size in settings.run_sizes:
            _run_hour(settings, size, archives[size], azurite, common, workdir, results)
        if "floor" not in results and str(settings.events) in results.get("floor_by_size", {}):
            results["floor"] = results["floor_by_size"][str(settings.events)]
        if "dagster" in settings.only:
            results["dagster"] = _run_dagster(settings, azurite, common)
    finally:
        stop(azurite)
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def _report(settings: Settings, results: dict) -> str:
    """The printed tables; the user's targets also go into `results["user"]["targets"]`."""
    report = table(results, settings.events) if settings.first or "dagster" in results else ""
    if "user" in results:
        targets = user_targets(results)
        results["user"]["targets"] = targets
        report += "\n\n" + user_table(results, targets)
    return report


def main() -> None:
    settings = Settings.from_env()
    load_at_start = os.getloadavg()
    archive = _input(settings.events, settings.seed) if settings.first else None
    archives = {size: _input(size, settings.seed) for size in settings.run_sizes}
    results = _run_all(settings, archive, archives)
    report = _report(settings, results)
    print()
    print(report.strip("\n"))
    path = write_latest(results, report, events=settings.events if settings.first else None, seed=settings.seed,
                        archive=archive, archives=archives, load_at_start=load_at_start)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
