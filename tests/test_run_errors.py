"""A run that fails for a reason the user can fix leads with that reason (a dagster.Failure
whose description names the variable, the credential or the RBAC action), not with Dagster's
"Error occurred while handling output" and the cause underneath."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest
from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

from amplitude_assets.destination.credentials import NO_CREDENTIALS, RBAC_ACTIONS
from tests.conftest import ACCOUNT, ACCOUNT_KEY, WRONG_KEY, blob_endpoint
from tests.helpers import definitions
from tests.test_export_api import HOUR, KEY, SECRET, ExportServer, Reply

PARTITION = "2020-01-25-17:00"


def run_events(settings_env, **settings: str | None) -> dg.ExecuteInProcessResult:
    """`events` for one hour through dagster.materialize, as the code location defines it with `settings`."""
    settings_env(**{"AMPLITUDE_START": "2020-01-25-00:00", "AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR": "50", **settings})
    defs = definitions()
    events = next(a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and a.key == dg.AssetKey("events"))
    return dg.materialize(
        [events], resources=defs.resources, partition_key=PARTITION,
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
    )


def headline(result: dg.ExecuteInProcessResult) -> tuple[str, object]:
    """The failed step's description (what the run page shows first) and its error's cause."""
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    data = failure.event_specific_data
    assert data.user_failure_data is not None, data.error.to_string()
    return data.user_failure_data.description, data.error.cause


def test_no_settings_fail_the_run_with_the_variables_as_headline(settings_env):
    description, cause = headline(run_events(settings_env))
    assert description == NO_CREDENTIALS
    assert cause is None


def test_a_malformed_connection_string_is_the_headline(settings_env):
    description, cause = headline(run_events(settings_env, AZURE_STORAGE_CONNECTION_STRING="AccountName=acct;AccountKey=c2VjcmV0!!"))
    assert description == "AZURE_STORAGE_CONNECTION_STRING is malformed: its AccountKey is not base64"
    assert cause is None


def test_a_refused_key_names_the_credential_variable(container, azurite, settings_env):
    result = run_events(settings_env, AZURE_STORAGE_CONNECTION_STRING=azurite.replace(ACCOUNT_KEY, WRONG_KEY))
    description, cause = headline(result)
    assert description.startswith(
        "authentication failed: the storage account refused the credential from AZURE_STORAGE_CONNECTION_STRING "
        "(a wrong or rotated key, an expired SAS token or a refused token). Check AZURE_STORAGE_CONNECTION_STRING."
    ), description
    assert description.endswith(f"(hour {PARTITION} failed)")
    assert cause is None
    assert WRONG_KEY not in "".join(str(e) for e in result.all_events)


def test_a_missing_permission_names_the_rbac_action(container, azurite, settings_env):
    sas = generate_account_sas(  # may read and list, not write or delete
        ACCOUNT, ACCOUNT_KEY, resource_types=ResourceTypes(container=True, object=True),
        permission=AccountSasPermissions(read=True, list=True),
        expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1),
    )
    result = run_events(settings_env, AZURE_STORAGE_CONNECTION_STRING=None,
                        AZURE_STORAGE_ACCOUNT_URL=blob_endpoint(azurite), AZURE_STORAGE_SAS_TOKEN=sas)
    description, cause = headline(result)
    assert description.startswith("permission denied: grant the Azure RBAC data action "), description
    # The export's first request writes (or deletes an old marker): both are refused here.
    action = description.split("data action ")[1].split(" ")[0]
    letter = {RBAC_ACTIONS["write"]: "w (and c)", RBAC_ACTIONS["delete"]: "d"}[action]
    assert f"on container {container!r}, or issue a SAS token with the {letter} permission." in description
    assert description.endswith(f"(hour {PARTITION} failed)")
    assert cause is None
    assert sas.split("sig=")[1] not in "".join(str(e) for e in result.all_events)


@pytest.fixture
def export_api():
    with ExportServer() as server:
        yield server


def test_a_refused_export_api_key_is_the_headline(container, export_api, settings_env):
    export_api.script(HOUR, Reply(401, b"Invalid"))
    result = run_events(
        settings_env, AMPLITUDE_SOURCE="export_api", AMPLITUDE_EXPORT_API_URL=export_api.url,
        AMPLITUDE_API_KEY=KEY, AMPLITUDE_SECRET_KEY=SECRET, AMPLITUDE_EXPORT_DELAY_MINUTES="0",
    )
    description, cause = headline(result)
    assert description.startswith("Export API refused the credentials for "), description
    assert "check AMPLITUDE_API_KEY, AMPLITUDE_SECRET_KEY and AMPLITUDE_REGION" in description
    assert cause is None
    text = "".join(str(e) for e in result.all_events)
    assert KEY not in text and SECRET not in text


def test_merged_ids_without_settings_fails_with_the_variables_as_headline(settings_env):
    settings_env(AMPLITUDE_START="2020-01-25-00:00")
    result = definitions().resolve_implicit_global_asset_job_def().execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), partition_key=PARTITION,
        asset_selection=[dg.AssetKey("merged_ids")], raise_on_error=False,
    )
    description, cause = headline(result)
    assert description == NO_CREDENTIALS
    assert cause is None
