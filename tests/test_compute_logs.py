"""Compute logs in the storage account: deploy/dagster.yaml, as shipped (PostgreSQL storage
included), against Azurite and a PostgreSQL of the test's own."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest
import yaml
from dagster_azure.blob.compute_log_manager import (
    AzureBlobComputeLogManager as DagsterAzureBlobComputeLogManager,
)

from amplitude_assets.compute_logs import AzureBlobComputeLogManager
from amplitude_assets.settings import SettingsError
from tests.conftest import ACCOUNT, ACCOUNT_KEY, ROOT, blob_endpoint

EXAMPLE = ROOT / "deploy" / "dagster.yaml"


@dg.op
def say_hello(context) -> None:
    print(f"hello from {context.run_id} on stdout")
    context.log.info("and a line on stderr")


@dg.job
def hello():
    say_hello()


@pytest.fixture
def logs_container(azurite, blobs, settings_env) -> str:
    """The example's container, created (the manager does not create it) and emptied."""
    name = yaml.safe_load(EXAMPLE.read_text())["compute_logs"]["config"]["container"]
    client = blobs.service.get_container_client(name)
    if not client.exists():
        client.create_container()
    for blob in client.list_blobs():
        client.delete_blob(blob.name)
    settings_env(AZURE_STORAGE_CONNECTION_STRING=azurite)
    return name


def test_a_runs_compute_logs_land_in_the_container(logs_container, blobs, tmp_path, settings_env, postgres):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(EXAMPLE, home / "dagster.yaml")
    settings_env(DAGSTER_HOME=home, **postgres)
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        manager = instance.compute_log_manager
        assert isinstance(manager, AzureBlobComputeLogManager)
        assert isinstance(manager, DagsterAzureBlobComputeLogManager)
        result = hello.execute_in_process(instance=instance)
        assert result.success
        run_id = result.run_id
    landed = blobs(logs_container)
    prefix = f"amplitude-assets/storage/{run_id}/compute_logs/"
    assert landed and all(name.startswith(prefix) for name in landed), sorted(landed)
    out = [name for name in landed if name.endswith(".out")]
    err = [name for name in landed if name.endswith(".err")]
    assert len(out) == 1 and len(err) == 1, sorted(landed)
    assert f"hello from {run_id} on stdout\n".encode() in landed[out[0]]
    assert b"and a line on stderr" in landed[err[0]]
    assert ACCOUNT_KEY.encode() not in b"".join(landed.values())


def test_an_account_url_with_a_key_reaches_the_emulator(logs_container, azurite):
    endpoint = blob_endpoint(azurite)
    manager = AzureBlobComputeLogManager(container=logs_container, account_url=endpoint,
                                         access_key_or_sas_token=ACCOUNT_KEY)
    assert manager._container_client.url == f"{endpoint}/{logs_container}"
    assert manager._container_client.exists()
    assert manager._storage_account == ACCOUNT


def test_dagster_azures_own_form_is_unchanged():
    manager = AzureBlobComputeLogManager(container="logs", storage_account="myaccount",
                                         access_key_or_sas_token=ACCOUNT_KEY)
    assert manager._container_client.url == "https://myaccount.blob.core.windows.net/logs"


def test_the_exports_rules_apply(settings_env):
    settings_env(AZURE_STORAGE_ACCOUNT_URL="http://acct.blob.core.windows.net")
    with pytest.raises(SettingsError, match="AZURE_STORAGE_ACCOUNT_URL must use https"):
        AzureBlobComputeLogManager(container="logs")
