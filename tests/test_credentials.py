"""Credentials: order of precedence, http only to loopback, and no secret in any message."""

from __future__ import annotations

import pytest

from amplitude_assets.destination.credentials import (
    AzureStorage,
    check_transport,
    connection_string_endpoint,
    redact,
)
from amplitude_assets.settings import SettingsError
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


def test_a_run_without_credentials_names_the_variables(clean_env):
    clean_env.setenv("AMPLITUDE_START", "2020-01-25-00:00")
    result = materialize(definitions(), ["events"], partition="2020-01-25-01:00", raise_on_error=False)
    assert not result.success
    messages = " ".join(
        e.message or "" for e in result.all_events if e.is_failure or e.event_type_value == "ENGINE_EVENT"
    ) + str([e.event_specific_data for e in result.all_events if e.is_failure])
    assert "AZURE_STORAGE_CONNECTION_STRING" in messages
    assert "AZURE_STORAGE_ACCOUNT_URL" in messages
