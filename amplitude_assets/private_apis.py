"""The one module that reaches into Dagster's and dagster-azure's private APIs.

Each function below is one private use: what it reaches into, why no public API serves, and
the pinned release it was checked against (pyproject.toml). The rest of the package calls
these functions and nothing private; `tests/test_imports.py` fails on a private name used
anywhere else, on a function here that nothing calls, and on a "Checked against" release
that is not the pinned one. When a pin moves: re-read each function against the new release,
then update its "Checked against" line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
from azure.storage.blob import BlobServiceClient
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus
from dagster_azure.blob import AzureBlobStorageResource
from dagster_azure.blob.compute_log_manager import AzureBlobComputeLogManager

__all__ = [
    "BACKFILL_IN_PROGRESS",
    "BulkActionsFilter",
    "add_partition_metadata",
    "compute_log_url",
    "dagster_azure_credential",
    "not_dagster_maintained",
    "sensor_running",
    "step_failure_text",
    "unsettled_backfill_partitions",
    "use_service_client",
]

# A backfill in these states may still launch runs.
BACKFILL_IN_PROGRESS = [BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING, BulkActionStatus.FAILING]


# -- dagster-azure -----------------------------------------------------------------------


def not_dagster_maintained(cls: type) -> type:
    """Class decorator: a subclass of a dagster-azure resource is not reported as Dagster's own.

    Reaches into: `ConfigurableResource._is_dagster_maintained`, the classmethod Dagster reads
    for its telemetry; `AzureBlobStorageResource` answers True, and a subclass inherits that.
    No public API: the flag has no public setter, only this private override.
    Checked against: dagster 1.13.27, dagster-azure 0.29.27.
    """
    cls._is_dagster_maintained = classmethod(lambda _cls: False)
    return cls


def dagster_azure_credential(resource: AzureBlobStorageResource) -> Any:
    """The SDK credential dagster-azure makes of the resource's `credential` field (a key, a SAS
    token, a DefaultAzureCredential, or None for anonymous access).

    Reaches into: `AzureBlobStorageResource._raw_credential`, dagster-azure's own mapping.
    No public API: the resource hands its credential over only inside a client that
    `get_client()` closes on exit.
    Checked against: dagster-azure 0.29.27.
    """
    return AzureBlobStorageResource._raw_credential(resource)


def use_service_client(manager: AzureBlobComputeLogManager, service: BlobServiceClient, container: str) -> None:
    """Make dagster-azure's compute log manager write through `service`, to `container`.

    Reaches into: `AzureBlobComputeLogManager._blob_client` and `._container_client`, which its
    `__init__` builds for `https://{storage_account}.blob.{endpoint_suffix}/`.
    No public API: the manager takes an account name, never an account URL or a client, so it
    cannot reach the storage emulator or any endpoint of another shape.
    Checked against: dagster-azure 0.29.27, azure-storage-blob 12.31.1.
    """
    manager._blob_client = service
    manager._container_client = service.get_container_client(container)


def compute_log_url(manager: AzureBlobComputeLogManager, log_key: Sequence[str], io_type) -> str:
    """The URL of a captured log's blob, at the endpoint `use_service_client` set.

    Reaches into: `AzureBlobComputeLogManager._blob_key` (the blob's name under the manager's
    prefix) and `._container_client`.
    No public API: dagster-azure's `display_path_for_type` builds the URL from the account
    name, not from the client in use.
    Checked against: dagster-azure 0.29.27, azure-storage-blob 12.31.1.
    """
    return f"{manager._container_client.url}/{manager._blob_key(log_key, io_type)}"


# -- dagster -------------------------------------------------------------------------------


def add_partition_metadata(context: dg.OutputContext, metadata: Mapping[str, Any], partition_key: str) -> None:
    """Attach `metadata` to one partition's materialization, from an IO manager's handle_output.

    Reaches into: `OutputContext.step_context` (not marked public) and its
    `StepExecutionContext.add_asset_metadata(metadata, partition_key=...)`.
    No public API: `OutputContext.add_output_metadata` copies one value to every partition of
    a range, and logging an `AssetMaterialization` per hour would record each hour twice.
    Checked against: dagster 1.13.27.
    """
    context.step_context.add_asset_metadata(metadata, partition_key=partition_key)


def unsettled_backfill_partitions(instance: dg.DagsterInstance, assets: set[dg.AssetKey]) -> set[str]:
    """Partition keys of `assets` that an in-progress asset backfill targets and has not settled
    yet (neither materialized nor failed).

    Reaches into: `BulkActionsFilter` and `BulkActionStatus` of `dagster._core.execution.backfill`,
    and the `PartitionBackfill.asset_backfill_data` that `DagsterInstance.get_backfills` gives
    (`AssetBackfillData.get_targeted_partitions_without_materialization_status`).
    No public API: `get_backfills` is public, but neither its filter nor a backfill's target is.
    Checked against: dagster 1.13.27.
    """
    busy: set[str] = set()
    for backfill in instance.get_backfills(filters=BulkActionsFilter(statuses=BACKFILL_IN_PROGRESS)):
        data = backfill.asset_backfill_data
        if data is None:  # a job backfill, or one stored in an older format: its runs show in the run list
            continue
        pending = data.get_targeted_partitions_without_materialization_status()
        for key, subset in pending.partitions_subsets_by_asset_key.items():
            if key in assets:
                busy |= set(subset.get_partition_keys())
    return busy


def sensor_running(context: dg.SensorEvaluationContext, sensor_name: str) -> bool:
    """Whether the sensor `sensor_name` of the evaluating sensor's code location is running.

    Reaches into: `SensorEvaluationContext.code_location_origin` (not marked public, a private
    `CodeLocationOrigin`) and `DagsterInstance.all_instigator_state()` (private `InstigatorState`s:
    `origin.instigator_name`, `origin.repository_origin.code_location_origin`, `is_running`).
    No public API: a sensor's on/off state is public only through the GraphQL API and the CLI.
    Checked against: dagster 1.13.27.
    """
    location = context.code_location_origin.location_name if context.code_location_origin else None
    for state in context.instance.all_instigator_state():
        origin = state.origin
        if origin.instigator_name != sensor_name:
            continue
        if location and origin.repository_origin.code_location_origin.location_name != location:
            continue
        if state.is_running:
            return True
    return False


def step_failure_text(event: dg.DagsterEvent) -> str:
    """A STEP_FAILURE event's cause: the `dg.Failure` description, else `ErrorClass: message`.

    Reaches into: `DagsterEvent.step_failure_data`, a private `StepFailureData`
    (`user_failure_data.description`, `error.cls_name`, `error.message`).
    No public API: a step failure's cause is public only in the event log's rendered text.
    Checked against: dagster 1.13.27.
    """
    data = event.step_failure_data
    if data.user_failure_data is not None and data.user_failure_data.description:
        return data.user_failure_data.description
    error = data.error
    return f"{error.cls_name}: {error.message}" if error is not None else event.message or ""
