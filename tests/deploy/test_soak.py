"""A soak of the production topology: PostgreSQL, the code server, the daemon's run queue.

The deployment runs as `make deploy-local` starts it (scripts/topology.py: deploy/dagster.yaml
and deploy/workspace.yaml as shipped), against Azurite behind a proxy that faults a share of
the requests. While `hourly_export_sensor` is on, a backfill of SOAK_HOURS hours of both
assets is launched through GraphQL, as the UI's dialog does; one step process is SIGKILLed
mid-hour (as the OOM killer would) and one run worker later. Then the hours left failed,
missing or unchecked are re-launched as a user would: a backfill of those partitions. It ends with:
  - every hour's blobs byte-identical to a clean sequential export of the same hours through
    the command line (markers compared without their export time; lock blobs left out);
  - the merged-ID chain whole, and every check passing for every hour;
  - merged IDs of the backfill's first run's hours came from merged_ids_automation, before the
    second pass (nobody selected merged_ids);
  - no run left queued or in progress.
The throughput of both paths goes to test-artifacts/soak.json (docs/deployment.md).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
import pytest
from azure.storage.blob import BlobServiceClient

from scripts.topology import ROOT, Postgres, Topology
from tests.conftest import connection_string, free_port, start_azurite
from tests.deploy.fault_proxy import FaultProxy
from tests.e2e.conftest import ARTIFACTS, DagsterDev, hour_key, parse_key

pytestmark = [pytest.mark.e2e, pytest.mark.soak]

SOAK_HOURS = 24
EVENTS_PER_HOUR = 300
HOURS_PER_RUN = 6
FAULT_RATE = 0.03
SENSOR_HOURS = 3  # closed hours after the backfill's range, left to the sensor
SOAK_TIMEOUT = 600.0
IDLE_TIMEOUT = 600.0  # until no run is queued or in progress
FINISHED_RUN = ("SUCCESS", "FAILURE", "CANCELED")
UNFINISHED_RUN = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"]
PROJECT = "187520"
EVENTS_CHECKS = ("schema", "unique", "complete")
MERGED_CHECKS = ("schema", "unique", "chain")


class Deployment(DagsterDev):
    """DagsterDev's GraphQL helpers, pointed at the topology's webserver."""

    def __init__(self, topology: Topology):
        self.topology = topology
        self.url = topology.url
        self.process = topology.processes["webserver"]
        self.log = topology.logs / "webserver.log"

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(f"--- {name}\n{self.topology.log_tail(name, lines)}"
                         for name in ("code-server", "daemon", "webserver"))

    def run_messages(self, run_id: str) -> str:
        """Every message of a run's event log, engine events included."""
        data = self.gql(
            """query($id: ID!) { logsForRun(runId: $id, limit: 5000) { __typename ... on EventConnection {
                   events { __typename ... on MessageEvent { message } } } } }""",
            {"id": run_id},
        )
        return "\n".join(e.get("message") or "" for e in data["logsForRun"].get("events", []))

    def quiet(self) -> bool:
        """No run queued or in progress, twice, an automation tick (30 s) apart."""
        if self.unfinished_runs():
            return False
        time.sleep(35)
        return not self.unfinished_runs()

    def unfinished_runs(self) -> list[dict]:
        data = self.gql(
            """query($statuses: [RunStatus!]) { runsOrError(filter: {statuses: $statuses}) { ... on Runs {
                   results { runId status tags { key value } assetSelection { path } } } } }""",
            {"statuses": UNFINISHED_RUN},
        )
        return data["runsOrError"]["results"]

    def all_runs(self) -> list[dict]:
        data = self.gql(
            """{ runsOrError(limit: 1000) { ... on Runs { results { runId status startTime endTime
                   tags { key value } assetSelection { path } } } } }"""
        )
        return data["runsOrError"]["results"]

    def latest_checks(self, asset: str, check: str) -> dict[str, bool]:
        """partition -> whether the latest evaluation of the check for that partition passed."""
        data = self.gql(
            """query($asset: [String!]!, $check: String!) {
                   assetCheckExecutions(assetKey: {path: $asset}, checkName: $check, limit: 2000) {
                     status timestamp evaluation { success partition } } }""",
            {"asset": [asset], "check": check},
        )
        latest: dict[str, tuple[float, bool]] = {}
        for execution in data["assetCheckExecutions"]:
            evaluation = execution["evaluation"]
            if not evaluation or not evaluation["partition"]:
                continue
            key, stamp = evaluation["partition"], execution["timestamp"]
            if key not in latest or stamp > latest[key][0]:
                latest[key] = (stamp, evaluation["success"])
        return {key: passed for key, (_, passed) in latest.items()}

    def first_materializations(self, asset: str) -> dict[str, tuple[float, str]]:
        """partition -> (timestamp in ms, run ID) of its first materialization."""
        data = self.gql(
            """query($asset: [String!]!) { assetNodeOrError(assetKey: {path: $asset}) {
                   ... on AssetNode { assetMaterializations(limit: 5000) { partition timestamp runId } } } }""",
            {"asset": [asset]},
        )
        first: dict[str, tuple[float, str]] = {}
        for event in data["assetNodeOrError"]["assetMaterializations"]:
            stamp = float(event["timestamp"])
            if event["partition"] not in first or stamp < first[event["partition"]][0]:
                first[event["partition"]] = (stamp, event["runId"])
        return first


def hours(first: datetime, count: int) -> list[str]:
    return [hour_key(first + timedelta(hours=n)) for n in range(count)]


def comparable(client, name: str) -> tuple[bytes, dict]:
    """A blob's bytes (a marker's without its export time) and its metadata."""
    blob = client.get_blob_client(name)
    data = blob.download_blob().readall()
    if name.endswith("_complete"):
        manifest = json.loads(data)
        manifest.pop("exported_at", None)
        data = json.dumps(manifest, sort_keys=True).encode()
    return data, dict(blob.get_blob_properties().metadata or {})


def blob_names(client, wanted: set[str]) -> set[str]:
    """Every blob of the hours in `wanted` (by the hour in its name), lock blobs left out."""
    names = set()
    for blob in client.list_blobs():
        if "/_locks/" in f"/{blob.name}" or blob.name.startswith("_locks/"):
            continue
        match = re.search(r"_(\d{4}-\d{2}-\d{2})_(\d{1,2})(?:[#_.]|$)", blob.name.rsplit("/", 1)[-1])
        if match:
            key = f"{match.group(1)}-{int(match.group(2)):02d}:00"
            if key in wanted:
                names.add(blob.name)
    return names


class Killer(threading.Thread):
    """SIGKILLs one step process mid-hour, then one run worker, as the OOM killer would.

    Under the code server, a run is a child process of the server and its steps are children
    of the run. "Mid-hour": while the lock blob of an events hour is leased (an hour is being
    written); the victim is the process the lock's metadata names as its holder, so the kill
    lands in the hour being written. Hours in `spared` (the backfill's first run) are never
    hit, so that their merged IDs can follow them while the rest of the backfill runs. The
    run worker is killed only after the step, again through a held hour: its run must still
    end (the code server notices its child died) so that its hours become retryable."""

    def __init__(self, code_server: subprocess.Popen, client, stop: threading.Event, spared: set[str]):
        super().__init__(name="killer", daemon=True)
        self.server = psutil.Process(code_server.pid)
        self.client = client
        self.stop = stop
        self.spared = spared
        self.killed: dict[str, dict] = {}

    def writers(self) -> list[tuple[str, psutil.Process]]:
        """(hour, step process) for each events hour being written outside the spared hours."""
        found = []
        for blob in self.client.list_blobs(name_starts_with=f"_locks/{PROJECT}/", include=["metadata"]):
            match = re.search(r"_(\d{4}-\d{2}-\d{2})_(\d{1,2})\.lock$", blob.name)
            pid = (blob.metadata or {}).get("pid")
            if blob.lease.state != "leased" or not match or not pid:
                continue
            key = f"{match.group(1)}-{int(match.group(2)):02d}:00"
            step = psutil.Process(int(pid))
            if key not in self.spared and step.parent() and step.parent().parent() == self.server:
                found.append((key, step))
        return found

    def run(self) -> None:
        while not self.stop.is_set() and len(self.killed) < 2:
            try:
                if "step" not in self.killed:
                    for key, step in self.writers()[:1]:
                        step.send_signal(signal.SIGKILL)
                        self.killed["step"] = {"pid": step.pid, "hour": key, "at": time.time()}
                elif "worker" not in self.killed and time.time() - self.killed["step"]["at"] > 20:
                    for key, step in self.writers()[:1]:
                        worker = step.parent()
                        worker.send_signal(signal.SIGKILL)
                        self.killed["worker"] = {"pid": worker.pid, "hour": key, "at": time.time()}
            except Exception:  # noqa: BLE001 - a process that ended meanwhile; a faulted listing
                pass
            time.sleep(0.2)


def wait(condition, timeout: float, what: str, deployment: Deployment, poll: float = 3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"{what} not reached in {timeout:.0f}s\n{deployment.log_tail(30)}")


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    """The topology against a faulting Azurite; yields what the test needs, stops everything after."""
    work = tmp_path_factory.mktemp("soak")
    azurite_port = free_port()
    azurite = start_azurite(azurite_port, None)
    proxy = FaultProxy(azurite_port, rate=0.0, seed=19).start()
    postgres = Postgres(Path(tempfile.mkdtemp(prefix="amplitude_assets-soak-", dir="/var/tmp")))
    now = datetime.now(timezone.utc)
    # Partitions start SOAK_HOURS + SENSOR_HOURS closed hours ago (the export delay is 10 minutes).
    last_closed = (now - timedelta(minutes=10)).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    first = last_closed - timedelta(hours=SOAK_HOURS + SENSOR_HOURS - 1)
    container = f"soak{uuid.uuid4().hex[:10]}"
    settings = {
        "AMPLITUDE_START": hour_key(first),
        "AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR": str(EVENTS_PER_HOUR),
        "AMPLITUDE_HOURS_PER_RUN": str(HOURS_PER_RUN),
        "AMPLITUDE_EXPORT_DELAY_MINUTES": "10",
        "AMPLITUDE_CATCH_UP_HOURS": "72",
        "AMPLITUDE_SENSOR_INTERVAL_SECONDS": "30",
        "AMPLITUDE_HOUR_LOCK_WAIT_SECONDS": "120",
        "AZURE_EVENTS_CONTAINER": container,
        "AZURE_CREATE_CONTAINERS": "true",
    }
    service = BlobServiceClient.from_connection_string(connection_string(azurite_port))
    service.create_container("dagster-compute-logs")
    topology = None
    try:
        postgres.start()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "TZ": "UTC",
            **postgres.env(), **settings,
            "AZURE_STORAGE_CONNECTION_STRING": connection_string(proxy.port),
        }
        topology = Topology(home=work / "dagster_home", env=env, logs=ARTIFACTS / "soak-logs")
        for log in topology.logs.glob("*.log"):
            log.unlink()
        topology.start()
        deployment = Deployment(topology)
        deployment.wait_until_ready()
        yield {
            "deployment": deployment, "proxy": proxy, "service": service, "container": container,
            "first": first, "settings": settings, "azurite_port": azurite_port, "work": work,
        }
    finally:
        if topology is not None:
            topology.stop()
        postgres.remove()
        proxy.stop()
        azurite.kill()
        azurite.wait()


# The soak's own waits bound it (SOAK_TIMEOUT, IDLE_TIMEOUT, the command line's 600 s);
# the suite's 900 s per test would cut it short while it still makes progress.
@pytest.mark.timeout(2400)
def test_a_backfill_and_the_sensor_under_faults_land_every_hour_once(soak):
    deployment: Deployment = soak["deployment"]
    proxy: FaultProxy = soak["proxy"]
    client = soak["service"].get_container_client(soak["container"])
    backfill_hours = hours(soak["first"], SOAK_HOURS)

    proxy.rate = FAULT_RATE
    started = time.monotonic()
    deployment.start_sensor("hourly_export_sensor")
    # The events page's backfill, as the README's second path: merged_ids follows it by automation.
    backfill_id = deployment.launch_partition_backfill(["events"], backfill_hours, "soak")
    stop = threading.Event()
    killer = Killer(soak["deployment"].topology.processes["code-server"], client, stop,
                    spared=set(backfill_hours[:HOURS_PER_RUN]))
    killer.start()

    # Several runs at once: the queue lets up to 4 in, 3 of them a backfill's.
    peak = 0

    def backfill_done():
        nonlocal peak
        peak = max(peak, sum(1 for r in deployment.unfinished_runs() if r["status"] == "STARTED"))
        backfill = deployment.backfill(backfill_id)
        return backfill["status"] in ("COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED") and backfill

    first_backfill = wait(backfill_done, SOAK_TIMEOUT, "the backfill's end", deployment, poll=2)
    wait(lambda: len(killer.killed) == 2 or None, 120, "the kills", deployment)
    stop.set()

    # A dead run never blocks an hour: the killed worker's run ended.
    wait(lambda: not [r for r in deployment.unfinished_runs() if r["status"] != "QUEUED"] or
         all(r["status"] == "QUEUED" for r in deployment.unfinished_runs()), 300,
         "the runs in progress to end", deployment)

    # The user's second pass: a backfill of the partitions that failed, are missing or unchecked.
    relaunches = 0
    relaunched_at = None  # ms, when the second pass was launched
    while True:
        # A kill early in the range leaves the merged-ID chain to be derived again from there,
        # one run of AMPLITUDE_HOURS_PER_RUN hours after another.
        wait(lambda: deployment.quiet(), IDLE_TIMEOUT, "an idle deployment", deployment)
        present = {name for name in (b.name for b in client.list_blobs()) if name.endswith("_complete")}
        unchecked = set()  # a step killed after its hours landed leaves them without checks
        for asset, checks in (("events", EVENTS_CHECKS), ("merged_ids", MERGED_CHECKS)):
            for check in checks:
                latest = deployment.latest_checks(asset, check)
                unchecked |= {k for k in backfill_hours if latest.get(k) is not True}
        missing = [k for k in backfill_hours if k in unchecked
                   or not {f"187520/187520_{parse_key(k):%Y-%m-%d}_{parse_key(k).hour}_complete",
                           f"merged_ids/187520/187520_{parse_key(k):%Y-%m-%d}_{parse_key(k).hour}_complete"} <= present]
        if not missing or relaunches == 3:
            break
        relaunches += 1
        if relaunched_at is None:
            relaunched_at = time.time() * 1000
        again = deployment.launch_partition_backfill(["events", "merged_ids"], missing, f"soak relaunch {relaunches}")
        wait(lambda: deployment.backfill(again)["status"] in ("COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED"),
             SOAK_TIMEOUT, "the relaunched backfill", deployment)
    assert not missing, f"after {relaunches} relaunches, hours still missing: {missing}"
    soak_seconds = time.monotonic() - started
    proxy.rate = 0.0

    # The sensor's hours after the backfill's range land too (events, then merged IDs by automation).
    sensor_hours = hours(soak["first"] + timedelta(hours=SOAK_HOURS), SENSOR_HOURS)

    def sensor_hours_landed():
        present = {b.name for b in client.list_blobs() if b.name.endswith("_complete")}
        return all(f"merged_ids/187520/187520_{parse_key(k):%Y-%m-%d}_{parse_key(k).hour}_complete" in present
                   for k in sensor_hours)

    wait(sensor_hours_landed, 300, "the sensor's hours", deployment)
    wait(lambda: deployment.quiet(), IDLE_TIMEOUT, "no run queued or in progress", deployment)
    all_hours = backfill_hours + sensor_hours

    # Killed, and reported: the step's run and the worker's run both failed, neither hangs.
    runs = deployment.all_runs()
    assert not [r for r in runs if r["status"] not in FINISHED_RUN], "runs left unfinished"
    failures = {r["runId"]: deployment.run_messages(r["runId"]) for r in runs if r["status"] == "FAILURE"}
    step_killed = [i for i, text in failures.items() if re.search(r"child process for step \w+ was terminated by signal 9", text)]
    worker_killed = [i for i, text in failures.items() if f"Run execution process for {i} was terminated by signal 9" in text]
    assert step_killed, "no failed run reports its step process killed by signal 9"
    assert worker_killed, "no failed run reports its run worker killed by signal 9: a dead run must end, not stay STARTED"
    assert peak >= 3, f"at most {peak} runs ran at once"

    # Merged IDs followed by automation: nobody selected merged_ids in the first backfill, and
    # the first run's hours (spared by the kills) got theirs from merged_ids_automation before
    # the second pass. How long after its events each landed is reported, not asserted: with
    # hours this small, run start-up and the daemons' 30 s ticks, not the work, decide it.
    events_at = deployment.first_materializations("events")
    merged_at = deployment.first_materializations("merged_ids")
    tags = {r["runId"]: {t["key"]: t["value"] for t in r["tags"]} for r in runs}
    early = backfill_hours[:HOURS_PER_RUN]
    by_automation = [k for k in early if tags.get(merged_at[k][1], {}).get("dagster/sensor_name") == "merged_ids_automation"]
    assert by_automation == early, f"merged IDs of {sorted(set(early) - set(by_automation))} did not come from merged_ids_automation"
    if relaunched_at is not None:
        assert max(merged_at[k][0] for k in early) < relaunched_at, "merged IDs of the first run's hours waited for the second pass"
    merged_lag = [round((merged_at[k][0] - events_at[k][0]) / 1000, 1) for k in early]

    # Every check passed for every hour.
    for asset, checks in (("events", EVENTS_CHECKS), ("merged_ids", MERGED_CHECKS)):
        for check in checks:
            latest = deployment.latest_checks(asset, check)
            failed = [k for k in all_hours if latest.get(k) is not True]
            assert not failed, f"{asset} {check} did not pass for {failed}"

    # A clean sequential export of the same hours, through the command line, in one process.
    reference = f"ref{uuid.uuid4().hex[:10]}"
    home = soak["work"] / "reference_home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(soak["work"]), "TZ": "UTC",
        "DAGSTER_HOME": str(home), **soak["settings"], "AZURE_EVENTS_CONTAINER": reference,
        "AZURE_STORAGE_CONNECTION_STRING": connection_string(soak["azurite_port"]),
    }
    cli_started = time.monotonic()
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "amplitude_assets", "backfill",
         "--start", all_hours[0], "--end", all_hours[-1]],
        cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    cli_seconds = time.monotonic() - cli_started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    expected_client = soak["service"].get_container_client(reference)
    wanted = set(all_hours)
    landed, expected = blob_names(client, wanted), blob_names(expected_client, wanted)
    assert landed == expected, (f"only in the soak: {sorted(landed - expected)[:10]}; "
                                f"only in the clean export: {sorted(expected - landed)[:10]}")
    different = [n for n in sorted(expected) if comparable(client, n) != comparable(expected_client, n)]
    assert not different, f"{len(different)} blobs differ from the clean export, e.g. {different[:5]}"

    report = {
        "hours": len(all_hours), "backfill_hours": SOAK_HOURS, "events_per_hour": EVENTS_PER_HOUR,
        "hours_per_run": HOURS_PER_RUN, "fault_rate": FAULT_RATE, "faults": dict(proxy.counts),
        "soak_seconds": round(soak_seconds, 1),
        "soak_hours_per_minute": round(SOAK_HOURS / (soak_seconds / 60), 1),
        "cli_seconds": round(cli_seconds, 1), "cli_hours_per_minute": round(len(all_hours) / (cli_seconds / 60), 1),
        "relaunches": relaunches, "runs": len(runs), "failed_runs": len(failures), "peak_concurrent_runs": peak,
        "blobs_compared": len(expected), "killed": killer.killed,
        "step_killed_run": step_killed[0], "worker_killed_run": worker_killed[0],
        "first_backfill": first_backfill["status"],
        "merged_ids_lag_seconds": {"min": min(merged_lag), "max": max(merged_lag)},
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "soak.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
