"""Compute logs (each step's stdout and stderr) in the export's storage account.

dagster-azure's `AzureBlobComputeLogManager` (0.29) takes an account *name* and builds
`https://{storage_account}.blob.{endpoint_suffix}/` itself, so it cannot reach the Azure
Storage emulator or any endpoint of another shape. This subclass also takes:
- `account_url`, with dagster-azure's own credential options
  (`access_key_or_sas_token`, `secret_credential`, `default_azure_credential`);
- `connection_string`;
- neither of them nor `storage_account`: the export's AZURE_* variables, in the export's
  order (see `destination/credentials.py`), so one set of variables serves both.

With `storage_account` alone it is dagster-azure's class, unchanged. See deploy/dagster.yaml.
"""

import os
from typing import Any

from dagster import Field, StringSource
from dagster_azure.blob import (
    AzureBlobStorageDefaultCredential,
    AzureBlobStorageKeyCredential,
)
from dagster_azure.blob.compute_log_manager import (
    AzureBlobComputeLogManager as DagsterAzureBlobComputeLogManager,
)

from amplitude_assets import private_apis
from amplitude_assets.destination.credentials import AzureStorage

_ENVIRONMENT = {
    "connection_string": "AZURE_STORAGE_CONNECTION_STRING",
    "account_url": "AZURE_STORAGE_ACCOUNT_URL",
    "tenant_id": "AZURE_TENANT_ID",
    "client_id": "AZURE_CLIENT_ID",
    "client_secret": "AZURE_CLIENT_SECRET",
    "sas_token": "AZURE_STORAGE_SAS_TOKEN",
}


def storage_for(
    account_url: str | None = None,
    connection_string: str | None = None,
    access_key_or_sas_token: str | None = None,
    secret_credential: dict | None = None,
    default_azure_credential: dict | None = None,
) -> AzureStorage:
    """The storage account the logs go to, with the export's rules (https for tokens, and so on)."""
    if connection_string:
        return AzureStorage(connection_string=connection_string)
    if account_url:
        if secret_credential:
            return AzureStorage(account_url=account_url, **secret_credential)
        if access_key_or_sas_token and "sig=" in access_key_or_sas_token:
            return AzureStorage(account_url=account_url, sas_token=access_key_or_sas_token)
        if access_key_or_sas_token:
            return AzureStorage(account_url=account_url,
                                credential=AzureBlobStorageKeyCredential(key=access_key_or_sas_token))
        return AzureStorage(account_url=account_url,
                            credential=AzureBlobStorageDefaultCredential(kwargs=default_azure_credential or {}))
    settings = {field: os.environ[name] for field, name in _ENVIRONMENT.items() if os.environ.get(name, "").strip()}
    return AzureStorage(**settings)


class AzureBlobComputeLogManager(DagsterAzureBlobComputeLogManager):
    """dagster-azure's compute log manager that also reaches an account URL or a connection string."""

    def __init__(
        self,
        container: str,
        storage_account: str | None = None,
        account_url: str | None = None,
        connection_string: str | None = None,
        secret_credential: dict | None = None,
        access_key_or_sas_token: str | None = None,
        default_azure_credential: dict | None = None,
        **kwargs: Any,
    ):
        credentials = {
            "secret_credential": secret_credential,
            "access_key_or_sas_token": access_key_or_sas_token,
            "default_azure_credential": default_azure_credential,
        }
        if storage_account and not (account_url or connection_string):
            super().__init__(storage_account=storage_account, container=container, **credentials, **kwargs)
            return
        service = storage_for(account_url, connection_string, **credentials).service
        super().__init__(storage_account=service.account_name, container=container, **credentials, **kwargs)
        # dagster-azure built a client for https://{account}.blob.core.windows.net/: use ours.
        private_apis.use_service_client(self, service, container)

    @classmethod
    def config_type(cls):
        fields = dict(super().config_type())
        fields["storage_account"] = Field(StringSource, is_required=False)
        fields["account_url"] = Field(StringSource, is_required=False)
        fields["connection_string"] = Field(StringSource, is_required=False)
        return fields

    def display_path_for_type(self, log_key, io_type) -> str:
        if not self.is_capture_complete(log_key):
            return super().display_path_for_type(log_key, io_type)
        return private_apis.compute_log_url(self, log_key, io_type)
