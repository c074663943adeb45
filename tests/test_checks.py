"""Per-hour asset checks, run through Dagster against a real Azurite, after tampering with blobs."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys

import dagster as dg
import pytest
from azure.storage.blob import ContentSettings

from tests.helpers import RANGE_END, RANGE_START, definitions, materialize

PROJECT = "187520"
HOUR = "2020-01-25-17:00"
FOLDER = f"{PROJECT}/"
PART0 = f"{FOLDER}{PROJECT}_2020-01-25_17#0.json.gz"
PART1 = f"{FOLDER}{PROJECT}_2020-01-25_17#1.json.gz"
MARKER = f"{FOLDER}{PROJECT}_2020-01-25_17_complete"
EVENTS_CHECKS = ["schema", "unique", "complete"]


@pytest.fixture
def env(synthetic_hours):
    return synthetic_hours


@pytest.fixture
def client(env, blobs):
    return blobs.service.get_container_client(env)


def check_key(name: str, asset: str = "events") -> dg.AssetCheckKey:
    return dg.AssetCheckKey(dg.AssetKey(asset), name)


def run_checks(defs, names=EVENTS_CHECKS, *, partition=None, start=None, end=None, instance=None, asset="events",
               read_back=False):
    """Run only the checks (no materialization) through Dagster, as the UI's "Execute checks" does;
    with `read_back`, as the job `deep_check_events` runs them."""
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=set(), asset_check_selection={check_key(n, asset) for n in names}
    )
    instance = instance or dg.DagsterInstance.ephemeral()
    tags = {RANGE_START: start, RANGE_END: end} if start else None
    config = {"ops": {f"{asset}_checks": {"config": {"read_back": True}}}} if read_back else None
    result = job.execute_in_process(instance=instance, partition_key=partition, tags=tags, raise_on_error=False,
                                    run_config=config)
    return result, instance


def evaluations(instance: dg.DagsterInstance, run_id: str) -> list:
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    return [r.dagster_event.event_specific_data for r in records]


def by_name(evals) -> dict:
    return {e.check_name: e for e in evals}


def rewrite_part(client, name: str, edit) -> None:
    """Replace a part with edited lines, keeping Content-MD5 right so only the content changes."""
    lines = gzip.decompress(client.download_blob(name).readall()).decode().splitlines()
    data = gzip.compress(("\n".join(edit(lines)) + "\n").encode(), mtime=0)

    client.upload_blob(name, data, overwrite=True, content_settings=ContentSettings(
        content_type="application/gzip", content_md5=bytearray(hashlib.md5(data).digest())))


def test_checks_pass_on_a_clean_hour(env):
    defs = definitions()
    exported = materialize(defs, ["events"], partition=HOUR)
    assert exported.success
    result, instance = run_checks(defs, partition=HOUR)
    assert result.success
    evals = by_name(evaluations(instance, result.run_id))
    assert set(evals) == set(EVENTS_CHECKS)
    for e in evals.values():
        assert e.passed, (e.check_name, e.description)
        assert e.partition == HOUR
    assert evals["schema"].blocking and evals["complete"].blocking and not evals["unique"].blocking
    assert evals["schema"].metadata["lines_checked"].value > 150


def test_materializing_runs_the_checks_with_the_asset(env):
    defs = definitions()
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(defs, ["events"], partition=HOUR, instance=instance)
    evals = by_name(e for e in evaluations(instance, result.run_id) if e.check_name != "freshness")  # test_freshness.py
    assert set(evals) == set(EVENTS_CHECKS) and all(e.passed for e in evals.values())


def test_repeated_line_fails_unique_with_the_lines(env, client):
    defs = definitions()
    materialize(defs, ["events"], partition=HOUR)
    rewrite_part(client, PART0, lambda lines: lines + [lines[3]])
    result, instance = run_checks(defs, partition=HOUR, read_back=True)
    evals = by_name(evaluations(instance, result.run_id))
    unique = evals["unique"]
    assert not unique.passed
    problems = unique.metadata["problems"].value
    count = len(gzip.decompress(client.download_blob(PART0).readall()).splitlines())
    uuid = json.loads(gzip.decompress(client.download_blob(PART0).readall()).splitlines()[3])["uuid"]
    assert problems[0] == {"file": PART0, "line": count, "field": "uuid", "value": uuid,
                           "problem": f"repeats {PART0} line 4"}
    assert problems[1]["field"] == "($insert_id, device_id)" and problems[1]["line"] == count
    assert unique.metadata["problem_count"].value == 2
    # complete fails too: the part no longer matches the manifest's size and row count
    assert evals["schema"].passed
    assert not evals["complete"].passed


def test_wrong_keys_and_types_fail_schema_precisely(env, client):
    defs = definitions()
    materialize(defs, ["events"], partition=HOUR)

    def damage(lines):
        wrong_type = json.loads(lines[1])
        wrong_type["amplitude_id"] = "12"  # a string where an integer belongs
        wrong_type["event_time"] = "2020-01-25T17:00:00Z"
        missing = json.loads(lines[4])
        del missing["city"]
        return [lines[0], json.dumps(wrong_type), lines[2], lines[3], json.dumps(missing), "not json", *lines[5:]]

    rewrite_part(client, PART0, damage)
    result, instance = run_checks(defs, ["schema"], partition=HOUR, read_back=True)
    assert not result.success  # schema is blocking: a failure fails the step
    schema = by_name(evaluations(instance, result.run_id))["schema"]
    assert not schema.passed and schema.partition == HOUR
    problems = schema.metadata["problems"].value
    assert {"file": PART0, "line": 6, "value": "not json", "problem": "not valid JSON"} in problems
    assert {"file": PART0, "line": 5, "field": "city",
            "value": json.dumps(["client_event_time", "client_upload_time", "country"]),
            "problem": "key 'city' is missing"} in problems
    assert {"file": PART0, "line": 2, "field": "amplitude_id", "value": '"12"',
            "problem": "must be an integer or null"} in problems
    assert {"file": PART0, "line": 2, "field": "event_time", "value": '"2020-01-25T17:00:00Z"',
            "problem": "must be a timestamp string YYYY-MM-DD HH:MM:SS.ffffff or null"} in problems
    assert schema.metadata["problem_count"].value == 4
    assert schema.metadata["first_problem"].value.startswith(PART0)


def test_extra_keys_must_match_on_every_line(env, client):
    defs = definitions()
    materialize(defs, ["events"], partition=HOUR)

    def add_extra(lines):
        first = json.loads(lines[0])
        first["zz_extra"] = {"branch": "main"}
        return [json.dumps(first), *lines[1:]]

    rewrite_part(client, PART0, add_extra)
    result, instance = run_checks(defs, ["schema"], partition=HOUR, read_back=True)
    schema = by_name(evaluations(instance, result.run_id))["schema"]
    assert not schema.passed
    problem = schema.metadata["problems"].value[0]
    assert problem["line"] == 2 and problem["field"] == "zz_extra" and "missing" in problem["problem"]


def test_missing_marker_fails_complete(env, client):
    defs = definitions()
    materialize(defs, ["events"], partition=HOUR)
    client.delete_blob(MARKER)
    result, instance = run_checks(defs, partition=HOUR)
    assert not result.success
    evals = by_name(evaluations(instance, result.run_id))
    assert not evals["complete"].passed
    assert evals["complete"].metadata["problems"].value == [{
        "file": MARKER, "problem": "the marker is missing: the hour is not (or no longer) exported"}]
    assert evals["schema"].passed and evals["unique"].passed


def test_stray_and_missing_parts_fail_complete(env, client, settings_env):
    settings_env(AMPLITUDE_MAX_ROWS_PER_FILE=100)
    defs = definitions()
    materialize(defs, ["events"], partition=HOUR)
    stray = f"{FOLDER}{PROJECT}_2020-01-25_17#7.json.gz"
    client.upload_blob(stray, client.download_blob(PART0).readall())
    result, instance = run_checks(defs, ["complete"], partition=HOUR)
    complete = by_name(evaluations(instance, result.run_id))["complete"]
    assert not complete.passed
    assert complete.metadata["problems"].value == [{
        "file": stray, "problem": "a stray part: present in the container but not in the manifest"}]

    client.delete_blob(stray)
    client.delete_blob(PART1)
    result, instance = run_checks(defs, ["complete"], partition=HOUR)
    complete = by_name(evaluations(instance, result.run_id))["complete"]
    assert complete.metadata["problems"].value == [{
        "file": PART1, "problem": "listed in the manifest but missing from the container"}]


def test_replaced_part_fails_complete_on_md5_and_size(env, client):
    defs = definitions()
    materialize(defs, ["events"], partition=HOUR)
    rewrite_part(client, PART0, lambda lines: lines[:-1])
    result, instance = run_checks(defs, ["complete"], partition=HOUR)
    problems = by_name(evaluations(instance, result.run_id))["complete"].metadata["problems"].value
    assert [p["field"] for p in problems] == ["bytes", "md5"]
    assert all(p["file"] == PART0 for p in problems)


def test_unreconciled_manifest_fails_complete(env, client):
    defs = definitions()
    materialize(defs, ["events"], partition=HOUR)
    manifest = json.loads(client.download_blob(MARKER).readall())
    manifest["counts"]["source_rows"] += 1
    client.upload_blob(MARKER, json.dumps(manifest), overwrite=True)
    result, instance = run_checks(defs, ["complete"], partition=HOUR)
    problem = by_name(evaluations(instance, result.run_id))["complete"].metadata["problems"].value[0]
    assert problem["field"] == "counts" and "does not reconcile" in problem["problem"]


def test_range_run_records_one_evaluation_per_hour(env, client):
    defs = definitions()
    instance = dg.DagsterInstance.ephemeral()
    start, end = "2020-01-25-10:00", "2020-01-25-12:00"
    exported = materialize(defs, ["events"], start=start, end=end, instance=instance)
    assert exported.success
    client.delete_blob(f"{FOLDER}{PROJECT}_2020-01-25_11_complete")  # damage the middle hour

    result, instance = run_checks(defs, start=start, end=end, instance=instance)
    assert not result.success  # complete is blocking
    hours = ["2020-01-25-10:00", "2020-01-25-11:00", "2020-01-25-12:00"]
    evals = evaluations(instance, result.run_id)
    for name in EVENTS_CHECKS:
        per_hour = {e.partition: e.passed for e in evals if e.check_name == name and e.partition}
        assert sorted(per_hour) == hours, name
        assert per_hour == {h: not (name == "complete" and h == "2020-01-25-11:00") for h in hours}, name

    # The instance's per-partition check status shows each hour on its own.
    infos = instance.event_log_storage.get_asset_check_partition_info([check_key("complete")], partition_keys=hours)
    status = {i.partition_key: i.latest_execution_status.value for i in infos}
    assert status["2020-01-25-10:00"] == "SUCCEEDED"
    assert status["2020-01-25-11:00"] == "FAILED"
    assert status["2020-01-25-12:00"] == "SUCCEEDED"
    history = instance.event_log_storage.get_asset_check_execution_history(check_key("schema"), limit=20)
    assert result.run_id in {r.run_id for r in history}  # the range run recorded its schema evaluations


# -- merged_ids -------------------------------------------------------------------------

ORG = "4242"
MERGED = f"merged_ids/-{ORG}/-{ORG}_2020-01-25_0.json.gz"


@pytest.fixture
def merged_env(env, settings_env):
    settings_env(AMPLITUDE_ORG_ID=ORG)
    return env


def test_merged_ids_checks_pass_then_catch_damage(merged_env, client):
    defs = definitions()
    instance = dg.DagsterInstance.ephemeral()
    exported = materialize(defs, ["events", "merged_ids"], partition="2020-01-25-00:00", instance=instance)
    assert exported.success
    evals = by_name(e for e in evaluations(instance, exported.run_id)
                    if e.asset_key == dg.AssetKey("merged_ids") and e.check_name != "freshness")  # test_freshness.py
    assert set(evals) == {"schema", "unique", "chain"} and all(e.passed for e in evals.values())

    def damage(lines):
        repeated = lines[0]
        as_string = json.loads(lines[1])
        as_string["merge_time"] = str(as_string["merge_time"])
        other_scope = json.loads(lines[2])
        other_scope["scope"] = 7
        return [lines[0], json.dumps(as_string, separators=(",", ":")), json.dumps(other_scope), *lines[3:], repeated]

    count = len(gzip.decompress(client.download_blob(MERGED).readall()).splitlines())
    rewrite_part(client, MERGED, damage)
    result, instance = run_checks(defs, ["schema", "unique"], partition="2020-01-25-00:00", asset="merged_ids")
    evals = by_name(evaluations(instance, result.run_id))
    schema, unique = evals["schema"], evals["unique"]
    assert not schema.passed and schema.partition == "2020-01-25-00:00"
    assert schema.metadata["problems"].value[0] == {
        "file": MERGED, "line": 2, "field": "merge_time", "value": json.dumps(json.loads(
            gzip.decompress(client.download_blob(MERGED).readall()).splitlines()[1])["merge_time"]),
        "problem": "must be an integer"}
    # the scope on line 3 is reported beside the type problem, not hidden behind it
    assert {"file": MERGED, "line": 3, "field": "scope", "value": "7", "problem": f"must be -{ORG}"} \
        in schema.metadata["problems"].value
    assert schema.metadata["problem_count"].value == 2
    assert not unique.passed
    assert unique.metadata["problems"].value[0]["line"] == count + 1
    assert unique.metadata["problems"].value[0]["field"] == "amplitude_id"
    assert unique.metadata["problems"].value[0]["problem"] == f"repeats {MERGED} line 1"

    # the scope must be the configured one
    rewrite_part(client, MERGED, lambda lines: [json.dumps({**json.loads(lines[0]), "scope": 7}, separators=(",", ":"))])
    result, instance = run_checks(defs, ["schema"], partition="2020-01-25-00:00", asset="merged_ids")
    problem = by_name(evaluations(instance, result.run_id))["schema"].metadata["problems"].value[0]
    assert problem == {"file": MERGED, "line": 1, "field": "scope", "value": "7", "problem": f"must be -{ORG}"}


def test_a_range_run_of_one_hour_records_that_hours_own_results(env):
    """The sensor sends one-hour runs with range tags: each check must still be recorded for the hour."""
    defs = definitions()
    instance = dg.DagsterInstance.ephemeral()
    assert materialize(defs, ["events"], partition=HOUR, instance=instance).success
    result, instance = run_checks(defs, start=HOUR, end=HOUR, instance=instance)
    assert result.success
    evals = [e for e in evaluations(instance, result.run_id) if e.partition == HOUR]
    assert sorted(e.check_name for e in evals) == sorted(EVENTS_CHECKS)
    assert all(e.passed for e in evals)
    infos = instance.event_log_storage.get_asset_check_partition_info([check_key("schema")], partition_keys=[HOUR])
    assert [i.latest_execution_status.value for i in infos] == ["SUCCEEDED"]


# -- what the export validated, and the read-back ---------------------------------------------


def upload_as_is(client, name: str, data: bytes) -> None:
    """Replace a blob with `data`, its Content-MD5 right for what it now holds."""
    client.upload_blob(name, data, overwrite=True, content_settings=ContentSettings(
        content_type="application/gzip", content_md5=bytearray(hashlib.md5(data).digest())))


def test_the_export_records_what_it_validated_and_the_checks_rely_on_it(env, client):
    defs = definitions()
    materialize(defs, ["events"], partition=HOUR)
    marker = json.loads(client.download_blob(MARKER).readall())
    assert marker["validated"]["lines"] == marker["rows"] > 150
    assert marker["validated"]["as_sent"] + marker["validated"]["encoded"] == marker["rows"]
    result, instance = run_checks(defs, partition=HOUR)
    evals = by_name(evaluations(instance, result.run_id))
    assert all(e.passed for e in evals.values())
    assert evals["schema"].metadata["validated_when_written"].value is True
    assert evals["schema"].metadata["lines_checked"].value == marker["rows"]


@pytest.mark.parametrize("damage", ["other valid lines", "truncated"])
def test_a_part_changed_after_the_export_fails_every_check(env, client, damage):
    defs = definitions()
    materialize(defs, ["events"], partition=HOUR)
    original = client.download_blob(PART0).readall()
    if damage == "other valid lines":  # the same valid, unique lines in another order: a read-back passes them
        rewrite_part(client, PART0, lambda lines: list(reversed(lines)))
    else:
        upload_as_is(client, PART0, original[: len(original) // 2])
    result, instance = run_checks(defs, partition=HOUR)
    assert not result.success
    evals = by_name(evaluations(instance, result.run_id))
    assert not any(e.passed for e in evals.values()), {n: e.passed for n, e in evals.items()}
    for name in ("schema", "unique"):
        (problem,) = evals[name].metadata["problems"].value
        assert problem["file"] == PART0 and "is not the part whose lines were validated" in problem["problem"]
    assert {p["field"] for p in evals["complete"].metadata["problems"].value} >= {"md5"}


def test_the_deep_check_reads_every_line_again(env, client, tmp_path, settings_env):
    environment = settings_env(DAGSTER_HOME=str(tmp_path))
    defs = definitions()
    materialize(defs, ["events"], partition=HOUR)
    rewrite_part(client, PART0, lambda lines: [*lines[:2], "not json", *lines[3:]])
    done = subprocess.run([sys.executable, "-m", "amplitude_assets", "deep-check", "--start", HOUR, "--end", HOUR],
                          capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 1, done.stderr[-3000:]
    out = done.stdout
    assert f"events schema {HOUR}: FAILED {PART0} line 3: not valid JSON (value not json)" in out
    assert f"events unique {HOUR}: passed" in out
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    (run,) = instance.get_runs()
    evals = [e for e in evaluations(instance, run.run_id) if e.partition == HOUR]
    schema = by_name(evals)["schema"]
    assert not schema.passed and "validated_when_written" not in schema.metadata


def test_an_hour_in_an_earlier_releases_order_is_named_as_one_to_re_export(env, client):
    from amplitude_assets.schema import EVENT_FIELD_NAMES

    defs = definitions()
    materialize(defs, ["events"], partition=HOUR)
    manifest = json.loads(client.download_blob(MARKER).readall())

    def old_order(lines):
        rows = [json.loads(line) for line in lines]
        return [json.dumps({**{k: r[k] for k in EVENT_FIELD_NAMES}, **{k: v for k, v in r.items() if k not in EVENT_FIELD_NAMES}},
                           ensure_ascii=False, separators=(",", ":")) for r in rows]

    for part in manifest["parts"]:
        name = FOLDER + part["name"]
        rewrite_part(client, name, old_order)
        blob = client.get_blob_client(name).get_blob_properties()
        part.update(bytes=blob.size, md5=bytes(blob.content_settings.content_md5).hex())
    del manifest["validated"]  # an earlier release's marker
    client.upload_blob(MARKER, json.dumps(manifest), overwrite=True)
    result, instance = run_checks(defs, partition=HOUR)
    evals = by_name(evaluations(instance, result.run_id))
    assert evals["complete"].passed and evals["unique"].passed
    schema = evals["schema"]
    assert not schema.passed
    problems = schema.metadata["problems"].value
    assert problems and all("re-export this hour to upgrade it; its values are not damaged" in p["problem"]
                            for p in problems)
    assert schema.metadata["problem_count"].value == manifest["rows"]
