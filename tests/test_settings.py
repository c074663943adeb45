"""Settings: definitions load with nothing set, and refuse bad values naming the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from amplitude_assets.settings import Settings, SettingsError
from tests.conftest import ROOT


def test_defaults_with_nothing_set():
    s = Settings.from_env({})
    assert (s.project_id, s.org_id, s.start, s.source) == ("187520", None, "2025-01-01-00:00", "synthetic")
    assert (s.events_container, s.events_prefix) == ("amplitude", "")
    # Merged IDs share the events container by default, so they get their own folder.
    assert (s.merged_ids_container, s.merged_ids_prefix, s.merged_ids_scope) == ("amplitude", "merged_ids", "187520")
    assert s.export_delay_minutes == 10 and s.hours_per_run == 24 and s.max_rows_per_file == 500_000
    assert Settings.from_env({"AMPLITUDE_SOURCE": "export_api"}).export_delay_minutes == 120


def test_separate_merged_ids_container_has_no_default_prefix():
    s = Settings.from_env({"AZURE_MERGED_IDS_CONTAINER": "merges", "AMPLITUDE_ORG_ID": "42"})
    assert (s.merged_ids_container, s.merged_ids_prefix, s.merged_ids_scope) == ("merges", "", "-42")


@pytest.mark.parametrize("env,variable", [
    ({"AMPLITUDE_PROJECT_ID": "12a"}, "AMPLITUDE_PROJECT_ID"),
    ({"AMPLITUDE_ORG_ID": "-5"}, "AMPLITUDE_ORG_ID"),
    ({"AZURE_EVENTS_PREFIX": "a/../b"}, "AZURE_EVENTS_PREFIX"),
    ({"AZURE_EVENTS_PREFIX": "a//b"}, "AZURE_EVENTS_PREFIX"),
    ({"AZURE_MERGED_IDS_PREFIX": "x/.."}, "AZURE_MERGED_IDS_PREFIX"),
    ({"AMPLITUDE_START": "2024-01-01"}, "AMPLITUDE_START"),
    ({"AMPLITUDE_SOURCE": "s3"}, "AMPLITUDE_SOURCE"),
    ({"AMPLITUDE_REGION": "apac"}, "AMPLITUDE_REGION"),
    ({"AMPLITUDE_MAX_ROWS_PER_FILE": "0"}, "AMPLITUDE_MAX_ROWS_PER_FILE"),
    ({"AZURE_EVENTS_CONTAINER": "Bad_Name"}, "AZURE_EVENTS_CONTAINER"),
    # A legacy org with an empty merged-IDs prefix in the events container would write
    # merged IDs into the very folder readers glob for events.
    ({"AZURE_MERGED_IDS_PREFIX": ""}, "AZURE_MERGED_IDS_PREFIX"),
    ({"AZURE_EVENTS_PREFIX": "p", "AZURE_MERGED_IDS_PREFIX": "p"}, "AZURE_MERGED_IDS_PREFIX"),
])
def test_bad_settings_name_the_variable(env, variable):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env(env)


def test_org_scope_may_share_the_events_folder_root():
    s = Settings.from_env({"AMPLITUDE_ORG_ID": "7", "AZURE_MERGED_IDS_PREFIX": ""})
    assert s.merged_ids_prefix == "" and s.merged_ids_scope == "-7"


def _load(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("AMPLITUDE_", "AZURE_"))}
    return subprocess.run(
        [sys.executable, "-c", "import amplitude_assets.definitions as d; print(sorted(k.to_user_string() for k in d.defs.resolve_asset_graph().get_all_asset_keys()))"],
        env={**clean, **env}, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def test_definitions_load_with_nothing_set():
    loaded = _load({})
    assert loaded.returncode == 0, loaded.stderr
    assert "events" in loaded.stdout


def test_definitions_refuse_to_load_naming_the_variable():
    loaded = _load({"AMPLITUDE_PROJECT_ID": "abc"})
    assert loaded.returncode != 0
    assert "AMPLITUDE_PROJECT_ID must contain digits only" in loaded.stderr


def test_workspace_and_dagster_cloud_declare_the_same_location():
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    cloud = yaml.safe_load((ROOT / "dagster_cloud.yaml").read_text())
    (entry,) = workspace["load_from"]
    assert entry["python_module"] == {"module_name": "amplitude_assets.definitions", "location_name": "amplitude_assets"}
    (location,) = cloud["locations"]
    assert location["location_name"] == "amplitude_assets"
    assert location["code_source"] == {"module_name": "amplitude_assets.definitions"}


def test_export_api_url_must_be_https_or_loopback():
    assert Settings.from_env({"AMPLITUDE_EXPORT_API_URL": "http://127.0.0.1:8080/"}).export_api_base_url == "http://127.0.0.1:8080"
    with pytest.raises(SettingsError, match="AMPLITUDE_EXPORT_API_URL must use https"):
        Settings.from_env({"AMPLITUDE_EXPORT_API_URL": "http://proxy.corp:8080"})
    with pytest.raises(SettingsError, match="AMPLITUDE_EXPORT_API_URL"):
        Settings.from_env({"AMPLITUDE_EXPORT_API_URL": "proxy.corp"})
