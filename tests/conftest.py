"""Shared fixtures: one real Azurite per test session, the settings a test runs with, fresh containers.

- `settings_env(**settings)` sets the code location's variables for one test, in an environment
  cleared of the developer's AMPLITUDE_* and AZURE_* settings, and returns that environment for
  a process the test starts. It is the one way tests set variables.
- `fresh_container()` creates an empty container on the session's Azurite; `container` is one of
  them, set as the destination (AZURE_STORAGE_CONNECTION_STRING, AZURE_EVENTS_CONTAINER).
- Every test gets a marker from the fixtures it uses: `azurite` when one of them is named after
  Azurite, `unit` otherwise (the end-to-end tests mark themselves `e2e`). tests/README.md.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

# The loopback helpers and Azurite ship in scripts/topology.py (scripts.compare_exports uses
# them too); bench/ and the tests import them from here.
from scripts.topology import (  # noqa: F401
    ACCOUNT,
    ACCOUNT_KEY,
    AZURITE,
    ROOT,
    connection_string,
    free_port,
    start_azurite,
    wait_for_port,
)
WRONG_KEY = base64.b64encode(b"this is not the account key, not at all!").decode()

# The code location's settings: cleared for every test that sets any, so a developer's shell cannot leak in.
SETTING_PREFIXES = ("AMPLITUDE_", "AZURE_")


def blob_endpoint(connection: str) -> str:
    """The account URL in a connection string: http://127.0.0.1:<port>/devstoreaccount1."""
    return connection.split("BlobEndpoint=")[1].rstrip(";")


def unique_name(prefix: str = "t") -> str:
    """A container name no other test uses (created or not)."""
    return f"{prefix}{uuid.uuid4().hex[:20]}"


def environment(*, clear: tuple[str, ...] = SETTING_PREFIXES, **settings: str) -> dict[str, str]:
    """This process's environment without the variables whose names start with `clear`, plus
    `settings`: what a process started by a test, or a session's `dagster dev`, runs with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(clear)}
    env.update(settings)
    return env


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`azurite` for a test that uses a fixture named after Azurite (the session's, or one of its
    own), `unit` for any other test that is not `e2e`."""
    for item in items:
        if item.get_closest_marker("e2e"):
            continue
        uses_azurite = any("azurite" in name for name in getattr(item, "fixturenames", ()))
        item.add_marker(pytest.mark.azurite if uses_azurite else pytest.mark.unit)


@pytest.fixture(scope="session")
def azurite() -> Iterator[str]:
    """A connection string to a fresh Azurite that lives for the whole test session."""
    port = free_port()
    process = start_azurite(port, None)
    try:
        yield connection_string(port)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def clean_env(monkeypatch) -> pytest.MonkeyPatch:
    """This test's environment, without the developer's AMPLITUDE_* and AZURE_* settings."""
    for name in [k for k in os.environ if k.startswith(SETTING_PREFIXES)]:
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def settings_env(clean_env) -> Callable[..., dict[str, str]]:
    """settings_env(**settings) -> the environment: sets each variable for this test (None unsets
    it) on top of `clean_env`, and returns the whole environment, for a process the test starts."""

    def apply(**settings: str | int | None) -> dict[str, str]:
        for name, value in settings.items():
            if value is None:
                clean_env.delenv(name, raising=False)
            else:
                clean_env.setenv(name, str(value))
        return dict(os.environ)

    return apply


@pytest.fixture
def fresh_container(azurite) -> Callable[[str], ContainerClient]:
    """fresh_container(prefix="t") -> a new, empty container on the session's Azurite (its client)."""
    service = BlobServiceClient.from_connection_string(azurite)
    return lambda prefix="t": service.create_container(unique_name(prefix))


@pytest.fixture
def container(azurite, fresh_container, settings_env) -> str:
    """A fresh container's name, set as the destination in the environment."""
    name = fresh_container().container_name
    settings_env(AZURE_STORAGE_CONNECTION_STRING=azurite, AZURE_EVENTS_CONTAINER=name)
    return name


@pytest.fixture
def blobs(azurite):
    """List and read blobs of a container: blobs(container) -> {name: bytes}."""
    service = BlobServiceClient.from_connection_string(azurite)

    def read(container: str, prefix: str | None = None) -> dict[str, bytes]:
        client = service.get_container_client(container)
        return {
            b.name: client.download_blob(b.name).readall()
            for b in client.list_blobs(name_starts_with=prefix)
        }

    read.service = service
    return read


@pytest.fixture
def synthetic_hours(container, settings_env) -> str:
    """A fresh container, and partitions from 2020-01-25 of 200 synthetic events an hour."""
    settings_env(AMPLITUDE_START="2020-01-25-00:00", AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR=200)
    return container


@pytest.fixture
def instance(tmp_path) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance of the test's own, stored under tmp_path, as the daemon's would be."""
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        yield instance


@pytest.fixture(scope="session")
def postgres() -> Iterator[dict[str, str]]:
    """A PostgreSQL cluster of its own on a free loopback port, for deploy/dagster.yaml's storage;
    yields the DAGSTER_PG_* variables that file reads."""
    import tempfile

    from scripts.topology import Postgres

    cluster = Postgres(Path(tempfile.mkdtemp(prefix="amplitude_assets-pg-", dir="/var/tmp")))
    try:
        cluster.start()
        yield cluster.env()
    finally:
        cluster.remove()
