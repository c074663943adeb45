"""Credentials: order of precedence, http only to loopback, and no secret in any message."""

from __future__ import annotations

import pytest
from dagster_azure.blob import (
    AzureBlobStorageDefaultCredential,
    AzureBlobStorageKeyCredential,
    AzureBlobStorageResource,
)

from amplitude_assets.destination.credentials import (
    AzureStorage,
    check_transport,
    connection_string_endpoint,
    parse_connection_string,
    redact,
)
from amplitude_assets.settings import SettingsError
from tests.conftest import ACCOUNT, ACCOUNT_KEY, blob_endpoint, unique_name
from tests.helpers import definitions, materialize


def test_precedence():
    assert AzureStorage(connection_string="UseDevelopmentStorage=true", account_url="https://a").method == "AZURE_STORAGE_CONNECTION_STRING"
    assert AzureStorage(account_url="https://a", tenant_id="t", client_id="c", client_secret="s", sas_token="x").method.startswith("AZURE_TENANT_ID")
    assert AzureStorage(account_url="https://a", tenant_id="t", client_id="c", sas_token="x").method == "AZURE_STORAGE_SAS_TOKEN"
    assert AzureStorage(account_url="https://a", sas_token="x").method == "AZURE_STORAGE_SAS_TOKEN"
    assert AzureStorage(account_url="https://a").method.startswith("DefaultAzureCredential")
    with pytest.raises(SettingsError, match="AZURE_STORAGE_CONNECTION_STRING"):
        AzureStorage().method


def test_incomplete_service_principal_names_the_missing_variables():
    with pytest.raises(SettingsError, match="AZURE_TENANT_ID"):
        AzureStorage(account_url="https://acct.blob.core.windows.net", client_id="c", client_secret="s").service


def test_workload_identity_variables_without_a_secret_are_not_a_service_principal():
    # AKS workload identity and user-assigned managed identities set these two, no secret.
    ids = {"account_url": "https://acct.blob.core.windows.net", "tenant_id": "t", "client_id": "c"}
    assert AzureStorage(**ids).method.startswith("DefaultAzureCredential")
    assert AzureStorage(**ids, sas_token="sv=1&sig=x").method == "AZURE_STORAGE_SAS_TOKEN"


def test_token_credentials_need_https_even_on_loopback():
    with pytest.raises(SettingsError, match="AZURE_STORAGE_ACCOUNT_URL must use https"):
        AzureStorage(account_url="http://127.0.0.1:10000/devstoreaccount1").service


def test_plain_http_only_to_loopback():
    check_transport("http://127.0.0.1:10000/devstoreaccount1", "X")
    check_transport("http://localhost:10000/devstoreaccount1", "X")
    check_transport("https://acct.blob.core.windows.net", "X")
    with pytest.raises(SettingsError, match="AZURE_STORAGE_ACCOUNT_URL must use https"):
        check_transport("http://acct.blob.core.windows.net", "AZURE_STORAGE_ACCOUNT_URL")
    with pytest.raises(SettingsError, match="AZURE_STORAGE_CONNECTION_STRING"):
        AzureStorage(connection_string="DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=c2VjcmV0").service


def test_connection_string_endpoint_has_no_secret():
    cs = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0a2V5;EndpointSuffix=core.windows.net"
    assert connection_string_endpoint(cs) == "https://acct.blob.core.windows.net"
    assert AzureStorage(connection_string=cs).endpoint == "https://acct.blob.core.windows.net"


def test_redact_removes_secrets_and_signatures():
    text = "failed for https://a.blob.core.windows.net/c?sv=1&sig=abcDEF%2B123&se=2 with key c2VjcmV0a2V5 AccountKey=zzz;"
    cleaned = redact(text, ["c2VjcmV0a2V5"])
    assert "abcDEF" not in cleaned and "c2VjcmV0a2V5" not in cleaned and "zzz" not in cleaned
    assert "sig=***" in cleaned


def test_a_run_without_credentials_names_the_variables(settings_env):
    settings_env(AMPLITUDE_START="2020-01-25-00:00")
    result = materialize(definitions(), ["events"], partition="2020-01-25-01:00", raise_on_error=False)
    assert not result.success
    messages = " ".join(
        e.message or "" for e in result.all_events if e.is_failure or e.event_type_value == "ENGINE_EVENT"
    ) + str([e.event_specific_data for e in result.all_events if e.is_failure])
    assert "AZURE_STORAGE_CONNECTION_STRING" in messages
    assert "AZURE_STORAGE_ACCOUNT_URL" in messages


# -- the dagster-azure resource, against Azurite ------------------------------------------------


def test_the_storage_resource_is_dagster_azures_and_reaches_azurite(container, azurite, blobs):
    storage = definitions().resources["storage"]
    assert isinstance(storage, AzureBlobStorageResource)
    storage = storage.process_config_and_initialize()  # resolves the EnvVar of the connection string
    endpoint = blob_endpoint(azurite)
    # The connection string is parsed into dagster-azure's two fields' worth: an account URL and a key.
    url, credential = parse_connection_string(azurite)
    assert url == endpoint
    assert credential == {"account_name": ACCOUNT, "account_key": ACCOUNT_KEY}
    with storage.get_client() as client:  # dagster-azure's accessor
        assert client.url.rstrip("/") == endpoint
        assert container in [c.name for c in client.list_containers()]
        client.get_container_client(container).upload_blob("through/get_client.txt", b"hello\n")
    assert blobs(container) == {"through/get_client.txt": b"hello\n"}


def test_a_dagster_azure_key_credential_reaches_azurite(container, azurite, blobs):
    storage = AzureStorage(account_url=blob_endpoint(azurite), credential=AzureBlobStorageKeyCredential(key=ACCOUNT_KEY))
    assert storage.method == "the resource's account key (AzureBlobStorageKeyCredential)"
    storage.container(container).upload_blob("key.txt", b"k")
    assert blobs(container) == {"key.txt": b"k"}
    assert storage.redact(f"key {ACCOUNT_KEY} leaked") == "key *** leaked"


def test_one_client_per_account_and_container_reused(azurite):
    storage = AzureStorage(connection_string=azurite)
    assert storage.container("amplitude") is storage.container("amplitude")
    assert storage.container("amplitude") is not storage.container("other")
    with storage.get_client() as first, storage.get_client() as second:
        assert first is second is storage.service
    # The probe's client is separate, with short timeouts and one retry; the export's retries
    # five times, the first after 1-3 s (the SDK's default waits 15 s first).
    probe = storage.container("amplitude", probe=True)
    assert probe is not storage.container("amplitude")
    assert probe._config.retry_policy.total_retries == 1
    policy = storage.container("amplitude")._config.retry_policy
    assert (policy.total_retries, policy.initial_backoff, policy.increment_base) == (5, 1, 2)


def test_missing_containers_are_created_only_when_asked(azurite, blobs):
    service = blobs.service
    absent, created = unique_name(), unique_name()
    AzureStorage(connection_string=azurite).container(absent)
    AzureStorage(connection_string=azurite, create_containers=True).container(created)
    names = {c.name for c in service.list_containers()}
    assert created in names and absent not in names


def test_token_credentials_of_dagster_azure_need_https_too():
    storage = AzureStorage(account_url="http://127.0.0.1:10000/devstoreaccount1",
                           credential=AzureBlobStorageDefaultCredential())
    with pytest.raises(SettingsError, match="AZURE_STORAGE_ACCOUNT_URL must use https with DefaultAzureCredential"):
        storage.service
    # A key or a SAS may use plain http to the emulator.
    AzureStorage(account_url="http://127.0.0.1:10000/devstoreaccount1",
                 credential=AzureBlobStorageKeyCredential(key=ACCOUNT_KEY)).service


@pytest.mark.parametrize(
    ("text", "url", "credential"),
    [
        ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0a2V5;EndpointSuffix=core.windows.net",
         "https://acct.blob.core.windows.net", {"account_name": "acct", "account_key": "c2VjcmV0a2V5"}),
        ("accountname=acct;accountkey=c2VjcmV0a2V5;endpointsuffix=core.chinacloudapi.cn",
         "https://acct.blob.core.chinacloudapi.cn", {"account_name": "acct", "account_key": "c2VjcmV0a2V5"}),
        ("BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=2024-01-01&sig=abc",
         "https://acct.blob.core.windows.net", "sv=2024-01-01&sig=abc"),
        ("UseDevelopmentStorage=true", "http://127.0.0.1:10000/devstoreaccount1",
         {"account_name": ACCOUNT, "account_key": ACCOUNT_KEY}),
    ],
)
def test_connection_string_forms(text, url, credential):
    assert parse_connection_string(text) == (url, credential)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("garbage-c2VjcmV0a2V5", "expected Key=value pairs"),
        (";", "expected Key=value pairs"),
        ("AccountName=acct;AccountKey=c2VjcmV0a2V5!!", "its AccountKey is not base64"),
        ("AccountName=acct;EndpointSuffix=core.windows.net", "needs AccountName and AccountKey"),
        ("AccountKey=c2VjcmV0a2V5", "neither BlobEndpoint nor AccountName"),
    ],
)
def test_a_malformed_connection_string_names_the_variable_not_its_value(text, reason):
    with pytest.raises(SettingsError) as failure:
        AzureStorage(connection_string=text).service
    message = str(failure.value)
    assert message.startswith("AZURE_STORAGE_CONNECTION_STRING is malformed: ")
    assert reason in message
    assert "c2VjcmV0a2V5" not in message


def test_a_missing_container_is_named_from_the_request(azurite):
    from azure.core.exceptions import ResourceNotFoundError

    storage = AzureStorage(connection_string=azurite)
    absent = unique_name()
    with pytest.raises(ResourceNotFoundError) as failure:
        storage.container(absent).upload_blob("x.txt", b"x")
    assert storage.explain(failure.value).startswith(
        f"container {absent!r} does not exist: create it, or set AZURE_CREATE_CONTAINERS=true. [ContainerNotFound: "
    )
    assert storage.explain(ValueError("not about Azure")) is None
