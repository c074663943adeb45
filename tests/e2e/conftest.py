"""End-to-end fixtures: a real `dagster dev` (webserver and daemon), its own Azurite, headless Chromium.

Every process is started in its own process group on a free loopback port, and the whole
group is killed at teardown, so nothing outlives the session.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from scripts.topology import free_port, wait_for_port
from scripts.topology import stop_group as kill_group
from tests.conftest import AZURITE, ROOT, SETTING_PREFIXES, connection_string, environment, unique_name

DAGSTER = ROOT / ".venv" / "bin" / "dagster"
CHROMIUM = Path(os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
ARTIFACTS = ROOT / "test-artifacts"
KEY_FORMAT = "%Y-%m-%d-%H:%M"
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
PROJECT_ID = "187520"

# `dagster dev` takes 20-40 s to come up on two busy cores; the daemon ticks every ~30 s.
STARTUP_TIMEOUT = 240.0
RUN_TIMEOUT = 300.0
BACKFILL_TIMEOUT = 420.0
# The sensor's runs export an hour once it has been closed this long (AMPLITUDE_EXPORT_DELAY_MINUTES).
EXPORT_DELAY_MINUTES = 10

DAGSTER_YAML = """\
telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: 2
  tag_concurrency_limits:
    - key: "amplitude_assets/merged_ids_chain"
      limit: 1
"""


def hour_key(hour: datetime) -> str:
    return hour.strftime(KEY_FORMAT)


def parse_key(key: str) -> datetime:
    return datetime.strptime(key, KEY_FORMAT).replace(tzinfo=timezone.utc)


def this_hour() -> datetime:
    return datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)


def hour_blobs(hour: datetime) -> tuple[str, str]:
    """(the prefix of the hour's parts, the hour's marker) in Amplitude's layout, default prefix."""
    stem = f"{PROJECT_ID}/{PROJECT_ID}_{hour:%Y-%m-%d}_{hour.hour}"
    return f"{stem}#", f"{stem}_complete"


class GraphQLError(AssertionError):
    pass


class DagsterDev:
    """`dagster dev -w workspace.yaml` on a free port, with its own DAGSTER_HOME and environment."""

    def __init__(self, env: dict[str, str], home: Path, log: Path):
        self.env = env
        self.home = home
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "dagster.yaml").write_text(DAGSTER_YAML)
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [str(DAGSTER), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
                cwd=ROOT, env={**self.env, "DAGSTER_HOME": str(self.home)},
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: the webserver, daemon and code servers
            )

    def stop(self) -> None:
        if self.process is not None:
            kill_group(self.process)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- GraphQL ------------------------------------------------------------------
    def gql(self, query: str, variables: dict | None = None, timeout: float = 60.0) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.load(response)
        if payload.get("errors"):
            raise GraphQLError(f"GraphQL errors: {json.dumps(payload['errors'])[:2000]}")
        return payload["data"]

    def wait_until_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Until GraphQL answers, the code location is loaded, and the daemon reports in."""
        deadline = time.monotonic() + timeout
        last = "nothing yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                data = self.gql(
                    """{ workspaceOrError { __typename ... on Workspace { locationEntries {
                           name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } }
                         instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }""",
                    timeout=10,
                )
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last = f"webserver not answering ({exc})"
                time.sleep(1)
                continue
            entries = {e["name"]: e for e in data["workspaceOrError"].get("locationEntries", [])}
            entry = entries.get("amplitude_assets")
            if entry is None:
                last = f"no location amplitude_assets in {sorted(entries)}"
            elif entry["loadStatus"] != "LOADED":
                last = f"location is {entry['loadStatus']}"
            elif entry["locationOrLoadError"]["__typename"] == "PythonError":
                raise RuntimeError(
                    f"the code location failed to load: {entry['locationOrLoadError']['message']}"
                )
            else:
                daemons = {d["daemonType"]: d["healthy"] for d in data["instance"]["daemonHealth"]["allDaemonStatuses"]}
                needed = ("SENSOR", "BACKFILL", "QUEUED_RUN_COORDINATOR", "ASSET")
                if all(daemons.get(name) for name in needed if name in daemons):
                    return
                last = f"daemons not healthy yet: {daemons}"
            time.sleep(1)
        raise RuntimeError(f"dagster dev not ready after {timeout:.0f}s: {last}\n{self.log_tail()}")

    def repository(self) -> dict:
        """The location's repository: its name, asset keys and sensors, as the UI sees them."""
        data = self.gql(
            """{ repositoriesOrError { __typename ... on RepositoryConnection { nodes {
                   name location { name } assetNodes { assetKey { path } isPartitioned }
                   sensors { name sensorState { status } } } } } }"""
        )
        for node in data["repositoriesOrError"]["nodes"]:
            if node["location"]["name"] == "amplitude_assets":
                return node
        raise AssertionError(f"no repository in location amplitude_assets: {data}")

    def asset_keys(self) -> set[str]:
        return {"/".join(n["assetKey"]["path"]) for n in self.repository()["assetNodes"]}

    def run(self, run_id: str) -> dict:
        data = self.gql(
            """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run {
                   runId status tags { key value } assetSelection { path } } } }""",
            {"id": run_id},
        )
        return data["runOrError"]

    def runs(self, tags: dict[str, str]) -> list[dict]:
        data = self.gql(
            """query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { __typename ... on Runs {
                   results { runId status tags { key value } assetSelection { path } } } } }""",
            {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        )
        return data["runsOrError"]["results"]

    def wait_for_run(self, run_id: str, timeout: float = RUN_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        run = self.run(run_id)
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if run["__typename"] == "Run" and run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                return run
            time.sleep(2)
        raise AssertionError(f"run {run_id} did not finish in {timeout:.0f}s: {run}\n{self.log_tail()}")

    def run_failure(self, run_id: str) -> str:
        """The error messages of a failed run, for assertion messages."""
        data = self.gql(
            """query($id: ID!) { logsForRun(runId: $id, limit: 1000) { __typename ... on EventConnection {
                   events { __typename ... on MessageEvent { message level } } } } }""",
            {"id": run_id},
        )
        events = data["logsForRun"].get("events", [])
        return "\n".join(e["message"] for e in events if e.get("level") in ("ERROR", "CRITICAL"))[-4000:]

    def materializations(self, asset: str, partition: str) -> list[dict]:
        """The asset's materializations of one partition, newest first, with their text metadata."""
        data = self.gql(
            """query($asset: [String!]!, $key: String!) { assetNodeOrError(assetKey: {path: $asset}) {
                   ... on AssetNode { assetMaterializations(partitions: [$key]) { partition runId
                     metadataEntries { label ... on TextMetadataEntry { text } } } } } }""",
            {"asset": [asset], "key": partition},
        )
        return data["assetNodeOrError"]["assetMaterializations"]

    def check_execution(self, asset: str, check: str, partition: str) -> dict | None:
        """The latest execution of an asset check for one partition, with its evaluation."""
        data = self.gql(
            """query($asset: [String!]!, $check: String!, $key: String) {
                   assetCheckExecutions(assetKey: {path: $asset}, checkName: $check, partition: $key, limit: 1) {
                     runId status partition evaluation { success description partition } } }""",
            {"asset": [asset], "check": check, "key": partition},
        )
        executions = data["assetCheckExecutions"]
        return executions[0] if executions else None

    def start_sensor(self, name: str) -> None:
        repository = self.repository()
        data = self.gql(
            """mutation($selector: SensorSelector!) { startSensor(sensorSelector: $selector) {
                   __typename ... on Sensor { sensorState { status } } ... on PythonError { message } } }""",
            {"selector": {"repositoryLocationName": "amplitude_assets", "repositoryName": repository["name"],
                          "sensorName": name}},
        )
        assert data["startSensor"]["__typename"] == "Sensor", data
        assert data["startSensor"]["sensorState"]["status"] == "RUNNING"

    def backfill(self, backfill_id: str) -> dict:
        data = self.gql(
            """query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
                   ... on PartitionBackfill { id status numPartitions partitionNames assetSelection { path }
                     runs(limit: 100) { runId status tags { key value } assetSelection { path } } }
                   ... on PythonError { message } } }""",
            {"id": backfill_id},
        )
        return data["partitionBackfillOrError"]

    def wait_for_backfill(self, backfill_id: str, timeout: float = BACKFILL_TIMEOUT) -> dict:
        """Until the daemon has finished the backfill and all its runs."""
        deadline = time.monotonic() + timeout
        backfill = self.backfill(backfill_id)
        while time.monotonic() < deadline:
            backfill = self.backfill(backfill_id)
            done = backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED")
            runs_done = all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in backfill.get("runs", []))
            if done and runs_done:
                return backfill
            time.sleep(3)
        raise AssertionError(f"backfill {backfill_id} not done in {timeout:.0f}s: {backfill}\n{self.log_tail()}")

    def launch_partition_backfill(self, assets: list[str], partition_names: list[str], title: str) -> str:
        """The mutation the UI's backfill dialog sends."""
        data = self.gql(
            """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
                   __typename ... on LaunchBackfillSuccess { backfillId }
                   ... on PythonError { message } ... on InvalidStepError { invalidStepKey }
                   ... on PartitionSetNotFoundError { message } ... on UnauthorizedError { message } } }""",
            {"params": {
                "assetSelection": [{"path": [a]} for a in assets],
                "partitionNames": partition_names,
                "fromFailure": False,
                "title": title,
                "tags": [{"key": "e2e", "value": title}],
            }},
        )
        result = data["launchPartitionBackfill"]
        assert result["__typename"] == "LaunchBackfillSuccess", f"launchPartitionBackfill refused: {result}"
        return result["backfillId"]


def e2e_env(azurite: str, container: str, start: str, **extra: str) -> dict[str, str]:
    """The environment of a session's `dagster dev`: none of the developer's settings or DAGSTER_*
    variables, the session's Azurite, and `extra` over these defaults."""
    return environment(clear=(*SETTING_PREFIXES, "DAGSTER_"), **{
        "AZURE_STORAGE_CONNECTION_STRING": azurite,
        "AZURE_CREATE_CONTAINERS": "true",
        "AZURE_EVENTS_CONTAINER": container,
        "AMPLITUDE_START": start,
        "AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR": "200",
        "AMPLITUDE_HOURS_PER_RUN": "3",
        "PYTHONUNBUFFERED": "1",
        **extra,
    })


@pytest.fixture(scope="session")
def e2e_azurite() -> Iterator[str]:
    """Azurite for the end-to-end session, in memory, in its own process group."""
    if not AZURITE.exists():
        raise RuntimeError(f"{AZURITE} is missing: run `make bootstrap` (npm install) first")
    port = free_port()
    process = subprocess.Popen(
        [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
         "--skipApiVersionCheck", "--disableTelemetry", "--loose", "--silent"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port, timeout=60)
        yield connection_string(port)
    finally:
        kill_group(process, grace=10)


@pytest.fixture(scope="session")
def e2e_blobs(e2e_azurite) -> Callable[[str], dict[str, int]]:
    """blobs(container) -> {name: size}; an empty dict when the container does not exist."""
    service = BlobServiceClient.from_connection_string(e2e_azurite)

    def listing(container: str) -> dict[str, int]:
        client = service.get_container_client(container)
        if not client.exists():
            return {}
        return {b.name: b.size for b in client.list_blobs()}

    listing.service = service
    return listing


@contextmanager
def running_dagster(tmp_path_factory, name: str, env: dict[str, str]) -> Iterator[DagsterDev]:
    ARTIFACTS.mkdir(exist_ok=True)
    home = tmp_path_factory.mktemp(f"{name}_dagster_home")
    dagster = DagsterDev(env, home, ARTIFACTS / f"{name}-dagster-dev.log")
    dagster.start()
    try:
        dagster.wait_until_ready()
        yield dagster
    finally:
        dagster.stop()


@pytest.fixture(scope="module")
def recent_dagster(e2e_azurite, tmp_path_factory) -> Iterator[Callable[[str, int], DagsterDev]]:
    """recent_dagster(name, hours_back): a `dagster dev` whose partitions start `hours_back` hours
    before this hour, with its own container and an export delay of EXPORT_DELAY_MINUTES, so the
    sensor's catch-up window is small and known. Stopped at the end of the module."""
    with ExitStack() as stack:

        def start(name: str, hours_back: int) -> DagsterDev:
            first = this_hour() - timedelta(hours=hours_back)
            container = unique_name(f"e2e{name}")
            env = e2e_env(e2e_azurite, container, hour_key(first),
                          AMPLITUDE_EXPORT_DELAY_MINUTES=str(EXPORT_DELAY_MINUTES))
            dagster = stack.enter_context(running_dagster(tmp_path_factory, name, env))
            dagster.container = container
            dagster.start_hour = first
            return dagster

        yield start


def exportable_hours(start: datetime, now: datetime) -> list[datetime]:
    """Closed hours from `start` whose export delay has passed at `now`."""
    hours, hour = [], start
    while hour + timedelta(hours=1, minutes=EXPORT_DELAY_MINUTES) <= now:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


def days_back(days: int) -> datetime:
    return (datetime.now(timezone.utc) - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (the system's; Playwright never downloads one)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (scripts/ensure-chromium.sh)")
    from playwright.sync_api import sync_playwright

    for stale in ARTIFACTS.glob("failed-*.png"):
        stale.unlink()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def page(browser, request):
    """A fresh page, 1280x800, without the UI's one-time community pop-up."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(60_000)
    # The UI opens a one-time "Join the Dagster community" pop-up a second after load on
    # localhost, over whatever dialog is open; this is the flag its Skip button sets.
    context.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
    page = context.new_page()
    page.add_locator_handler(
        page.get_by_text("Join the Dagster community"),
        lambda: page.get_by_role("button", name="Skip").click(),
    )
    try:
        yield page
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            ARTIFACTS.mkdir(exist_ok=True)
            try:
                page.screenshot(path=str(ARTIFACTS / f"failed-{request.node.name}.png"))
            except Exception:  # the failure itself is what matters
                pass
        context.close()
