"""Shared fixtures: one real Azurite per test session, on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

ROOT = Path(__file__).resolve().parent.parent
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

# Settings the tests control; cleared so a developer's shell cannot leak into a test.
_CLEARED = [k for k in os.environ if k.startswith(("AMPLITUDE_", "AZURE_"))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def connection_string(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )


def start_azurite(port: int, location: Path | None, *extra: str) -> subprocess.Popen:
    """Azurite on 127.0.0.1:port; data under `location`, or in memory when it is None."""
    if not AZURITE.exists():
        raise RuntimeError(f"{AZURITE} is missing: run `make bootstrap` (npm install) first")
    process = subprocess.Popen(
        [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port),
         *(["--location", str(location)] if location else ["--inMemoryPersistence"]),
         "--skipApiVersionCheck", "--disableTelemetry", "--loose", "--silent", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return process


@pytest.fixture(scope="session")
def azurite(tmp_path_factory) -> Iterator[str]:
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
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def container(azurite, clean_env) -> str:
    """A fresh, empty container name, with the connection string in the environment."""
    name = f"t{uuid.uuid4().hex[:20]}"
    BlobServiceClient.from_connection_string(azurite).create_container(name)
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    clean_env.setenv("AZURE_EVENTS_CONTAINER", name)
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
def synthetic_hours(container, clean_env) -> str:
    """A fresh container, and partitions from 2020-01-25 of 200 synthetic events an hour."""
    clean_env.setenv("AMPLITUDE_START", "2020-01-25-00:00")
    clean_env.setenv("AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR", "200")
    return container


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
