"""Range runs, the export delay, the command-line backfill, and a downstream reader."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import dagster as dg
import duckdb
import pytest

from tests.conftest import ROOT
from tests.helpers import definitions, lines_of, materialize

PROJECT = "187520"


@pytest.fixture
def env(synthetic_hours):
    return synthetic_hours


def materializations(instance: dg.DagsterInstance, key: str = "events") -> dict[str, dict]:
    records = instance.fetch_materializations(dg.AssetKey(key), limit=1000).records
    return {r.partition_key: r.asset_materialization.metadata for r in records}


def test_range_run_writes_each_hour_with_its_own_metadata(env, blobs):
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(definitions(), ["events"], start="2020-01-25-20:00", end="2020-01-25-23:00", instance=instance)
    assert result.success
    stored = blobs(env)
    metadata = materializations(instance)
    assert sorted(metadata) == [f"2020-01-25-{h}:00" for h in (20, 21, 22, 23)]
    for hour in (20, 21, 22, 23):
        manifest = json.loads(stored[f"{PROJECT}/{PROJECT}_2020-01-25_{hour}_complete"])
        md = metadata[f"2020-01-25-{hour}:00"]
        # Each hour's materialization carries that hour's own counts, not the range's totals.
        assert md["dagster/row_count"].value == manifest["rows"]
        assert md["count_duplicates"].value == manifest["counts"]["duplicates"]
        assert md["count_source_rows"].value == manifest["counts"]["source_rows"]
        assert md["parts"].value == len(manifest["parts"]) == 1
        assert md["blob_paths"].value == [f"{env}/{PROJECT}/{PROJECT}_2020-01-25_{hour}#0.json.gz"]
        columns = [c.name for c in md["dagster/column_schema"].schema.columns]
        assert columns[:3] == ["server_received_time", "app", "device_carrier"]
    duplicates = [metadata[k]["count_duplicates"].value for k in sorted(metadata)]
    assert len(set(duplicates)) > 1, "every hour shows the same count: the range's value was copied"


def test_hour_in_a_range_equals_the_hour_alone(env, blobs):
    materialize(definitions(), ["events"], start="2020-01-25-02:00", end="2020-01-25-04:00")
    in_range = blobs(env)[f"{PROJECT}/{PROJECT}_2020-01-25_3#0.json.gz"]
    materialize(definitions(), ["events"], partition="2020-01-25-03:00")
    alone = blobs(env)[f"{PROJECT}/{PROJECT}_2020-01-25_3#0.json.gz"]
    assert in_range == alone


def test_young_hour_is_refused_with_the_time_it_becomes_exportable(env, blobs, settings_env):
    now = datetime.now(timezone.utc)
    settings_env(AMPLITUDE_START=f"{now - timedelta(days=1):%Y-%m-%d}-00:00", AMPLITUDE_EXPORT_DELAY_MINUTES=120)
    young = (now - timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    result = materialize(definitions(), ["events"], partition=f"{young:%Y-%m-%d-%H:%M}", raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("events").error.message
    ready = young + timedelta(hours=1, minutes=120)
    assert f"becomes exportable at {ready:%Y-%m-%d %H:%M} UTC" in failure
    assert "AMPLITUDE_EXPORT_DELAY_MINUTES" in failure
    assert not [n for n in blobs(env) if n.endswith("_complete")]


def test_downstream_reader_globs_the_parts_with_duckdb(env, blobs, tmp_path):
    materialize(definitions(), ["events"], start="2020-01-25-10:00", end="2020-01-25-11:00")
    for name, data in blobs(env).items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    # What a reader does: glob *.json.gz under the project folder (markers are skipped).
    rows = duckdb.sql(
        f"SELECT count(*), count(DISTINCT uuid), min(server_upload_time), max(server_upload_time), "
        f"any_value(typeof(event_properties)) FROM read_json_auto('{tmp_path}/{PROJECT}/*.json.gz')"
    ).fetchall()[0]
    manifests = [json.loads((tmp_path / PROJECT / f"{PROJECT}_2020-01-25_{h}_complete").read_bytes()) for h in (10, 11)]
    assert rows[0] == rows[1] == sum(m["rows"] for m in manifests)
    assert str(rows[2]).startswith("2020-01-25 10:") and str(rows[3]).startswith("2020-01-25 11:")


def test_command_line_backfill_records_runs_in_dagster_home(env, tmp_path, settings_env, blobs):
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "amplitude_assets", "backfill", "--start", "2020-01-25-05:00", "--end", "2020-01-25-09:00"],
        cwd=ROOT, env=settings_env(DAGSTER_HOME=home, AMPLITUDE_HOURS_PER_RUN=2), capture_output=True, text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "in 3 run(s)" in done.stdout
    assert "All 5 hour(s) exported." in done.stdout
    for hour in range(5, 10):
        assert lines_of(blobs(env)[f"{PROJECT}/{PROJECT}_2020-01-25_{hour}#0.json.gz"])
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert sorted(materializations(instance)) == [f"2020-01-25-0{h}:00" for h in range(5, 10)]
        runs = instance.get_runs()
        assert len(runs) == 3
        assert all(r.tags.get("amplitude_assets/cli_backfill") for r in runs)


# The backfill with its runs' "exported hour ..." log lines worded otherwise, and each update
# of the progress bar made while a run executes noted in a file: the progress comes from the
# hours' markers in the container, so it still reaches every hour of the run.
REWORDED = (
    "import sys\n"
    "import dagster as dg\n"
    "from rich.progress import Progress\n"
    "info, update = dg.DagsterLogManager.info, Progress.update\n"
    "def reworded(self, msg, *args, **kwargs):\n"
    "    msg = msg.replace('exported hour', 'wrote hour') if isinstance(msg, str) else msg\n"
    "    return info(self, msg, *args, **kwargs)\n"
    "def noted(self, task, **fields):\n"
    "    if fields.get('description', '').startswith('run '):\n"
    "        with open(sys.argv[1], 'a') as notes:\n"
    "            notes.write(f\"{fields['completed']}\\n\")\n"
    "    return update(self, task, **fields)\n"
    "dg.DagsterLogManager.info, Progress.update = reworded, noted\n"
    "from amplitude_assets.__main__ import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def test_command_line_progress_counts_the_markers_not_the_log_lines(env, tmp_path, settings_env):
    home = tmp_path / "home"
    home.mkdir()
    notes = tmp_path / "progress"
    done = subprocess.run(
        [sys.executable, "-c", REWORDED, str(notes), "backfill", "--start", "2020-01-25-05:00", "--end", "2020-01-25-06:00"],
        cwd=ROOT, env=settings_env(DAGSTER_HOME=home, AMPLITUDE_HOURS_PER_RUN=2), capture_output=True, text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All 2 hour(s) exported." in done.stdout
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        messages = [r.user_message for r in instance.all_logs(run.run_id) if r.dagster_event is None]
    assert any(m.startswith("wrote hour") for m in messages)  # the rewording took
    assert not any(m.startswith("exported hour") for m in messages)
    shown = [float(line) for line in notes.read_text().split()]
    assert max(shown) == 2, shown  # both hours, seen while the run was still being followed


def test_command_line_backfill_fails_when_an_hour_fails(env, tmp_path, settings_env):
    # The container is not created: every write fails.
    environment = settings_env(DAGSTER_HOME=tmp_path, AZURE_EVENTS_CONTAINER="no-such-container")
    done = subprocess.run(
        [sys.executable, "-m", "amplitude_assets", "backfill", "--start", "2020-01-25-05:00", "--end", "2020-01-25-06:00"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 1
    assert "2 of 2 hour(s) did not export cleanly" in done.stdout
    assert "FAILED" in done.stdout
    assert "AccountKey" not in done.stdout + done.stderr


def test_a_failing_hour_does_not_stop_the_range_and_landed_hours_are_recorded(env, blobs, settings_env, tmp_path):
    import gzip as gz

    from amplitude_assets.sources.synthetic import SyntheticSource

    folder = tmp_path / PROJECT
    folder.mkdir()
    good = b"".join(SyntheticSource(PROJECT, 50, 0).iter_lines(datetime(2020, 1, 25, 6, tzinfo=timezone.utc)))
    (folder / f"{PROJECT}_2020-01-25_6#0.json.gz").write_bytes(gz.compress(good))
    (folder / f"{PROJECT}_2020-01-25_7#0.json.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    (folder / f"{PROJECT}_2020-01-25_8#0.json.gz").write_bytes(gz.compress(good.replace(b"2020-01-25 06:", b"2020-01-25 08:")))
    settings_env(AMPLITUDE_SOURCE="files", AMPLITUDE_FILES_URL=tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(definitions(), ["events"], start="2020-01-25-06:00", end="2020-01-25-08:00",
                         instance=instance, raise_on_error=False)
    assert not result.success
    assert "1 of 3 hour(s) failed to export" in result.failure_data_for_node("events").error.message
    names = set(blobs(env))
    assert {f"{PROJECT}/{PROJECT}_2020-01-25_6_complete", f"{PROJECT}/{PROJECT}_2020-01-25_8_complete"} <= names
    assert f"{PROJECT}/{PROJECT}_2020-01-25_7_complete" not in names
    recorded = materializations(instance)
    assert sorted(recorded) == ["2020-01-25-06:00", "2020-01-25-08:00"]
    assert recorded["2020-01-25-08:00"]["dagster/row_count"].value == json.loads(
        blobs(env)[f"{PROJECT}/{PROJECT}_2020-01-25_8_complete"])["rows"]
