"""The deployment files agree with each other and with the chart they are written for.

deploy/dagster.yaml is the instance as the code location expects it; deploy/docker-compose.yaml
mounts it as it is, and deploy/helm/values.yaml says the same things in the Helm chart's terms.
Each check below is a function that returns the differences it finds (empty when the files
agree), so a test can also show that the check notices a difference.

tests/deploy/values.schema.json is Dagster's Helm chart, helm/dagster/values.schema.json at dagster-io/dagster commit 437f92d (the nearest to 1.13.27 available), copied as is.

That schema refers to Kubernetes object definitions (env sources, volumes, probes, ...) by URL
(yannh/kubernetes-json-schema, v1.19.0). Validation here makes no network request: those
references resolve, through jsonschema's referencing registry, to empty schemas, so the
Dagster part of the values is checked and the Kubernetes objects inside it are not.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import referencing
import yaml
from referencing.jsonschema import DRAFT202012

from amplitude_assets.sensors import MERGED_IDS_CHAIN
from tests.helpers import assert_notices

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMA = Path(__file__).with_name("values.schema.json")
KUBERNETES_DEFINITIONS = (
    "https://raw.githubusercontent.com/yannh/kubernetes-json-schema/master/v1.19.0/_definitions.json"
)

DAGSTER_HOME = "/opt/dagster/dagster_home"
WORKSPACE = "/opt/dagster/app/workspace.yaml"
CODE_SERVICE = "amplitude_assets_code"
DAGSTER_SERVICES = (CODE_SERVICE, "webserver", "daemon")
LOCATION_NAME = "amplitude_assets"
MODULE = "amplitude_assets.definitions"


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def dagster_yaml() -> dict:
    """deploy/dagster.yaml: the instance's configuration."""
    return load_yaml(DEPLOY / "dagster.yaml")


@pytest.fixture(scope="module")
def helm() -> dict:
    return load_yaml(DEPLOY / "helm" / "values.yaml")


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(DEPLOY / "docker-compose.yaml")


def camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(word.title() for word in rest)


def tag_limits(limits: list[dict] | None) -> list[tuple]:
    """Tag concurrency limits as comparable (key, value, limit) rows, in any order."""
    return sorted((row["key"], json.dumps(row.get("value"), sort_keys=True), row["limit"]) for row in limits or [])


# --- the Helm values against the chart's schema -------------------------------------------------


def kubernetes_stub(schema: dict) -> dict:
    """A document where every Kubernetes definition the schema points at is the empty schema."""
    stub: dict = {}

    def visit(node):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(KUBERNETES_DEFINITIONS + "#/"):
                target = stub
                for part in ref.split("#/", 1)[1].split("/"):
                    target = target.setdefault(part, {})
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return stub


def schema_errors(values: dict) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    # No retrieve function: any other external reference fails to resolve instead of fetching.
    registry = referencing.Registry().with_resource(
        KUBERNETES_DEFINITIONS, DRAFT202012.create_resource(kubernetes_stub(schema))
    )
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator_class.check_schema(schema)
    validator = validator_class(schema, registry=registry)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(values)]


def test_the_schema_is_the_charts(helm):
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "DagsterHelmValues"
    # The user-deployments subchart is inlined in this schema, not referenced by URL.
    assert schema["properties"]["dagster-user-deployments"] == {"$ref": "#/$defs/UserDeployments"}
    external = set(re.findall(r'"\$ref": "(https?://[^"#]*)', SCHEMA.read_text()))
    assert external == {KUBERNETES_DEFINITIONS}


def test_helm_values_validate_against_the_chart_schema(helm):
    assert schema_errors(helm) == []


def test_the_schema_check_can_fail(helm):
    wrong = copy.deepcopy(helm)
    wrong["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["maxConcurrentRuns"] = "four"
    del wrong["telemetry"]
    wrong["dagster-user-deployments"]["deployments"][0].pop("port")
    errors = schema_errors(wrong)
    assert any("maxConcurrentRuns" in e for e in errors), errors
    assert any("'telemetry' is a required property" in e for e in errors), errors
    assert any("'port' is a required property" in e for e in errors), errors


# --- the run queue -------------------------------------------------------------------------------


def queue_differences(instance: dict, helm: dict) -> list[str]:
    found = []
    coordinator = instance["run_coordinator"]
    if (coordinator.get("module"), coordinator.get("class")) != ("dagster.core.run_coordinator", "QueuedRunCoordinator"):
        found.append(f"dagster.yaml: run coordinator is {coordinator.get('module')}.{coordinator.get('class')}")
    config = coordinator.get("config", {})
    helm_coordinator = helm["dagsterDaemon"]["runCoordinator"]
    if not helm_coordinator.get("enabled") or helm_coordinator.get("type") != "QueuedRunCoordinator":
        found.append(f"helm: run coordinator is {helm_coordinator.get('type')} (enabled: {helm_coordinator.get('enabled')})")
    queued = helm_coordinator["config"]["queuedRunCoordinator"]
    for key in ("max_concurrent_runs", "dequeue_interval_seconds"):
        if config.get(key) != queued.get(camel(key)):
            found.append(f"{key}: dagster.yaml {config.get(key)!r}, helm {queued.get(camel(key))!r}")
    ours, theirs = tag_limits(config.get("tag_concurrency_limits")), tag_limits(queued.get("tagConcurrencyLimits"))
    for row in sorted(set(ours) - set(theirs)):
        found.append(f"tag limit {row} in dagster.yaml only")
    for row in sorted(set(theirs) - set(ours)):
        found.append(f"tag limit {row} in helm only")
    if helm.get("concurrency", {}).get("enabled"):
        found.append("helm: concurrency.enabled would set run limits beside the run coordinator's")
    return found


def test_queue_limits_agree(dagster_yaml, helm):
    assert queue_differences(dagster_yaml, helm) == []


def test_the_chain_tag_is_the_sensors(dagster_yaml, helm):
    limits = {row["key"]: row for row in dagster_yaml["run_coordinator"]["config"]["tag_concurrency_limits"]}
    assert "amplitude_assets/merged_ids_chain" == MERGED_IDS_CHAIN
    assert MERGED_IDS_CHAIN in limits
    # One run of the chain at a time, for any value of the tag (the destination).
    assert limits[MERGED_IDS_CHAIN]["limit"] == 1
    assert "value" not in limits[MERGED_IDS_CHAIN]


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda i, h: i["run_coordinator"]["config"].update(max_concurrent_runs=5), "max_concurrent_runs"),
        (lambda i, h: h["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"].update(
            dequeueIntervalSeconds=5), "dequeue_interval_seconds"),
        (lambda i, h: h["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"][
            "tagConcurrencyLimits"][0].update(limit=2), "helm only"),
        (lambda i, h: h["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"][
            "tagConcurrencyLimits"][1].update(key="dagster/backfills"), "dagster/backfill"),
        (lambda i, h: h["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"][
            "tagConcurrencyLimits"][0].update(value="amplitude/merged_ids"), "helm only"),
        (lambda i, h: i["run_coordinator"]["config"]["tag_concurrency_limits"].pop(), "helm only"),
        (lambda i, h: h["dagsterDaemon"]["runCoordinator"].update(enabled=False), "run coordinator"),
        (lambda i, h: h["concurrency"].update(enabled=True), "concurrency.enabled"),
    ],
)
def test_the_queue_check_can_fail(dagster_yaml, helm, change, expected):
    assert_notices(queue_differences, change, expected, dagster_yaml, helm)


# --- run monitoring ------------------------------------------------------------------------------

# The chart's settings that deploy/dagster.yaml leaves out, at the values Dagster uses without them.
HELM_RUN_MONITORING_DEFAULTS = {"maxResumeRunAttempts": 0, "freeSlotsAfterRunEndSeconds": 0}


def run_monitoring_differences(instance: dict, helm: dict) -> list[str]:
    ours = instance["run_monitoring"]
    theirs = helm["dagsterDaemon"]["runMonitoring"]
    found = [
        f"{key}: dagster.yaml {value!r}, helm {theirs.get(camel(key))!r}"
        for key, value in ours.items()
        if theirs.get(camel(key)) != value
    ]
    known = {camel(key) for key in ours}
    for key, value in theirs.items():
        if key not in known and HELM_RUN_MONITORING_DEFAULTS.get(key, object()) != value:
            found.append(f"helm only: {key}: {value!r}")
    return found


def test_run_monitoring_agrees(dagster_yaml, helm):
    assert run_monitoring_differences(dagster_yaml, helm) == []


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda i, h: i["run_monitoring"].update(max_runtime_seconds=7200), "max_runtime_seconds"),
        (lambda i, h: h["dagsterDaemon"]["runMonitoring"].update(pollIntervalSeconds=120), "poll_interval_seconds"),
        (lambda i, h: h["dagsterDaemon"]["runMonitoring"].pop("cancelTimeoutSeconds"), "cancel_timeout_seconds"),
        (lambda i, h: h["dagsterDaemon"]["runMonitoring"].update(enabled=False), "enabled"),
        (lambda i, h: h["dagsterDaemon"]["runMonitoring"].update(maxResumeRunAttempts=3), "maxResumeRunAttempts"),
    ],
)
def test_the_run_monitoring_check_can_fail(dagster_yaml, helm, change, expected):
    assert_notices(run_monitoring_differences, change, expected, dagster_yaml, helm)


def daemon_thread_differences(instance: dict, helm: dict) -> list[str]:
    found = []
    for section in ("sensors", "backfills"):
        ours = instance.get(section, {})
        theirs = helm["dagsterDaemon"].get(section) or {}
        for key, value in ours.items():
            if theirs.get(camel(key)) != value:
                found.append(f"{section}.{key}: dagster.yaml {value!r}, helm {theirs.get(camel(key))!r}")
    return found


def test_daemon_threads_agree(dagster_yaml, helm):
    assert daemon_thread_differences(dagster_yaml, helm) == []
    changed = copy.deepcopy(helm)
    changed["dagsterDaemon"]["backfills"]["numWorkers"] = 4
    assert daemon_thread_differences(dagster_yaml, changed) == ["backfills.num_workers: dagster.yaml 2, helm 4"]


# --- storage -------------------------------------------------------------------------------------

STORAGE_FIELDS = ("username", "password", "hostname", "db_name", "port")


def instance_pg_variables(instance: dict) -> dict[str, str]:
    """dagster.yaml's postgres_db field -> the environment variable it is read from."""
    db = instance["storage"]["postgres"]["postgres_db"]
    return {field: db[field]["env"] for field in STORAGE_FIELDS if isinstance(db.get(field), dict) and "env" in db[field]}


def compose_storage_differences(instance: dict, compose: dict) -> list[str]:
    found = []
    variables = instance_pg_variables(instance)
    for field in STORAGE_FIELDS:
        if field not in variables:
            found.append(f"dagster.yaml: postgres_db.{field} is not read from the environment")
    services = compose["services"]
    postgres = services.get("postgresql", {}).get("environment", {})
    expected = {
        "username": postgres.get("POSTGRES_USER"),
        "password": postgres.get("POSTGRES_PASSWORD"),
        "hostname": "postgresql",
        "db_name": postgres.get("POSTGRES_DB"),
        "port": "5432",
    }
    for name in DAGSTER_SERVICES:
        environment = services[name].get("environment", {})
        for field, variable in variables.items():
            if variable not in environment:
                found.append(f"compose {name}: {variable} (postgres_db.{field}) is not set")
            elif str(environment[variable]) != str(expected[field]):
                found.append(f"compose {name}: {variable}={environment[variable]!r}, the database has {expected[field]!r}")
        password = environment.get(variables.get("password", ""), "")
        if not str(password).startswith("${"):
            found.append(f"compose {name}: the PostgreSQL password is written inline")
    if not str(postgres.get("POSTGRES_PASSWORD", "")).startswith("${"):
        found.append("compose postgresql: the password is written inline")
    return found


def helm_storage_differences(instance: dict, helm: dict) -> list[str]:
    found = []
    postgresql = helm["postgresql"]
    if postgresql.get("enabled"):
        found.append("helm: postgresql.enabled deploys the chart's own PostgreSQL")
    for key in ("postgresqlHost", "postgresqlUsername", "postgresqlDatabase"):
        if not postgresql.get(key):
            found.append(f"helm: postgresql.{key} is empty")
    if postgresql.get("postgresqlPassword"):
        found.append("helm: postgresql.postgresqlPassword is written inline")
    if helm.get("generatePostgresqlPasswordSecret", True):
        found.append("helm: generatePostgresqlPasswordSecret would write the password into a chart Secret")
    if not helm["global"].get("postgresqlSecretName"):
        found.append("helm: global.postgresqlSecretName is empty")
    scheme = instance["storage"]["postgres"]["postgres_db"].get("scheme")
    if (scheme or "") != (postgresql.get("postgresqlScheme") or ""):
        found.append(f"scheme: dagster.yaml {scheme!r}, helm {postgresql.get('postgresqlScheme')!r}")
    return found


def test_storage_agrees(dagster_yaml, helm, compose):
    assert compose_storage_differences(dagster_yaml, compose) == []
    assert helm_storage_differences(dagster_yaml, helm) == []


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda i, c: i["storage"]["postgres"]["postgres_db"]["hostname"].update(env="PG_HOST"), "PG_HOST"),
        (lambda i, c: c["services"]["daemon"]["environment"].pop("DAGSTER_PG_PORT"), "DAGSTER_PG_PORT"),
        (lambda i, c: c["services"]["webserver"]["environment"].update(DAGSTER_PG_DB="other"), "DAGSTER_PG_DB"),
        (lambda i, c: c["services"][CODE_SERVICE]["environment"].update(DAGSTER_PG_HOST="db"), "DAGSTER_PG_HOST"),
        (lambda i, c: c["services"]["daemon"]["environment"].update(DAGSTER_PG_PASSWORD="hunter2"), "inline"),
        (lambda i, c: i["storage"]["postgres"]["postgres_db"].update(port=5432), "postgres_db.port"),
    ],
)
def test_the_compose_storage_check_can_fail(dagster_yaml, compose, change, expected):
    def unshared_then_changed(instance, compose):
        # PyYAML shares one object between the services for the `&dagster-environment` anchor.
        for name in DAGSTER_SERVICES:
            compose["services"][name]["environment"] = dict(compose["services"][name]["environment"])
        change(instance, compose)

    assert_notices(compose_storage_differences, unshared_then_changed, expected, dagster_yaml, compose)


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda i, h: h["postgresql"].update(enabled=True), "postgresql.enabled"),
        (lambda i, h: h["postgresql"].update(postgresqlPassword="secret"), "inline"),
        (lambda i, h: h.update(generatePostgresqlPasswordSecret=True), "generatePostgresqlPasswordSecret"),
        (lambda i, h: h["postgresql"].update(postgresqlHost=""), "postgresqlHost"),
        (lambda i, h: h["postgresql"].update(postgresqlScheme=""), "scheme"),
    ],
)
def test_the_helm_storage_check_can_fail(dagster_yaml, helm, change, expected):
    assert_notices(helm_storage_differences, change, expected, dagster_yaml, helm)


# --- compute logs and telemetry ------------------------------------------------------------------


def compute_log_differences(instance: dict, helm: dict) -> list[str]:
    found = []
    ours = instance["compute_logs"]
    manager = helm["computeLogManager"]
    if manager.get("type") != "CustomComputeLogManager":
        found.append(f"helm: computeLogManager.type is {manager.get('type')}")
    theirs = (manager.get("config") or {}).get("customComputeLogManager") or {}
    for key in ("module", "class"):
        if ours.get(key) != theirs.get(key):
            found.append(f"{key}: dagster.yaml {ours.get(key)!r}, helm {theirs.get(key)!r}")
    our_config, their_config = ours.get("config") or {}, theirs.get("config") or {}
    for key in sorted(set(our_config) | set(their_config)):
        if our_config.get(key) != their_config.get(key):
            found.append(f"config.{key}: dagster.yaml {our_config.get(key)!r}, helm {their_config.get(key)!r}")
    return found


def test_compute_logs_agree(dagster_yaml, helm):
    assert compute_log_differences(dagster_yaml, helm) == []
    config = dagster_yaml["compute_logs"]["config"]
    assert {"container", "prefix", "upload_interval"} <= set(config)


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda i, h: i["compute_logs"].update(module="dagster_azure.blob.compute_log_manager"), "module"),
        (lambda i, h: h["computeLogManager"]["config"]["customComputeLogManager"].update(
            **{"class": "ComputeLogManager"}), "class"),
        (lambda i, h: i["compute_logs"]["config"].update(container="logs"), "config.container"),
        (lambda i, h: h["computeLogManager"]["config"]["customComputeLogManager"]["config"].update(
            prefix="dagster"), "config.prefix"),
        (lambda i, h: h["computeLogManager"]["config"]["customComputeLogManager"]["config"].pop(
            "upload_interval"), "config.upload_interval"),
        (lambda i, h: h["computeLogManager"].update(type="AzureBlobComputeLogManager"), "type"),
    ],
)
def test_the_compute_log_check_can_fail(dagster_yaml, helm, change, expected):
    assert_notices(compute_log_differences, change, expected, dagster_yaml, helm)


def test_telemetry_is_off(dagster_yaml, helm):
    assert dagster_yaml["telemetry"]["enabled"] is False
    assert helm["telemetry"]["enabled"] is False


# --- the code location in Helm -------------------------------------------------------------------


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def dockerfile_port() -> int:
    return int(re.search(r"^EXPOSE\s+(\d+)", dockerfile(), re.M).group(1))


def helm_location_differences(helm: dict) -> list[str]:
    found = []
    deployments = helm["dagster-user-deployments"]["deployments"]
    if [d["name"] for d in deployments] != ["amplitude-assets"]:
        found.append(f"helm: user deployments are {[d['name'] for d in deployments]}")
        return found
    deployment = deployments[0]
    if deployment.get("dagsterApiGrpcArgs") != ["-m", MODULE]:
        found.append(f"helm: dagsterApiGrpcArgs is {deployment.get('dagsterApiGrpcArgs')}")
    if deployment["port"] != dockerfile_port():
        found.append(f"helm: port {deployment['port']}, the Dockerfile exposes {dockerfile_port()}")
    if {"name": "amplitude-assets-env"} not in (deployment.get("envSecrets") or []):
        found.append("helm: the code location does not read the amplitude-assets-env Secret")
    if helm["runLauncher"]["type"] != "K8sRunLauncher":
        found.append(f"helm: run launcher is {helm['runLauncher']['type']}")
    workspace = helm["dagsterWebserver"]["workspace"]
    if workspace.get("enabled"):
        servers = workspace.get("servers") or []
        wanted = [{"host": deployment["name"], "port": deployment["port"], "name": LOCATION_NAME}]
        if servers != wanted:
            found.append(f"helm: workspace servers {servers}, the deployment is {wanted}")
    return found


def test_helm_code_location(helm):
    assert helm_location_differences(helm) == []


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda h: h["dagster-user-deployments"]["deployments"][0].update(port=4000), "port"),
        (lambda h: h["dagster-user-deployments"]["deployments"][0].update(
            dagsterApiGrpcArgs=["-m", "amplitude_assets"]), "dagsterApiGrpcArgs"),
        (lambda h: h["dagsterWebserver"]["workspace"]["servers"][0].update(name="amplitude-assets"), "workspace"),
        (lambda h: h["runLauncher"].update(type="CeleryK8sRunLauncher"), "run launcher"),
        (lambda h: h["dagster-user-deployments"]["deployments"][0].update(envSecrets=[]), "amplitude-assets-env"),
    ],
)
def test_the_helm_location_check_can_fail(helm, change, expected):
    assert_notices(helm_location_differences, change, expected, helm)


# --- compose: the code server, the workspace and the instance ------------------------------------


def option(command: list[str], *names: str) -> str | None:
    for index, word in enumerate(command):
        for name in names:
            if word == name and index + 1 < len(command):
                return command[index + 1]
            if word.startswith(name + "="):
                return word.split("=", 1)[1]
    return None


def as_list(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def volume_target(volumes: list, target: str) -> str | None:
    """The source mounted at `target`, or None."""
    for volume in volumes or []:
        if isinstance(volume, str):
            parts = volume.split(":")
            if len(parts) >= 2 and parts[1] == target:
                return parts[0]
        elif volume.get("target") == target:
            return volume.get("source")
    return None


def compose_differences(compose: dict) -> list[str]:
    found = []
    services = compose["services"]
    code = services[CODE_SERVICE]
    command = as_list(code.get("command", []))
    if command[:3] != ["dagster", "api", "grpc"]:
        found.append(f"compose {CODE_SERVICE}: command is {command}")
    if option(command, "--module-name", "-m") != MODULE:
        found.append(f"compose {CODE_SERVICE}: serves module {option(command, '--module-name', '-m')!r}")
    if option(command, "--host", "-h") != "0.0.0.0":
        found.append(f"compose {CODE_SERVICE}: listens on {option(command, '--host', '-h')!r}")
    port = option(command, "--port", "-p")
    if code.get("build", {}).get("dockerfile") != "Dockerfile":
        found.append(f"compose {CODE_SERVICE}: not built from the repository's Dockerfile")
    for name in DAGSTER_SERVICES:
        service = services[name]
        environment = service.get("environment", {})
        if name != CODE_SERVICE:
            if str(environment.get("DAGSTER_GRPC_PORT")) != str(port):
                found.append(f"compose {name}: DAGSTER_GRPC_PORT={environment.get('DAGSTER_GRPC_PORT')!r}, "
                             f"the code server listens on {port!r}")
            if environment.get("DAGSTER_GRPC_HOST") != CODE_SERVICE:
                found.append(f"compose {name}: DAGSTER_GRPC_HOST={environment.get('DAGSTER_GRPC_HOST')!r}")
            if option(as_list(service.get("command", [])), "-w", "--workspace") != WORKSPACE:
                found.append(f"compose {name}: does not load {WORKSPACE}")
            if volume_target(service.get("volumes"), WORKSPACE) not in ("./workspace.yaml", "workspace.yaml"):
                found.append(f"compose {name}: deploy/workspace.yaml is not mounted at {WORKSPACE}")
            if service.get("image") != code.get("image"):
                found.append(f"compose {name}: image {service.get('image')!r}, not the code server's")
        if environment.get("DAGSTER_HOME") != DAGSTER_HOME:
            found.append(f"compose {name}: DAGSTER_HOME={environment.get('DAGSTER_HOME')!r}")
        if volume_target(service.get("volumes"), f"{DAGSTER_HOME}/dagster.yaml") not in ("./dagster.yaml", "dagster.yaml"):
            found.append(f"compose {name}: deploy/dagster.yaml is not its {DAGSTER_HOME}/dagster.yaml")
        if service.get("env_file") is None:
            found.append(f"compose {name}: reads no env_file for the AZURE_* settings")
    webserver = as_list(services["webserver"].get("command", []))
    if webserver[:1] != ["dagster-webserver"]:
        found.append(f"compose webserver: command is {webserver}")
    daemon = as_list(services["daemon"].get("command", []))
    if daemon[:2] != ["dagster-daemon", "run"]:
        found.append(f"compose daemon: command is {daemon}")
    return found


def test_compose_topology(compose):
    assert compose_differences(compose) == []
    services = compose["services"]
    assert services["postgresql"]["image"] == "postgres:15"
    assert services["azurite"]["profiles"] == ["emulator"]
    assert services["azurite"]["image"].startswith("mcr.microsoft.com/azure-storage/azurite")


def test_compose_azurite_is_the_pinned_release(compose):
    pinned = json.loads((ROOT / "package.json").read_text())["dependencies"]["azurite"]
    assert compose["services"]["azurite"]["image"].endswith(":" + pinned)


def _service(compose, name):
    service = compose["services"][name]
    service["environment"] = dict(service.get("environment", {}))
    service["volumes"] = list(service.get("volumes", []))
    return service


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda c: _service(c, CODE_SERVICE).update(command=["dagster", "api", "grpc", "--host", "0.0.0.0",
                                                            "--port", "4001", "--module-name", MODULE]),
         "DAGSTER_GRPC_PORT"),
        (lambda c: _service(c, CODE_SERVICE).update(command=["dagster", "api", "grpc", "--host", "0.0.0.0",
                                                            "--port", "4000", "-m", "amplitude_assets"]),
         "serves module"),
        (lambda c: _service(c, "daemon")["environment"].update(DAGSTER_GRPC_PORT="4001"), "DAGSTER_GRPC_PORT"),
        (lambda c: _service(c, "webserver")["environment"].update(DAGSTER_GRPC_HOST="localhost"),
         "DAGSTER_GRPC_HOST"),
        (lambda c: _service(c, "daemon").update(command=["dagster-daemon", "run"]), "does not load"),
        (lambda c: _service(c, "webserver")["volumes"].pop(), "workspace.yaml is not mounted"),
        (lambda c: _service(c, CODE_SERVICE)["volumes"].pop(0), "dagster.yaml is not"),
        (lambda c: _service(c, "daemon")["environment"].pop("DAGSTER_HOME"), "DAGSTER_HOME"),
        (lambda c: _service(c, "webserver").pop("env_file"), "env_file"),
    ],
)
def test_the_compose_check_can_fail(compose, change, expected):
    assert_notices(compose_differences, change, expected, compose)


def test_dockerfile_installs_the_deploy_extra():
    install = [line for line in dockerfile().splitlines() if line.startswith("RUN") and "pip install" in line]
    assert install, "the Dockerfile installs nothing"
    assert any(re.search(r"""["']?\.\[deploy\]["']?""", line) for line in install), install
    # The image's own command serves the code location on the port it exposes.
    cmd = json.loads(re.search(r"^CMD\s+(\[.*\])\s*$", dockerfile(), re.M).group(1))
    assert option(cmd, "-m", "--module-name") == MODULE
    assert int(option(cmd, "-p", "--port")) == dockerfile_port()


# --- the workspace -------------------------------------------------------------------------------


def test_workspace_is_the_code_server(compose):
    workspace = load_yaml(DEPLOY / "workspace.yaml")
    assert list(workspace) == ["load_from"]
    [entry] = workspace["load_from"]
    assert list(entry) == ["grpc_server"]
    server = entry["grpc_server"]
    assert server["host"] == {"env": "DAGSTER_GRPC_HOST"}
    assert server["port"] == {"env": "DAGSTER_GRPC_PORT"}
    assert server["location_name"] == LOCATION_NAME


def test_location_name_is_the_same_everywhere(helm):
    root = load_yaml(ROOT / "workspace.yaml")
    cloud = load_yaml(ROOT / "dagster_cloud.yaml")
    deploy = load_yaml(DEPLOY / "workspace.yaml")
    names = {
        "workspace.yaml": [next(iter(e.values()))["location_name"] for e in root["load_from"]],
        "dagster_cloud.yaml": [loc["location_name"] for loc in cloud["locations"]],
        "deploy/workspace.yaml": [next(iter(e.values()))["location_name"] for e in deploy["load_from"]],
        "deploy/helm/values.yaml": [s["name"] for s in helm["dagsterWebserver"]["workspace"]["servers"]],
    }
    assert names == {file: [LOCATION_NAME] for file in names}
    assert [e["python_module"]["module_name"] for e in root["load_from"]] == [MODULE]
    assert [loc["code_source"]["module_name"] for loc in cloud["locations"]] == [MODULE]
