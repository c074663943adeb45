"""The destination test (job, CLI and function) against real Azurites: key, SAS and token over https."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import socket
import subprocess
import sys
import time
import uuid

import dagster as dg
import pytest
from azure.core.credentials import AccessToken, TokenCredential
from azure.identity import ClientSecretCredential
from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

from amplitude_assets.destination.credentials import AzureStorage
from amplitude_assets.jobs import ACTIONS, check_destinations, run_check_destination
from amplitude_assets.settings import Settings
from tests.conftest import (
    ACCOUNT,
    ACCOUNT_KEY,
    ROOT,
    WRONG_KEY,
    blob_endpoint,
    connection_string,
    free_port,
    start_azurite,
    unique_name,
)
from tests.helpers import definitions


def steps(report) -> dict[str, tuple[bool | None, str]]:
    return {s.name: (s.ok, s.message) for s in report.steps}


def test_passes_against_azurite(container, azurite, blobs, capsys):
    storage = AzureStorage(connection_string=azurite)
    assert run_check_destination(Settings.from_env(), storage) is True
    out = capsys.readouterr().out
    assert "events destination" in out and "merged IDs destination" in out
    for step in ("write", "read", "list", "delete"):
        assert out.count(f"  {step:<7} ok") == 2, out
    assert "All destination checks passed." in out
    assert ACCOUNT_KEY not in out
    assert blobs(container) == {}  # the probes are gone


def test_wrong_account_key_is_an_authentication_failure_naming_the_variable(container, azurite, capsys):
    wrong = azurite.replace(ACCOUNT_KEY, WRONG_KEY)
    storage = AzureStorage(connection_string=wrong)
    assert run_check_destination(Settings.from_env(), storage) is False
    out = capsys.readouterr().out
    assert "authentication failed" in out
    assert "Check AZURE_STORAGE_CONNECTION_STRING" in out
    assert WRONG_KEY not in out and ACCOUNT_KEY not in out
    assert "Some destination checks failed." in out


def test_sas_without_delete_fails_only_on_delete(container, azurite, blobs, settings_env, capsys):
    sas = generate_account_sas(
        ACCOUNT, ACCOUNT_KEY, resource_types=ResourceTypes(container=True, object=True),
        permission=AccountSasPermissions(read=True, write=True, create=True, list=True),
        expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1),
    )
    settings_env(AZURE_STORAGE_SAS_TOKEN=sas)
    storage = AzureStorage(account_url=blob_endpoint(azurite), sas_token=sas)
    reports = check_destinations(Settings.from_env(), storage)
    for report in reports:
        result = steps(report)
        assert result["write"][0] and result["read"][0] and result["list"][0]
        ok, message = result["delete"]
        assert ok is False
        assert "permission denied" in message
        assert ACTIONS["delete"] in message
        assert "SAS token with the d permission" in message
    assert run_check_destination(Settings.from_env(), storage) is False
    out = capsys.readouterr().out
    assert sas not in out and sas.split("sig=")[1] not in out
    assert "left behind" in out


def test_job_in_the_definitions(container, azurite, settings_env):
    defs = definitions()
    job = defs.resolve_job_def("check_destination")
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success

    settings_env(AZURE_STORAGE_CONNECTION_STRING=azurite.replace(ACCOUNT_KEY, WRONG_KEY))
    defs = definitions()
    failed = defs.resolve_job_def("check_destination").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert not failed.success
    failure = next(e for e in failed.all_events if e.is_step_failure)
    message = str(failure.event_specific_data.error.message)
    assert "authentication failed" in message and "AZURE_STORAGE_CONNECTION_STRING" in message
    assert WRONG_KEY not in message
    assert WRONG_KEY not in "".join(str(e) for e in failed.all_events)


def run_cli(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "amplitude_assets", "check-destination"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def test_command_line(container, azurite, settings_env):
    done = run_cli(settings_env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All destination checks passed." in done.stdout

    failed = run_cli(settings_env(AZURE_STORAGE_CONNECTION_STRING=azurite.replace(ACCOUNT_KEY, WRONG_KEY)))
    assert failed.returncode != 0
    assert "authentication failed" in failed.stdout and "AZURE_STORAGE_CONNECTION_STRING" in failed.stdout
    assert WRONG_KEY not in failed.stdout + failed.stderr


# -- token credentials over https ------------------------------------------------------------


def self_signed(directory) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class StandInEntraId(TokenCredential):
    """Stands in for Entra ID: a JWT-shaped token that Azurite's `--oauth basic` accepts
    (it checks issuer, audience and times, not the signature)."""

    def __init__(self, audience: str = "https://storage.azure.com"):
        self.audience = audience
        self.requests: list[tuple[str, ...]] = []

    def get_token(self, *scopes, **kwargs) -> AccessToken:
        self.requests.append(scopes)
        now = int(time.time())
        tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
        claims = {
            "aud": self.audience, "iss": f"https://sts.windows.net/{tenant}/", "iat": now - 60, "nbf": now - 60,
            "exp": now + 3600, "oid": str(uuid.uuid4()), "tid": tenant, "appid": str(uuid.uuid4()),
        }
        token = ".".join([_b64({"alg": "RS256", "typ": "JWT"}), _b64(claims), "c2lnbmF0dXJl"])
        return AccessToken(token, now + 3600)


@pytest.fixture(scope="module")
def https_azurite(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(directory)
    port = free_port()
    process = start_azurite(port, None, "--cert", cert, "--key", key, "--oauth", "basic")
    try:
        yield f"https://127.0.0.1:{port}/{ACCOUNT}", cert
    finally:
        process.terminate()
        process.wait(timeout=10)


def service_principal_storage(url: str, credential: TokenCredential, create: bool = True) -> AzureStorage:
    storage = AzureStorage(account_url=url, tenant_id="tenant", client_id="client", client_secret="s3cr3t-value",
                           create_containers=create)
    return storage.use_token_credential(credential)


def test_token_credential_over_https(https_azurite, settings_env, capsys):
    url, cert = https_azurite
    settings_env(REQUESTS_CA_BUNDLE=cert, AZURE_EVENTS_CONTAINER=unique_name())  # trust the test certificate
    credential = StandInEntraId()
    storage = service_principal_storage(url, credential)
    assert run_check_destination(Settings.from_env(), storage) is True
    out = capsys.readouterr().out
    assert "All destination checks passed." in out
    assert "AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET" in out
    assert credential.requests and credential.requests[0] == ("https://storage.azure.com/.default",)
    assert "s3cr3t-value" not in out


def test_refused_token_is_an_authentication_failure(https_azurite, settings_env, capsys):
    url, cert = https_azurite
    settings_env(REQUESTS_CA_BUNDLE=cert, AZURE_EVENTS_CONTAINER=unique_name())
    storage = service_principal_storage(url, StandInEntraId(audience="https://not-storage.example"), create=False)
    assert run_check_destination(Settings.from_env(), storage) is False
    out = capsys.readouterr().out
    assert "authentication failed" in out
    assert "Check AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET" in out
    assert "s3cr3t-value" not in out


def test_service_principal_variables_build_a_client_secret_credential(settings_env):
    settings_env(AZURE_STORAGE_ACCOUNT_URL="https://example.blob.core.windows.net",
                 AZURE_TENANT_ID="00000000-0000-0000-0000-000000000001",
                 AZURE_CLIENT_ID="00000000-0000-0000-0000-000000000002", AZURE_CLIENT_SECRET="not-a-real-secret")
    storage = definitions().resources["storage"].process_config_and_initialize()
    assert storage.method == "AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET"
    credential = storage.service.credential
    assert isinstance(credential, ClientSecretCredential)
    assert credential._tenant_id == "00000000-0000-0000-0000-000000000001"
    assert credential._client_id == "00000000-0000-0000-0000-000000000002"


# -- failing fast, each message once ----------------------------------------------------------


def timed_check(env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    """check-destination from the command line with `env`, and its seconds."""
    started = time.monotonic()
    done = run_cli(env)
    return done, time.monotonic() - started


def test_an_unreachable_endpoint_is_reported_within_20_seconds_once(settings_env):
    port = free_port()  # nothing listens there: connections are refused
    endpoint = blob_endpoint(connection_string(port))
    done, elapsed = timed_check(settings_env(AZURE_STORAGE_CONNECTION_STRING=connection_string(port)))
    assert elapsed < 20, f"check-destination took {elapsed:.1f} s against a refused port"  # docs/configuration.md's promise
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines == [
        f"Azure Blob Storage at {endpoint}, credential from AZURE_STORAGE_CONNECTION_STRING",
        "events destination (amplitude/_amplitude_assets_probe.txt): FAILED",
        lines[2],
        "  read    skipped  the write failed",
        "  list    skipped  the write failed",
        "  delete  skipped  nothing was written",
        "merged IDs destination (amplitude/merged_ids/_amplitude_assets_probe.txt): skipped: same storage "
        "account as the events destination, which failed above",
        "Some destination checks failed.",
    ], done.stdout
    assert lines[2].startswith(f"  write   FAILED   could not reach {endpoint}: ServiceRequestError: ")
    assert "Connection refused" in lines[2]
    assert done.stdout.count("could not reach") == 1
    assert done.stderr == ""
    assert ACCOUNT_KEY not in done.stdout


def test_an_endpoint_that_never_answers_is_reported_within_20_seconds(settings_env):
    with socket.socket() as silent:  # accepts connections (the backlog does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        endpoint = blob_endpoint(connection_string(port))
        done, elapsed = timed_check(settings_env(AZURE_STORAGE_CONNECTION_STRING=connection_string(port)))
    assert elapsed < 20, f"check-destination took {elapsed:.1f} s against an endpoint that never answers"
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.count(f"could not reach {endpoint}: ") == 1, done.stdout
    assert "merged IDs destination (amplitude/merged_ids/_amplitude_assets_probe.txt): skipped" in done.stdout


def test_a_malformed_connection_string_is_one_line_naming_the_variable(settings_env):
    done = run_cli(settings_env(AZURE_STORAGE_CONNECTION_STRING="AccountName=acct;c2VjcmV0a2V5"))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: AZURE_STORAGE_CONNECTION_STRING is malformed: expected Key=value pairs separated by ';' "
        "(copy it from the storage account's Access keys page)"
    ]


def test_no_settings_is_one_line_naming_the_variables(settings_env):
    done = run_cli(settings_env())
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: No Azure credentials: set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_URL with "
        "AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET, AZURE_STORAGE_SAS_TOKEN, or a managed identity"
    ]


def test_after_an_authentication_failure_the_rest_is_skipped(container, azurite):
    storage = AzureStorage(connection_string=azurite.replace(ACCOUNT_KEY, WRONG_KEY))
    events, merged = check_destinations(Settings.from_env(), storage)
    result = steps(events)
    assert result["write"][0] is False and result["write"][1].startswith("authentication failed")
    assert {name: result[name] for name in ("read", "list", "delete")} == {
        "read": (None, "the write failed"),
        "list": (None, "the write failed"),
        "delete": (None, "nothing was written"),
    }
    assert merged.steps == []
    assert merged.skipped == "skipped: same storage account as the events destination, which failed above"


def test_a_permission_failure_skips_the_steps_after_it(container, azurite):
    # A SAS that may write and delete but not read: read fails, list is skipped, the probe is deleted.
    sas = generate_account_sas(
        ACCOUNT, ACCOUNT_KEY, resource_types=ResourceTypes(container=True, object=True),
        permission=AccountSasPermissions(write=True, create=True, delete=True),
        expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1),
    )
    storage = AzureStorage(account_url=blob_endpoint(azurite), sas_token=sas)
    events = check_destinations(Settings.from_env(), storage)[0]
    result = steps(events)
    assert result["write"][0] is True
    assert result["read"][0] is False
    assert result["read"][1].startswith(
        f"permission denied: grant the Azure RBAC data action {ACTIONS['read']} on container {container!r}, "
        "or issue a SAS token with the r permission."
    )
    assert result["list"] == (None, "the read failed")
    assert result["delete"] == (True, "deleted the probe")


def test_the_job_fails_with_a_setting_as_its_headline(settings_env):
    settings_env(AZURE_STORAGE_CONNECTION_STRING="AccountName=acct;AccountKey=c2VjcmV0a2V5!!")
    result = definitions().resolve_job_def("check_destination").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    failure = next(e for e in result.all_events if e.is_step_failure)
    data = failure.event_specific_data
    assert data.user_failure_data.description == (
        "AZURE_STORAGE_CONNECTION_STRING is malformed: its AccountKey is not base64"
    )
    assert data.error.cause is None
