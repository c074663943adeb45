"""`make demo`: Azurite with data under .demo/, the last 24 closed hours exported, then the UI.

Everything it starts stops on Ctrl-C. State persists in .demo/ (Azurite's data, the Dagster
instance with its run history, the demo's settings), so a second run exports only the hours
that are new since the last one and starts fast; `make demo-clean` resets it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
DAGSTER = ROOT / ".venv" / "bin" / "dagster"
# Azurite's published development account key (the same for every Azurite).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
UI_PORT = int(os.environ.get("DEMO_UI_PORT", "3000"))
AZURITE_PORT = int(os.environ.get("DEMO_AZURITE_PORT", "10000"))
HOURS = 24
START_HOURS_BACK = 48  # the first partition; the demo exports the last HOURS closed hours of them
DEFAULT_CATCH_UP_HOURS = 72  # AMPLITUDE_CATCH_UP_HOURS' default
DAGSTER_YAML = """\
# The demo instance: runs go through the queue, as in production. Runs of merged_ids go one at
# a time, oldest first (each hour starts from the state the hour before left).
run_queue:
  max_concurrent_runs: 2
  tag_concurrency_limits:
    - key: "dagster/backfill"
      limit: 2
    - key: "amplitude_assets/merged_ids_chain"
      limit: 1
telemetry:
  enabled: false
"""
BOLD, DIM, GREEN, RED, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() else ("",) * 5


def say(step: str, message: str) -> None:
    print(f"{BOLD}==> [{step}] {message}{RESET}", flush=True)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def catch_up_hours(start: datetime, now: datetime) -> int:
    """A sensor window that reaches back to the first partition: turning the sensor on fills every hour shown."""
    return max(DEFAULT_CATCH_UP_HOURS, int((now - start).total_seconds() // 3600) + 1)


def demo_env(now: datetime | None = None) -> dict[str, str]:
    """The demo's settings; AMPLITUDE_START is fixed at the first run so partitions stay put.

    The partitions start START_HOURS_BACK hours back, inside the sensor's catch-up window,
    and the window (AMPLITUDE_CATCH_UP_HOURS) grows with the demo's age so it always covers them.
    """
    from amplitude_assets.partitions import parse_hour, partition_key

    now = now or datetime.now(timezone.utc)
    DEMO.mkdir(exist_ok=True)
    saved = DEMO / "demo.env"
    if not saved.exists():
        start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=START_HOURS_BACK)
        saved.write_text(f"AMPLITUDE_START={partition_key(start)}\n")
    values = dict(line.split("=", 1) for line in saved.read_text().split() if "=" in line)
    start = parse_hour(values["AMPLITUDE_START"], "AMPLITUDE_START")
    values["AMPLITUDE_CATCH_UP_HOURS"] = str(catch_up_hours(start, now))
    home = DEMO / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMPLITUDE_", "AZURE_"))}
    env.update({
        **values,
        "DAGSTER_HOME": str(home),
        "AZURE_STORAGE_CONNECTION_STRING": (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={ACCOUNT_KEY};BlobEndpoint=http://127.0.0.1:{AZURITE_PORT}/devstoreaccount1;"
        ),
        "AZURE_CREATE_CONTAINERS": "true",
        "PYTHONUNBUFFERED": "1",
    })
    return env  # the synthetic source, default container `amplitude`, project 187520


class Children:
    """The processes the demo started, each in its own process group; stopped newest first."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen] = []

    def start(self, args: list[str], **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(args, start_new_session=True, stdin=subprocess.DEVNULL, **kwargs)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.processes.clear()


def wait(process: subprocess.Popen) -> int:
    """Popen.wait that a signal can interrupt (a blocked waitpid misses signals that other threads take)."""
    while process.poll() is None:
        time.sleep(0.3)
    return process.returncode


def exportable_window(delay_minutes: int, count: int = HOURS) -> list[datetime]:
    """The last `count` hours that closed at least `delay_minutes` ago, oldest first."""
    ready = datetime.now(timezone.utc) - timedelta(minutes=delay_minutes)
    end = ready.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    return [end - timedelta(hours=count - 1 - i) for i in range(count)]


def hours_to_export(settings, storage, window: list[datetime]) -> list[datetime]:
    """The window's missing hours, extended back to the last exported hour so merged-ID history has no gap."""
    from amplitude_assets.layout import EventsLayout, MergedIdsLayout
    from amplitude_assets.destination.writer import existing_markers

    hour, candidates = settings.start_hour, []
    while hour <= window[-1]:
        candidates.append(hour)
        hour += timedelta(hours=1)
    events = EventsLayout(settings.events_prefix, settings.project_id)
    merged = MergedIdsLayout(settings.merged_ids_prefix, settings.merged_ids_scope)
    have_events = existing_markers(
        storage.container(settings.events_container), events.folder, [events.marker(h) for h in candidates]
    )
    have_merged = existing_markers(
        storage.container(settings.merged_ids_container), merged.folder, [merged.marker(h) for h in candidates]
    )
    exported = {h for h in candidates if events.marker(h) in have_events and merged.marker(h) in have_merged}
    missing = [h for h in window if h not in exported]
    if not missing:
        return []
    first = missing[0]
    earlier = [h for h in exported if h < first]
    if earlier and max(earlier) < first - timedelta(hours=1):
        first = max(earlier) + timedelta(hours=1)
    hours, hour = [], first
    while hour <= window[-1]:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


def suggested_hour(settings, storage, window: list[datetime]) -> tuple[datetime, bool]:
    """An hour to materialize from the UI, and whether it is exported already.

    The newest hour before the demo's window that has no events marker, or else an hour of
    the window that has none (a failed one). Only when every hour has been exported is it an
    exported one, the oldest: a run replaces it in place.
    """
    from azure.core.exceptions import ResourceNotFoundError

    from amplitude_assets.layout import EventsLayout
    from amplitude_assets.destination.writer import existing_markers

    events = EventsLayout(settings.events_prefix, settings.project_id)
    hours, hour = [], settings.start_hour
    while hour <= window[-1]:
        hours.append(hour)
        hour += timedelta(hours=1)
    try:
        have = existing_markers(
            storage.container(settings.events_container), events.folder, [events.marker(h) for h in hours]
        )
    except ResourceNotFoundError:  # nothing exported yet
        have = set()
    missing = [h for h in hours if events.marker(h) not in have]
    before = [h for h in missing if h < window[0]]
    if before:
        return before[-1], False
    if missing:
        return missing[0], False
    return hours[0], True


def summary(settings, storage, window: list[datetime]) -> None:
    """What the container holds for the window: hours, parts, rows and bytes, read from the markers."""
    from amplitude_assets.layout import EventsLayout, MergedIdsLayout
    from amplitude_assets.destination.writer import read_marker

    events = EventsLayout(settings.events_prefix, settings.project_id)
    merged = MergedIdsLayout(settings.merged_ids_prefix, settings.merged_ids_scope)
    rows = {"events": [0, 0, 0, 0], "merged_ids": [0, 0, 0, 0]}  # hours, files, rows, bytes
    examples = {}
    for name, layout, container in (
        ("events", events, settings.events_container),
        ("merged_ids", merged, settings.merged_ids_container),
    ):
        client = storage.container(container)
        for hour in window:
            manifest = read_marker(client, layout.marker(hour))
            if manifest is None:
                continue
            parts = manifest.get("parts", [])
            totals = rows[name]
            totals[0] += 1
            totals[1] += len(parts)
            totals[2] += manifest.get("rows", 0)
            totals[3] += sum(p.get("bytes", 0) for p in parts)
            if parts:
                examples[name] = f"{container}/{layout.folder}{parts[-1]['name']}"
    print(f"\n  {'':<11} {'hours':>5} {'files':>6} {'rows':>9} {'bytes':>10}   latest file")
    for name, (hours, files, count, size) in rows.items():
        print(f"  {name:<11} {hours:>5} {files:>6} {count:>9,} {size / 1e6:>8.2f} MB   {examples.get(name, '-')}")
    missing = len(window) - rows["events"][0]
    if missing:
        print(f"  {RED}{missing} of {len(window)} hours have no events marker; see the failed runs in the UI{RESET}")
    print(
        f"  {DIM}Each hour: parts {events.folder}{settings.project_id}_<yyyy-MM-dd>_<H>#<n>.json.gz and a "
        f"_complete marker beside them (a JSON manifest with the hour's counts).{RESET}"
    )
    print(
        f"  {DIM}Azurite: http://127.0.0.1:{AZURITE_PORT}/devstoreaccount1, account devstoreaccount1 with "
        f"Azurite's well-known key; data in .demo/azurite{RESET}\n",
        flush=True,
    )


def wait_for_ui(process: subprocess.Popen, timeout: float = 180) -> bool:
    """Until GraphQL answers with the code location loaded; False when dagster dev died or hung."""
    query = json.dumps({"query": "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus "
                                 "locationOrLoadError { __typename ... on PythonError { message } } } } } }"}).encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            request = urllib.request.Request(
                f"http://127.0.0.1:{UI_PORT}/graphql", data=query, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                entries = json.load(response)["data"]["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [e["locationOrLoadError"].get("message") for e in entries
                          if e["locationOrLoadError"]["__typename"] == "PythonError"]
                if errors:
                    print(f"{RED}the code location failed to load:{RESET}\n{errors[0]}", file=sys.stderr)
                return True
        except (OSError, ValueError, KeyError, TypeError):
            pass
        time.sleep(1)
    return False


def where_to_click(example: str, earlier: str, exported: bool = False) -> None:
    ui = f"http://127.0.0.1:{UI_PORT}"
    state = "exported already; a run replaces it" if exported else "not exported yet"
    print(f"""
{GREEN}{BOLD}The Dagster UI is ready: {ui}{RESET}

  See the hours that landed  {ui}/assets/events?view=partitions   (click an hour: rows, parts, blob paths)
  Materialize one hour       {ui}/assets/events   Materialize… > type an hour, e.g. {example} ({state}) > Launch 1 run
  Launch a range backfill    the same dialog with a range, e.g. {earlier} > Launch backfill
  Turn on the hourly sync    {ui}/automation   hourly_export_sensor > toggle it on
  Runs and backfills         {ui}/runs

  Logs: .demo/dagster-dev.log. {BOLD}Ctrl-C{RESET} stops Dagster and Azurite; `make demo` again resumes
  with the same data and history; `make demo-clean` starts over.
""", flush=True)


def main() -> int:
    import warnings

    warnings.filterwarnings("ignore", message=".*is currently in (beta|preview).*")
    env = demo_env()
    for name in [k for k in os.environ if k.startswith(("AMPLITUDE_", "AZURE_"))]:
        del os.environ[name]  # the demo's own settings only, here as in its children
    os.environ.update({k: v for k, v in env.items() if k.startswith(("AMPLITUDE_", "AZURE_", "DAGSTER_"))})
    children = Children()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: it may start ignored
        signal.signal(signum, on_signal)
    try:
        for port, variable, what in ((AZURITE_PORT, "DEMO_AZURITE_PORT", "Azurite"), (UI_PORT, "DEMO_UI_PORT", "the UI")):
            if port_open(port):
                print(f"{RED}127.0.0.1:{port} is in use (another demo or Azurite?): stop what runs there, "
                      f"or pick another port for {what} with {variable}=...{RESET}", file=sys.stderr)
                return 1

        say("1/4", f"starting Azurite, the Azure Storage emulator, on 127.0.0.1:{AZURITE_PORT} (data in .demo/azurite)")
        (DEMO / "azurite").mkdir(exist_ok=True)
        azurite = children.start(
            [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(AZURITE_PORT),
             "--location", str(DEMO / "azurite"), "--skipApiVersionCheck", "--disableTelemetry", "--loose",
             "--silent"],
            stdout=subprocess.DEVNULL, stderr=open(DEMO / "azurite.log", "wb"),
        )
        deadline = time.monotonic() + 60
        while not port_open(AZURITE_PORT):
            if azurite.poll() is not None or time.monotonic() > deadline:
                print(f"{RED}Azurite did not start; see .demo/azurite.log{RESET}", file=sys.stderr)
                return 1
            time.sleep(0.2)

        from amplitude_assets.definitions import defs
        from amplitude_assets.partitions import partition_key
        from amplitude_assets.settings import Settings

        settings = Settings.from_env()
        storage = defs.resources["storage"].process_config_and_initialize()
        window = exportable_window(settings.export_delay_minutes)
        todo = hours_to_export(settings, storage, window)
        first, last = partition_key(window[0]), partition_key(window[-1])
        if not todo:
            say("2/4", f"the last {HOURS} closed hours ({first} .. {last}) are already in the container; nothing to export")
        else:
            start, end = partition_key(todo[0]), partition_key(todo[-1])
            extra = f", {len(todo)} hours are new since the last demo" if len(todo) < HOURS else ""
            if len(todo) > HOURS:
                extra = (f", {len(todo) - HOURS} more hours fill the gap since the last demo so that the merged-ID "
                         f"history stays continuous (`make demo-clean` starts fresh instead)")
            say("2/4", f"exporting {start} .. {end} from the synthetic source{extra} (events, then merged IDs)")
            backfill = children.start(
                [sys.executable, "-m", "amplitude_assets", "backfill", "--start", start, "--end", end],
                env=env, cwd=ROOT,
            )
            if wait(backfill) != 0:
                print(f"{RED}some hours did not export; the UI shows the failed runs and their errors{RESET}",
                      file=sys.stderr)
            children.processes.remove(backfill)

        say("3/4", f"what landed in container {settings.events_container!r} for the last {HOURS} closed hours")
        summary(settings, storage, window)

        say("4/4", f"starting the Dagster UI and daemon on http://127.0.0.1:{UI_PORT} (DAGSTER_HOME=.demo/dagster_home)")
        log = DEMO / "dagster-dev.log"
        dagster = children.start(
            [str(DAGSTER), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(UI_PORT)],
            env=env, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
        )
        if not wait_for_ui(dagster):
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            print(f"{RED}dagster dev did not come up; the end of .demo/dagster-dev.log:{RESET}\n{tail}", file=sys.stderr)
            return 1
        before, exported = suggested_hour(settings, storage, window)
        where_to_click(
            partition_key(before),
            f"[{partition_key(settings.start_hour)}...{partition_key(before)}]",
            exported,
        )
        wait(dagster)
        print(f"{RED}dagster dev exited with {dagster.returncode}; see .demo/dagster-dev.log{RESET}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping Dagster and Azurite ...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave orphans
        children.stop()


if __name__ == "__main__":
    sys.exit(main())
