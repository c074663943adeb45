"""Azure credentials, tried in the contract's order, and the containers they open.

1. AZURE_STORAGE_CONNECTION_STRING (account key or the emulator);
2. otherwise AZURE_STORAGE_ACCOUNT_URL with one of:
   - AZURE_TENANT_ID + AZURE_CLIENT_ID + AZURE_CLIENT_SECRET (service principal),
   - AZURE_STORAGE_SAS_TOKEN,
   - DefaultAzureCredential (managed or workload identity).

dagster-azure's `AzureBlobStorageResource` takes neither a connection string nor a
service principal, which are the two ways Amplitude's own setup and the emulator
authenticate, so this resource builds the `BlobServiceClient` itself.
"""


import os
import re
from urllib.parse import urlparse

import dagster as dg
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContainerClient
from pydantic import PrivateAttr

from amplitude_assets.settings import SECRET_VARIABLES, SettingsError, check_transport

NO_CREDENTIALS = (
    "No Azure credentials: set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_URL "
    "with AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET, AZURE_STORAGE_SAS_TOKEN, or a "
    "managed identity"
)


def redact(text: str, secrets: list[str | None] | None = None) -> str:
    """Remove every secret value (and SAS signatures) from a message."""
    values = secrets if secrets is not None else [os.environ.get(v) for v in SECRET_VARIABLES]
    for value in values:
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    text = re.sub(r"(?i)(sig=)[^&\s'\"]+", r"\1***", text)
    text = re.sub(r"(?i)(AccountKey=)[^;\s'\"]+", r"\1***", text)
    return text


def connection_string_endpoint(connection_string: str) -> str | None:
    """The blob endpoint a connection string points at (no secret in it)."""
    fields = dict(
        part.split("=", 1) for part in connection_string.split(";") if "=" in part
    )
    if "BlobEndpoint" in fields:
        return fields["BlobEndpoint"]
    if fields.get("UseDevelopmentStorage", "").lower() == "true":
        return "http://127.0.0.1:10000/devstoreaccount1"
    account = fields.get("AccountName")
    if account:
        protocol = fields.get("DefaultEndpointsProtocol", "https")
        suffix = fields.get("EndpointSuffix", "core.windows.net")
        return f"{protocol}://{account}.blob.{suffix}"
    return None


class AzureStorage(dg.ConfigurableResource):
    """The storage account. Secrets come in only through dagster.EnvVar."""

    connection_string: str | None = None
    account_url: str | None = None
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
            "connection_string": "AZURE_STORAGE_CONNECTION_STRING",
            "account_url": "AZURE_STORAGE_ACCOUNT_URL",
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
            return "AZURE_STORAGE_CONNECTION_STRING"
        if not self.account_url:
            raise SettingsError(NO_CREDENTIALS)
        # The secret marks a service principal: workload and user-assigned managed
        # identities set AZURE_CLIENT_ID and AZURE_TENANT_ID without one.
        if self.client_secret:
            return "AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET"
        if self.sas_token:
            return "AZURE_STORAGE_SAS_TOKEN"
        return "DefaultAzureCredential (managed or workload identity)"

    @property
    def endpoint(self) -> str:
        """The blob endpoint, for messages and metadata; never carries a secret."""
        if self.connection_string:
            return connection_string_endpoint(self.connection_string) or "(connection string)"
        return (self.account_url or "").split("?", 1)[0]

    def secrets(self) -> list[str | None]:
        return [self.connection_string, self.client_secret, self.sas_token]

    def redact(self, text: str) -> str:
        return redact(text, self.secrets() + [os.environ.get(v) for v in SECRET_VARIABLES])

    @property
    def service(self) -> BlobServiceClient:
        if "" not in self._clients:
            self._clients[""] = self._service()
        return self._clients[""]

    def _service(self) -> BlobServiceClient:
        method = self.method
        if self.connection_string:
            endpoint = connection_string_endpoint(self.connection_string)
            if endpoint:
                check_transport(endpoint, "AZURE_STORAGE_CONNECTION_STRING")
            return BlobServiceClient.from_connection_string(self.connection_string)
        url = self.account_url or ""
        check_transport(url, "AZURE_STORAGE_ACCOUNT_URL")
        if not self.sas_token or method.startswith("AZURE_TENANT_ID"):
            if urlparse(url).scheme != "https":
                raise SettingsError(
                    f"AZURE_STORAGE_ACCOUNT_URL must use https with {method}: Azure refuses bearer "
                    "tokens over plain http"
                )
        if method.startswith("AZURE_TENANT_ID"):
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

            credential = self._token_credential or ClientSecretCredential(
                self.tenant_id, self.client_id, self.client_secret
            )
            return BlobServiceClient(url, credential=credential)
        if self.sas_token:
            return BlobServiceClient(url, credential=self.sas_token.lstrip("?"))
        from azure.identity import DefaultAzureCredential

        return BlobServiceClient(url, credential=self._token_credential or DefaultAzureCredential())

    def container(self, name: str) -> ContainerClient:
        """A client for one container, created first when AZURE_CREATE_CONTAINERS is true."""
        if name not in self._clients:
            client = self.service.get_container_client(name)
            if self.create_containers:
                try:
                    client.create_container()
                except ResourceExistsError:
                    pass
            self._clients[name] = client
        return self._clients[name]
