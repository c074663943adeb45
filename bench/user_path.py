"""The path a user runs: `dagster asset materialize` for one hour, with the asset's checks.

    dagster asset materialize -m amplitude_assets.definitions --select events --partition KEY

The command runs as a user would start it, against a local Azurite and the Export API
stand-in serving the hour. Every process of its tree (the command itself and the step
processes Dagster starts), Azurite and the stand-in are sampled every 50 ms; each gets
its own peak RSS. Each step's wall time comes from the run's event log in the fresh
`DAGSTER_HOME` instance (STEP_START to STEP_SUCCESS or STEP_FAILURE), so the figures do
not depend on how the checks are written: whatever steps the run has are reported.
`--select events` runs the asset's checks too (the CLI's asset selection brings the
checks of the selected assets); the report lists the check evaluations it recorded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
DAGSTER_YAML = "telemetry:\n  enabled: false\n"
SELECT = "events"


@dataclass
class Seen:
    """One process, as the sampler saw it."""

    pid: int
    label: str
    command: str
    peak_rss: int = 0
    cpu_seconds: float = 0.0
    first_seen: float = 0.0
    last_seen: float = 0.0


@dataclass(eq=False)  # a Thread must stay hashable
class TreeSampler(threading.Thread):
    """Peak RSS of every process of a tree, and of named service processes, each on its own."""

    root: int
    services: dict[str, int]
    interval: float = 0.05
    seen: dict[int, Seen] = field(default_factory=dict)
    peak_tree_rss: int = 0  # the largest sum over the tree at one instant

    def __post_init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self._processes: dict[int, psutil.Process] = {}

    def _process(self, pid: int) -> psutil.Process:
        if pid not in self._processes:
            self._processes[pid] = psutil.Process(pid)
        return self._processes[pid]

    def _sample(self, process: psutil.Process, label: str | None) -> int:
        with process.oneshot():
            rss = process.memory_info().rss
            times = process.cpu_times()
            now = time.perf_counter()
            seen = self.seen.get(process.pid)
            if seen is None:
                command = " ".join(process.cmdline())
                seen = self.seen[process.pid] = Seen(process.pid, label or describe(command), command, first_seen=now)
            seen.peak_rss = max(seen.peak_rss, rss)
            seen.cpu_seconds = max(seen.cpu_seconds, times.user + times.system)
            seen.last_seen = now
        return rss

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample_once()
            self.stop.wait(self.interval)
        self.sample_once()

    def sample_once(self) -> None:
        total = 0
        try:
            root = self._process(self.root)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        for process in tree:
            try:
                total += self._sample(process, "dagster asset materialize" if process.pid == self.root else None)
            except psutil.Error:
                pass  # it ended between the listing and the sample
        self.peak_tree_rss = max(self.peak_tree_rss, total)
        for label, pid in self.services.items():
            try:
                self._sample(self._process(pid), label)
            except psutil.Error:
                pass


def describe(command: str) -> str:
    """A short name for a process of the run's tree, from its command line (steps are named later)."""
    if "spawn_main" in command or "execute_step" in command:
        return "step process"
    if "resource_tracker" in command:
        return "multiprocessing resource tracker"
    if command.startswith("tail ") or "watch_orphans" in command:
        return "compute-log capture (tail, watch_orphans)"
    return command.split(" ", 1)[0].rsplit("/", 1)[-1]


def step_timings(home: Path) -> dict:
    """The run's steps from the instance's event log: key, pid, start, end, wall, outcome; and the check results."""
    import dagster as dg

    Type = dg.DagsterEventType
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(limit=1)
        if not runs:
            return {"run_id": None, "status": None, "steps": {}, "checks": [], "materialized_by": None}
        run = runs[0]
        steps: dict[str, dict] = {}
        checks: list[dict] = []
        run_start = run_end = None
        materialized_by = None
        for record in instance.all_logs(run.run_id):
            event = record.dagster_event
            if event is None:
                continue
            kind = event.event_type
            if kind == Type.RUN_START:
                run_start = record.timestamp
            elif kind in (Type.RUN_SUCCESS, Type.RUN_FAILURE):
                run_end = record.timestamp
            elif kind == Type.STEP_START:
                steps[record.step_key] = {"pid": event.pid, "start": record.timestamp}
            elif kind in (Type.STEP_SUCCESS, Type.STEP_FAILURE) and record.step_key in steps:
                step = steps[record.step_key]
                step.update(end=record.timestamp, seconds=record.timestamp - step["start"],
                            outcome="success" if kind == Type.STEP_SUCCESS else "failure")
            elif kind == Type.ASSET_MATERIALIZATION and event.asset_key == dg.AssetKey(SELECT):
                materialized_by = record.step_key
            elif kind == Type.ASSET_CHECK_EVALUATION:
                evaluation = event.event_specific_data
                checks.append({
                    "check": evaluation.asset_check_key.name, "step": record.step_key,
                    "passed": evaluation.passed, "at": record.timestamp,
                })
        return {
            "run_id": run.run_id, "status": run.status.value, "steps": steps, "checks": checks,
            "materialized_by": materialized_by,
            "run_seconds": (run_end - run_start) if run_start and run_end else None,
        }


def materialize_hour(
    *, events: int, partition: str, base_url: str, api_key: str, secret_key: str, connection_string: str,
    container: str, project_id: str, max_rows_per_file: int, workdir: Path, services: dict[str, int],
    select: str = SELECT,
) -> dict:
    """Run the user's command for one hour in a fresh DAGSTER_HOME and measure its process tree.

    `select="merged_ids"` after `events` runs the hour's merged IDs in the same instance
    and container, as the automation that follows `events` does."""
    home = workdir / f"dagster_home_{events}"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMPLITUDE_", "AZURE_", "DAGSTER_"))}
    env.update({
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": str(ROOT),
        "AMPLITUDE_SOURCE": "export_api",
        "AMPLITUDE_EXPORT_API_URL": base_url,
        "AMPLITUDE_API_KEY": api_key,
        "AMPLITUDE_SECRET_KEY": secret_key,
        "AMPLITUDE_PROJECT_ID": project_id,
        "AMPLITUDE_START": partition,
        "AMPLITUDE_EXPORT_DELAY_MINUTES": "0",
        "AMPLITUDE_MAX_ROWS_PER_FILE": str(max_rows_per_file),
        "AZURE_STORAGE_CONNECTION_STRING": connection_string,
        "AZURE_EVENTS_CONTAINER": container,
        "AZURE_CREATE_CONTAINERS": "true",
    })
    dagster = Path(sys.executable).parent / "dagster"
    command = [str(dagster), "asset", "materialize", "-m", "amplitude_assets.definitions",
               "--select", select, "--partition", partition]
    log = (workdir / f"materialize-{select}-{events}.log").open("w+")
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    sampler = TreeSampler(process.pid, services)
    sampler.start()
    process.wait()
    wall = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    log.seek(0)
    output = log.read()
    log.close()
    run = step_timings(home)
    if process.returncode != 0 or run["status"] != "SUCCESS":
        sys.stderr.write(output[-5000:])
        raise SystemExit(f"bench: `{' '.join(command[1:])}` failed at {events:,} events (exit {process.returncode})")

    by_pid = {step["pid"]: key for key, step in run["steps"].items()}
    processes = []
    for seen in sorted(sampler.seen.values(), key=lambda s: s.first_seen):
        label = seen.label
        if seen.pid == process.pid and seen.pid in by_pid:
            label = "dagster asset materialize (steps in process)"
        elif seen.pid in by_pid:
            label = f"step {by_pid[seen.pid]}"
        service = seen.label in services
        processes.append({
            "label": label, "pid": seen.pid, "peak_rss": seen.peak_rss, "cpu_seconds": seen.cpu_seconds,
            "service": service, "command": seen.command if not service else seen.label,
            "steps": sorted(k for k, s in run["steps"].items() if s["pid"] == seen.pid),
        })
    events_step = run["materialized_by"] or select
    steps = {key: {k: v for k, v in step.items() if k in ("pid", "seconds", "outcome")}
             for key, step in sorted(run["steps"].items(), key=lambda item: item[1]["start"])}
    return {
        "events": events, "partition": partition, "command": " ".join(["dagster", *command[1:]]),
        "process_seconds": wall, "run_seconds": run["run_seconds"], "run_id": run["run_id"],
        "events_step": events_step, "events_step_seconds": run["steps"].get(events_step, {}).get("seconds"),
        "steps": steps, "checks": run["checks"], "processes": processes,
        "peak_rss": max((p["peak_rss"] for p in processes if not p["service"]), default=0),
        "peak_tree_rss": sampler.peak_tree_rss,
    }
