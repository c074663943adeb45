"""The storage account: dagster-azure's `AzureBlobStorageResource`, with what the export adds.

Credentials are tried in the contract's order:
1. AZURE_STORAGE_CONNECTION_STRING (an account key, a SAS, or the emulator), parsed here into
   an account URL and a key (or SAS) credential;
2. otherwise AZURE_STORAGE_ACCOUNT_URL with one of:
   - AZURE_TENANT_ID + AZURE_CLIENT_ID + AZURE_CLIENT_SECRET (service principal),
   - AZURE_STORAGE_SAS_TOKEN,
   - the resource's dagster-azure `credential`: DefaultAzureCredential (managed or workload
     identity) unless a key, SAS or anonymous credential is given in code.

On top of dagster-azure it adds: the connection string, plain http only to loopback hosts
and never with a token credential, secret redaction, container creation
(AZURE_CREATE_CONTAINERS), one client per container reused for the whole step, a probe
client with short timeouts for `check-destination`, and messages that say what to fix.
"""


import base64
import binascii
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Union
from urllib.parse import urlparse

import dagster as dg
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobServiceClient, ContainerClient, ExponentialRetry, LinearRetry
from dagster_azure.blob import (
    AzureBlobStorageAnonymousCredential,
    AzureBlobStorageDefaultCredential,
    AzureBlobStorageKeyCredential,
    AzureBlobStorageResource,
    AzureBlobStorageSASTokenCredential,
)
from pydantic import Field, PrivateAttr

from amplitude_assets import private_apis
from amplitude_assets.settings import SECRET_VARIABLES, SettingsError, check_transport, redact

CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ACCOUNT_URL = "AZURE_STORAGE_ACCOUNT_URL"
SERVICE_PRINCIPAL = "AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET"
NO_CREDENTIALS = (
    "No Azure credentials: set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_URL "
    "with AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET, AZURE_STORAGE_SAS_TOKEN, or a "
    "managed identity"
)
# Azurite's well-known development account (public, documented by Microsoft).
EMULATOR_URL = "http://127.0.0.1:10000/devstoreaccount1"
EMULATOR_ACCOUNT = "devstoreaccount1"
EMULATOR_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

# The probe of `check-destination` must answer within seconds, not after the SDK's default
# 20 s connect timeout and 3 retries 15-60 s apart; the export keeps the SDK's policy.
PROBE_CLIENT_OPTIONS = {
    "connection_timeout": 4,
    "read_timeout": 4,
    "retry_policy": LinearRetry(backoff=1, random_jitter_range=0, retry_total=1),
}

# The export's retry policy. The SDK's default (ExponentialRetry(initial_backoff=15,
# increment_base=3)) waits about 15 s before the first retry of a 503, a 500 or a dropped
# connection, then longer: a week of small hours with a few percent of requests faulted
# spent most of its time waiting. Here the first retry comes after 1-3 s and each wait
# about doubles (1 + 2^n s, give or take 1 s): a transient fault costs a couple of seconds,
# and five retries still span about a minute of an outage. Every request the export makes is idempotent (puts with
# overwrite, block stages, block-list commits, deletes that tolerate a missing blob).
EXPORT_RETRY = {"initial_backoff": 1, "increment_base": 2, "retry_total": 5, "random_jitter_range": 1}


def export_client_options() -> dict:
    """A fresh retry policy per client: the SDK's policies keep no state between requests,
    but a client of its own per process keeps that true if they ever do."""
    return {"retry_policy": ExponentialRetry(**EXPORT_RETRY)}


RBAC_ACTIONS = {
    "write": "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
    "read": "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
    "list": "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
    "delete": "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete",
}
SAS_LETTERS = {"write": "w (and c)", "read": "r", "list": "l", "delete": "d"}
PERMISSION_CODES = {
    "AuthorizationPermissionMismatch",
    "AuthorizationFailure",
    "AuthorizationResourceTypeMismatch",
    "AuthorizationServiceMismatch",
    "AuthorizationProtocolMismatch",
    "AuthorizationSourceIPMismatch",
    "InsufficientAccountPermissions",
}
_HTTP_ACTIONS = {"PUT": "write", "POST": "write", "DELETE": "delete", "GET": "read", "HEAD": "read"}

Credential = Union[
    AzureBlobStorageKeyCredential,
    AzureBlobStorageSASTokenCredential,
    AzureBlobStorageDefaultCredential,
    AzureBlobStorageAnonymousCredential,
]


def _fields(connection_string: str) -> dict[str, str]:
    """A connection string's `Key=value` fields, keys in upper case (Azure ignores their case)."""
    pieces = [p for p in connection_string.strip().rstrip(";").split(";") if p.strip()]
    if not pieces or any("=" not in p for p in pieces):
        raise SettingsError(
            f"{CONNECTION_STRING} is malformed: expected Key=value pairs separated by ';' "
            "(copy it from the storage account's Access keys page)"
        )
    return {k.strip().upper(): v.strip() for k, v in (p.split("=", 1) for p in pieces)}


def parse_connection_string(connection_string: str) -> tuple[str, Any]:
    """The account URL and the credential (a key or a SAS) of a connection string.

    Raises SettingsError naming the variable, never quoting it: the string holds the key."""
    fields = _fields(connection_string)
    if fields.get("USEDEVELOPMENTSTORAGE", "").lower() == "true":
        return EMULATOR_URL, {"account_name": EMULATOR_ACCOUNT, "account_key": EMULATOR_KEY}
    account = fields.get("ACCOUNTNAME")
    url = fields.get("BLOBENDPOINT")
    if not url:
        if not account:
            raise SettingsError(f"{CONNECTION_STRING} is malformed: it has neither BlobEndpoint nor AccountName")
        protocol = fields.get("DEFAULTENDPOINTSPROTOCOL", "https")
        suffix = fields.get("ENDPOINTSUFFIX", "core.windows.net")
        url = f"{protocol}://{account}.blob.{suffix}"
    key = fields.get("ACCOUNTKEY")
    if account and key:
        try:
            base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raise SettingsError(f"{CONNECTION_STRING} is malformed: its AccountKey is not base64") from None
        return url.rstrip("/"), {"account_name": account, "account_key": key}
    sas = fields.get("SHAREDACCESSSIGNATURE")
    if sas:
        return url.rstrip("/"), sas.lstrip("?")
    raise SettingsError(
        f"{CONNECTION_STRING} is malformed: it needs AccountName and AccountKey, or a "
        "SharedAccessSignature, or UseDevelopmentStorage=true"
    )


def connection_string_endpoint(connection_string: str) -> str | None:
    """The blob endpoint a connection string points at (no secret in it), or None if malformed."""
    try:
        return parse_connection_string(connection_string)[0]
    except SettingsError:
        return None


@private_apis.not_dagster_maintained
class AzureStorage(AzureBlobStorageResource):
    """The storage account. Secrets come in only through dagster.EnvVar (see `from_env`)."""

    # dagster-azure requires both; here a connection string can give them instead.
    account_url: str | None = None  # type: ignore[assignment]
    credential: Credential = Field(  # type: ignore[assignment]
        default_factory=AzureBlobStorageDefaultCredential,
        discriminator="credential_type",
        description="Used with account_url when no service principal or SAS token is set: "
        "DefaultAzureCredential (managed or workload identity) by default.",
    )
    connection_string: str | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    sas_token: str | None = None
    create_containers: bool = False

    _clients: dict = PrivateAttr(default_factory=dict)
    _token_credential: object = PrivateAttr(default=None)

    @classmethod
    def from_env(cls, create_containers: bool = False) -> "AzureStorage":
        """Bind each credential variable that is set, as an EnvVar (its value stays out of config)."""
        fields = {
            "connection_string": CONNECTION_STRING,
            "account_url": ACCOUNT_URL,
            "tenant_id": "AZURE_TENANT_ID",
            "client_id": "AZURE_CLIENT_ID",
            "client_secret": "AZURE_CLIENT_SECRET",
            "sas_token": "AZURE_STORAGE_SAS_TOKEN",
        }
        bound = {f: dg.EnvVar(v) for f, v in fields.items() if os.environ.get(v, "").strip()}
        return cls(create_containers=create_containers, **bound)

    def use_token_credential(self, credential) -> "AzureStorage":
        """Authenticate with this azure-core TokenCredential instead of the service principal or
        DefaultAzureCredential (another identity library, or a stand-in for Entra ID in tests)."""
        self._token_credential = credential
        self._clients.clear()
        return self

    @property
    def method(self) -> str:
        """Which credential is in use, by the variable(s) that give it."""
        if self.connection_string:
            return CONNECTION_STRING
        if not self.account_url:
            raise SettingsError(NO_CREDENTIALS)
        # The secret marks a service principal: workload and user-assigned managed
        # identities set AZURE_CLIENT_ID and AZURE_TENANT_ID without one.
        if self.client_secret:
            return SERVICE_PRINCIPAL
        if self.sas_token:
            return "AZURE_STORAGE_SAS_TOKEN"
        kind = self.credential.credential_type
        if kind == "key":
            return "the resource's account key (AzureBlobStorageKeyCredential)"
        if kind == "sas":
            return "the resource's SAS token (AzureBlobStorageSASTokenCredential)"
        if kind == "anonymous":
            return "anonymous access"
        return "DefaultAzureCredential (managed or workload identity)"

    @property
    def uses_token(self) -> bool:
        """A bearer-token credential, which Azure accepts only over https."""
        method = self.method
        return method == SERVICE_PRINCIPAL or method.startswith("DefaultAzureCredential")

    @property
    def endpoint(self) -> str:
        """The blob endpoint, for messages and metadata; never carries a secret."""
        if self.connection_string:
            return connection_string_endpoint(self.connection_string) or "(connection string)"
        return (self.account_url or "").split("?", 1)[0]

    def secrets(self) -> list[str | None]:
        credential = self.credential
        return [
            self.connection_string, self.client_secret, self.sas_token,
            getattr(credential, "key", None), getattr(credential, "token", None),
        ]

    def redact(self, text: str) -> str:
        return redact(text, self.secrets() + [os.environ.get(v) for v in SECRET_VARIABLES])

    # -- clients -------------------------------------------------------------------------

    def account(self) -> tuple[str, Any]:
        """The account URL and the SDK credential, in the contract's order. Works offline and
        raises SettingsError naming the variable when the settings cannot work."""
        method = self.method
        if self.connection_string:
            url, credential = parse_connection_string(self.connection_string)
            check_transport(url, CONNECTION_STRING)
            return url, credential
        url = self.account_url or ""
        check_transport(url, ACCOUNT_URL)
        if self.uses_token and urlparse(url).scheme != "https":
            raise SettingsError(
                f"{ACCOUNT_URL} must use https with {method}: Azure refuses bearer tokens over plain http"
            )
        if method == SERVICE_PRINCIPAL:
            missing = [
                name
                for name, value in (
                    ("AZURE_TENANT_ID", self.tenant_id),
                    ("AZURE_CLIENT_ID", self.client_id),
                    ("AZURE_CLIENT_SECRET", self.client_secret),
                )
                if not value
            ]
            if missing:
                raise SettingsError(
                    f"{', '.join(missing)} not set; a service principal needs AZURE_TENANT_ID, "
                    "AZURE_CLIENT_ID and AZURE_CLIENT_SECRET"
                )
            from azure.identity import ClientSecretCredential

            return url, self._token_credential or ClientSecretCredential(
                self.tenant_id, self.client_id, self.client_secret
            )
        if self.sas_token:
            return url, self.sas_token.lstrip("?")
        if self._token_credential is not None and self.credential.credential_type == "default_azure_credential":
            return url, self._token_credential
        return url, private_apis.dagster_azure_credential(self)

    def _client(self, probe: bool) -> BlobServiceClient:
        key = ("probe",) if probe else ()
        if key not in self._clients:
            url, credential = self.account()
            options = PROBE_CLIENT_OPTIONS if probe else export_client_options()
            self._clients[key] = BlobServiceClient(url, credential=credential, **options)
        return self._clients[key]

    @property
    def service(self) -> BlobServiceClient:
        """The account's client, built once and shared by every container of the step."""
        return self._client(probe=False)

    @contextmanager
    def get_client(self) -> Iterator[BlobServiceClient]:
        """dagster-azure's accessor; yields the shared client (not closed on exit, it is reused)."""
        yield self.service

    def container(self, name: str, *, probe: bool = False) -> ContainerClient:
        """A client for one container, created first when AZURE_CREATE_CONTAINERS is true.

        `probe=True` gives a client with short timeouts and one retry (`check-destination`)."""
        key = (name, "probe") if probe else name
        if key not in self._clients:
            client = self._client(probe).get_container_client(name)
            if self.create_containers:
                try:
                    client.create_container()
                except ResourceExistsError:
                    pass
            self._clients[key] = client
        return self._clients[key]

    # -- what went wrong -----------------------------------------------------------------

    def explain(self, exc: BaseException, action: str | None = None, container: str | None = None) -> str | None:
        """What to fix, for an error the user can fix (a setting, a refused credential, a missing
        permission or container, an unreachable endpoint); None for anything else.

        `action` is write, read, list or delete; without it, it is taken from the request."""
        if isinstance(exc, SettingsError):
            return self.redact(str(exc))
        if not isinstance(exc, (HttpResponseError, ServiceRequestError, ServiceResponseError)):
            return None
        code = getattr(exc, "error_code", None) or ""
        code = str(getattr(code, "value", code))
        status = getattr(exc, "status_code", None)
        text = str(getattr(exc, "message", None) or exc).strip()
        first_line = text.splitlines()[0] if text else ""
        detail = self.redact(f"{code or type(exc).__name__}: {first_line}")
        method = self.method
        # Azure says AuthenticationFailed; the emulator says AuthorizationFailure with Azure's text.
        refused = code == "AuthenticationFailed" or first_line.startswith("Server failed to authenticate the request")
        if refused or (isinstance(exc, ClientAuthenticationError) and code not in PERMISSION_CODES):
            return (
                f"authentication failed: the storage account refused the credential from {method} "
                f"(a wrong or rotated key, an expired SAS token or a refused token). Check {method}. [{detail}]"
            )
        request = getattr(getattr(exc, "response", None), "request", None)
        if action is None:
            action = _HTTP_ACTIONS.get(str(getattr(request, "method", "")).upper(), "write")
        container = container or self._container_of(getattr(request, "url", None))
        where = f" on container {container!r}" if container else ""
        if code in PERMISSION_CODES or status == 403:
            hint = f"grant the Azure RBAC data action {RBAC_ACTIONS[action]}{where}"
            if self.sas_token and not self.connection_string:
                hint += f", or issue a SAS token with the {SAS_LETTERS[action]} permission"
            return f"permission denied: {hint}. [{detail}]"
        if isinstance(exc, ResourceNotFoundError) and code == "ContainerNotFound":
            name = repr(container) if container else "the container"
            return f"container {name} does not exist: create it, or set AZURE_CREATE_CONTAINERS=true. [{detail}]"
        if isinstance(exc, ServiceRequestError):
            return f"could not reach {self.endpoint}: {detail}"
        if isinstance(exc, ServiceResponseError):  # connected, but no (complete) answer in time
            return f"could not reach {self.endpoint}: no answer ({detail})"
        return None

    def _container_of(self, url: str | None) -> str | None:
        """The container a request went to: the first path segment after the account's own."""
        if not url:
            return None
        skip = len([p for p in urlparse(self.endpoint).path.split("/") if p])
        segments = [p for p in urlparse(url).path.split("/") if p]
        return segments[skip] if len(segments) > skip else None

