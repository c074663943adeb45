"""The checks read an hour part by part, in bounded batches, and still catch every fault.

An hour of many parts is checked with a tiny batch size: the largest batch handled stays
under the bound whatever the hour's size, and faults that span parts and batches (a
line repeated from another part, damage in the middle of a part) are found with their
exact file and line.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import datetime, timezone

import pytest
from azure.storage.blob import BlobServiceClient, ContentSettings

from amplitude_assets import checks, duck
from amplitude_assets.errors import SettingsError
from amplitude_assets.settings import Settings
from amplitude_assets.layout import EventsLayout
from tests.helpers import definitions, materialize

PROJECT = "187520"
HOUR = datetime(2020, 1, 25, 17, tzinfo=timezone.utc)
LAYOUT = EventsLayout("", PROJECT)
ALL = {"schema", "unique", "complete"}


@pytest.fixture
def hour(container, settings_env, azurite):
    """An exported hour of 1,200 events in parts of 100 rows; the container client."""
    settings_env(AMPLITUDE_START="2020-01-25-00:00", AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR=1200,
                 AMPLITUDE_MAX_ROWS_PER_FILE=100)
    assert materialize(definitions(), ["events"], partition="2020-01-25-17:00").success
    return BlobServiceClient.from_connection_string(azurite).get_container_client(container)


def parts(client) -> list[str]:
    names = [b.name for b in client.list_blobs(name_starts_with=LAYOUT.parts_prefix(HOUR))]
    return sorted(names, key=lambda n: LAYOUT.part_number(n, HOUR))


def part_lines(client, name: str) -> list[str]:
    return gzip.decompress(client.download_blob(name).readall()).decode().splitlines()


def replace(client, name: str, lines: list[str]) -> None:
    data = gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)
    client.upload_blob(name, data, overwrite=True, content_settings=ContentSettings(
        content_type="application/gzip", content_md5=bytearray(hashlib.md5(data).digest())))


def test_many_parts_are_checked_in_small_batches(hour):
    names = parts(hour)
    assert len(names) >= 11
    rows = sum(len(part_lines(hour, n)) for n in names)
    scan = checks.scan_files(hour, names, checks.EVENT_RULES, batch_bytes=16 << 10)
    sizes = [len(line.encode()) + 1 for n in names for line in part_lines(hour, n)]
    # A batch holds at most batch_bytes of text plus the line it cut through: a few lines
    # here, whatever the hour's size.
    assert 1 <= scan.largest_batch <= ((16 << 10) + max(sizes)) // min(sizes)
    assert scan.largest_batch < 100
    assert scan.facts == {"files_checked": len(names), "lines_checked": rows}
    assert all(not f.count for f in scan.schema + scan.unique)
    outcomes = checks.events_hour_outcomes(hour, LAYOUT, HOUR, ALL, batch_bytes=16 << 10, read_back=True)
    assert all(o.passed for o in outcomes.values()), {k: o.description for k, o in outcomes.items()}


def test_a_line_repeated_from_another_part_is_found_across_batches(hour):
    names = parts(hour)
    first, last = names[0], names[-1]
    repeated = part_lines(hour, first)[7]
    lines = part_lines(hour, last)
    replace(hour, last, lines + [repeated])
    outcomes = checks.events_hour_outcomes(hour, LAYOUT, HOUR, {"unique", "schema"}, batch_bytes=8 << 10, read_back=True)
    unique = outcomes["unique"]
    uuid = json.loads(repeated)["uuid"]
    assert not unique.passed and unique.problem_count == 2
    assert unique.problems[0] == {"file": last, "line": len(lines) + 1, "field": "uuid", "value": uuid,
                                  "problem": f"repeats {first} line 8"}
    row = json.loads(repeated)
    assert unique.problems[1] == {"file": last, "line": len(lines) + 1, "field": "($insert_id, device_id)",
                                  "value": f"{row['$insert_id']}, {row['device_id']}",
                                  "problem": f"repeats {first} line 8"}
    assert outcomes["schema"].passed


def test_uuid_repeats_ignore_case_and_nulls_never_repeat(hour):
    names = parts(hour)
    lines = part_lines(hour, names[2])
    upper = json.loads(lines[0])
    upper["uuid"] = json.loads(part_lines(hour, names[1])[3])["uuid"].upper()
    upper["$insert_id"] = None  # so only the uuid repeats
    nulls = [json.loads(line) for line in lines[1:3]]
    for row in nulls:
        row["uuid"] = None
    replace(hour, names[2], [json.dumps(upper), *(json.dumps(r) for r in nulls), *lines[3:]])
    unique = checks.events_hour_outcomes(hour, LAYOUT, HOUR, {"unique"}, batch_bytes=4 << 10, read_back=True)["unique"]
    assert unique.problem_count == 1
    assert unique.problems[0]["field"] == "uuid" and unique.problems[0]["line"] == 1
    assert unique.problems[0]["problem"] == f"repeats {names[1]} line 4"
    assert unique.problems[0]["value"] == upper["uuid"].lower()


def test_damage_in_the_middle_of_a_part_is_located_exactly(hour):
    names = parts(hour)
    target = names[5]
    lines = part_lines(hour, target)
    wrong = json.loads(lines[61])
    wrong["session_id"] = "12x"
    lines[61] = json.dumps(wrong)
    lines[80] = "{not json"
    replace(hour, target, lines)
    schema = checks.events_hour_outcomes(hour, LAYOUT, HOUR, {"schema"}, batch_bytes=4 << 10, read_back=True)["schema"]
    assert schema.problem_count == 2
    assert {"file": target, "line": 81, "value": "{not json", "problem": "not valid JSON"} in schema.problems
    assert {"file": target, "line": 62, "field": "session_id", "value": '"12x"',
            "problem": "must be an integer or null"} in schema.problems


def test_a_part_that_is_not_gzip_or_lacks_its_last_newline_is_reported(hour):
    names = parts(hour)
    hour.upload_blob(names[3], b"not gzip at all", overwrite=True)
    lines = part_lines(hour, names[4])
    hour.upload_blob(names[4], gzip.compress("\n".join(lines).encode(), mtime=0), overwrite=True)
    scan = checks.scan_files(hour, names, checks.EVENT_RULES, batch_bytes=4 << 10)
    problems = [p for f in scan.schema for p in f.problems]
    assert problems[0]["file"] == names[3] and problems[0]["problem"].startswith("not readable gzip UTF-8 JSON lines")
    assert problems[1] == {"file": names[4], "line": len(lines), "problem": "the last line does not end in a newline"}
    assert sum(f.count for f in scan.schema) == 2
    # the rest of the hour is still read: every line of the other parts, and the unterminated one
    assert scan.facts["lines_checked"] == sum(len(part_lines(hour, n)) for n in names if n != names[3])


def test_duckdb_limits_follow_the_cgroup_and_the_settings(tmp_path, settings_env):
    (tmp_path / "memory.max").write_text("4294967296\n")
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert duck.memory_limit_bytes(tmp_path) == 4 << 30
    assert duck.cpu_limit(tmp_path) == min(2, duck.cpu_limit(tmp_path / "none"))
    (tmp_path / "memory.max").write_text("max\n")
    assert duck.memory_limit_bytes(tmp_path) == duck.memory_limit_bytes(tmp_path / "none")
    settings_env(AMPLITUDE_DUCKDB_MEMORY_LIMIT="300MB", AMPLITUDE_DUCKDB_THREADS=1)
    duck.limits.cache_clear()
    try:
        con = duck.connect()
        memory, threads = con.sql("SELECT current_setting('memory_limit'), current_setting('threads')").fetchall()[0]
        assert threads == 1 and memory.endswith("MiB") and 280 <= float(memory.split()[0]) <= 300
        # connections opened side by side are cursors of one database: they share its limit
        first, second = duck.connect(threads=1), duck.connect(threads=1)
        memory = first.sql("SELECT current_setting('memory_limit')").fetchall()[0][0]
        assert memory.endswith("MiB") and 280 <= float(memory.split()[0]) <= 300
        first.execute("CREATE OR REPLACE TABLE shared_probe AS SELECT 1 AS x")
        assert second.sql("SELECT x FROM shared_probe").fetchall() == [(1,)]
        first.execute("DROP TABLE shared_probe")
        assert duck.size_bytes("1.5GB") == 1_500_000_000 and duck.size_bytes("512MiB") == 512 << 20
        settings_env(AMPLITUDE_DUCKDB_THREADS=0)
        duck.limits.cache_clear()
        with pytest.raises(ValueError, match="AMPLITUDE_DUCKDB_THREADS"):
            duck.connect()
        # A bad value stops the definitions from loading, naming the variable.
        with pytest.raises(SettingsError, match="AMPLITUDE_DUCKDB_THREADS"):
            Settings.from_env({"AMPLITUDE_DUCKDB_THREADS": "0"})
        with pytest.raises(SettingsError, match="AMPLITUDE_DUCKDB_MEMORY_LIMIT"):
            Settings.from_env({"AMPLITUDE_DUCKDB_MEMORY_LIMIT": "lots"})
        assert Settings.from_env({"AMPLITUDE_DUCKDB_MEMORY_LIMIT": "1.5GB", "AMPLITUDE_DUCKDB_THREADS": "2"})
    finally:
        settings_env(AMPLITUDE_DUCKDB_MEMORY_LIMIT=None, AMPLITUDE_DUCKDB_THREADS=None)
        duck.limits.cache_clear()
