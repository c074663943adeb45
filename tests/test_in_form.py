"""Lines already in the form, found by their text (`transform.in_form`), against the full parse.

The in-form path may take only lines that the full parse would find in the form, and must
read the same values from them; every other line goes to the full parse. So the two
paths must export the same bytes, counts, rejects, repairs, identities and extra keys for
any input. Each case below is a line that the path must or must not take.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone

import polars as pl
import pytest

from amplitude_assets.destination.writer import export_events_hour
from amplitude_assets.layout import EventsLayout
from amplitude_assets.line_form import event_lines
from amplitude_assets.shaping import KEY_COLUMNS, ShapedHour
from amplitude_assets.sources.synthetic import SyntheticSource, line
from amplitude_assets.transform import IDENTITY_COLUMNS, read_lines
from amplitude_assets.transform.in_form import form_keys, form_pattern, split_in_form

pytestmark = pytest.mark.unit

HOUR = datetime(2020, 1, 25, 17, tzinfo=timezone.utc)
PROJECT = "187520"
FIELDS = list(dict.fromkeys([*KEY_COLUMNS, *IDENTITY_COLUMNS]))


def rows(n: int = 60, seed: int = 5) -> list[dict]:
    return SyntheticSource(PROJECT, n, seed).events(HOUR)


def variant(row: dict, **changes) -> str:
    return line({**row, **changes})


def replaced(row: dict, old: str, new: str) -> str:
    text = line(row)
    assert old in text, old
    return text.replace(old, new, 1)


def cases() -> list[tuple[str, str, bool]]:
    """(what, line, taken by the in-form path)."""
    base = rows(80)
    r = iter(base[1:])
    same = base[0]
    deep = {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}
    return [
        ("a line in the form", line(next(r)), True),
        ("nested keys named like top-level fields", variant(next(r), event_properties={
            "uuid": "not-this", "server_upload_time": "1999-01-01 00:00:00.000000", "device_id": "nested",
            "list": [{"user_id": "x"}, [1, -2.5e-3, True, None]]}), True),
        ("escapes in the identity strings", variant(next(r), user_id='a"b\\c\u00e9\n', device_id="d\tv"), True),
        ("an integer of -0", variant(next(r), event_id=0).replace('"event_id":0,', '"event_id":-0,'), True),
        ("the largest integer taken", variant(next(r), session_id=999_999_999_999_999_999), True),
        ("a string holding ,} is left to the full parse", variant(next(r), city="a,}b"), False),
        ("a trailing comma in an object", replaced(next(r), '"event_properties":{', '"event_properties":{"z":1,},"q":{'), False),
        ("a trailing comma, plainly", variant(next(r), event_properties={"a": 1}).replace('{"a":1}', '{"a":1,}'), False),
        ("NaN in an object", variant(next(r), event_properties={"a": 1}).replace('{"a":1}', '{"a":NaN}'), False),
        ("Infinity in an object", variant(next(r), event_properties={"a": 1}).replace('{"a":1}', '{"a":-Infinity}'), False),
        ("nan in an object", variant(next(r), event_properties={"a": 1}).replace('{"a":1}', '{"a":nan}'), False),
        ("a missing colon in an object", variant(next(r), event_properties={"a": "b"}).replace('{"a":"b"}', '{"a""b"}'), False),
        ("a missing comma in an array", variant(next(r), event_properties={"a": [1, 2]}).replace("[1,2]", "[1 2]"), False),
        ("two values in a row", variant(next(r), event_properties={"a": [1, 2]}).replace("[1,2]", "[1,2][3]"), False),
        ("a bad escape", variant(next(r), city="ab").replace('"ab"', '"a\\qb"'), False),
        ("whitespace in an object", variant(next(r), event_properties={"a": 1}).replace('{"a":1}', '{"a": 1}'), False),
        ("whitespace at the top level", replaced(next(r), ',"uuid":', ', "uuid":'), False),
        ("nested deeper than the path reads", variant(next(r), event_properties=deep), False),
        ("29 February of a leap year", variant(next(r), user_creation_time="2016-02-29 00:00:00.000000"), True),
        ("29 February 2000", variant(next(r), user_creation_time="2000-02-29 00:00:00.000000"), True),
        ("29 February 2100, no leap year", variant(next(r), user_creation_time="2100-02-29 00:00:00.000000"), False),
        ("29 February 2015", variant(next(r), user_creation_time="2015-02-29 00:00:00.000000"), False),
        ("30 February", variant(next(r), user_creation_time="2016-02-30 00:00:00.000000"), False),
        ("month 13", variant(next(r), user_creation_time="2016-13-01 00:00:00.000000"), False),
        ("a leap second", variant(next(r), user_creation_time="2016-12-31 23:59:60.000000"), False),
        ("a T timestamp", variant(next(r), event_time="2020-01-25T17:10:00.000000"), False),
        ("an uppercase uuid", variant(next(r), uuid="AE5C5B3C-2B0A-4D47-8A1C-5E5F6C3F1B2A"), False),
        ("an empty user_id", variant(next(r), user_id=""), False),
        ("an empty device_id", variant(next(r), device_id=""), False),
        ("an integer beyond int64", variant(next(r), session_id=12_345_678_901_234_567_890), False),
        ("a float beyond a double", variant(next(r), location_lat=1.0).replace('"location_lat":1.0', '"location_lat":1e400'), False),
        ("an integer field as a float", variant(next(r), app=187520.0), False),
        ("a number as a string", variant(next(r), amplitude_id="123"), False),
        ("a dict field null", variant(next(r), data=None), False),
        ("a dict field a list", variant(next(r), groups=[]), False),
        ("a string field holding an object", variant(next(r), city={"name": "x"}), False),
        ("a key left out", line({k: v for k, v in next(r).items() if k != "plan"}), False),
        ("an extra key more", variant(next(r), zz_more=1), False),
        ("a key written with an escape", replaced(next(r), '"version_name":', '"version\\u005fname":'), False),
        ("a key twice", replaced(next(r), '"version_name":', '"uuid":"00000000-0000-4000-8000-000000000000","version_name":'), False),
        ("keys out of order", json.dumps(dict(reversed(list(next(r).items()))), ensure_ascii=False, separators=(",", ":")), False),
        ("outside the hour, in the form", variant(next(r), server_upload_time="2020-01-25 18:00:00.000000"), True),
        ("a repeat of the first line's uuid", variant(next(r), uuid=same["uuid"]), True),
    ], line(same)


def test_each_case_is_taken_or_left_as_it_should_be():
    listed, first = cases()
    lines = pl.Series([first, *(text for _, text, _ in listed)])
    found, others = split_in_form(lines, FIELDS)
    taken = set(found.frame["\x00pos"].to_list())
    assert 0 in taken
    wrong = [what for i, (what, _, expected) in enumerate(listed, start=1) if (i in taken) != expected]
    assert not wrong
    assert sorted(taken | set(others.to_list())) == list(range(len(lines)))


def test_the_fields_read_are_the_top_level_ones():
    listed, first = cases()
    lines = pl.Series([first, *(text for _, text, _ in listed)])
    found, _ = split_in_form(lines, FIELDS)
    for pos, *values in found.frame.select("\x00pos", *FIELDS).iter_rows():
        row = json.loads(lines[pos])
        expected = [None if row[f] is None else (row[f] if isinstance(row[f], str) else json.dumps(row[f])) for f in FIELDS]
        assert values == expected, lines[pos][:200]
    escaped = found.frame.filter(pl.col("user_id").str.contains('"'))
    assert escaped["user_id"].to_list() == ['a"b\\c\u00e9\n'] and escaped["device_id"].to_list() == ["d\tv"]


def test_the_expression_is_anchored_and_spells_every_key():
    first = line(rows(1)[0])
    keys = form_keys(pl.Series([first]))
    pattern = form_pattern(keys)
    assert pattern.startswith("^\\{") and pattern.endswith("\\}$")
    assert pl.Series([first, first + " ", "x" + first, first[:-1]]).str.contains(pattern).to_list() == [True, False, False, False]
    # the keys come from the first lines with the 49 fields in order, not from others
    assert form_keys(pl.Series(["not json", '{"b":1,"a":2}', first])) == keys
    assert form_keys(pl.Series(["[1]", '{"a":1}'])) is None


def shaped_hour(lines: list[str], in_form: bool, chunk: int, keep=None):
    chunks = [("\n".join(lines[i:i + 50]) + "\n").encode() for i in range(0, len(lines), 50)]
    shaped = ShapedHour(chunks, HOUR, keep=keep, lines_per_chunk=chunk, in_form=in_form)
    out = [(event_lines(c.frame, c.keys).to_list(), c.keys) for c in shaped]
    summary = shaped.summary()
    return out, summary, shaped


def hour_lines(n: int = 700) -> list[str]:
    """A synthetic hour (most lines in the form, some untidy) with every case mixed in."""
    source = SyntheticSource(PROJECT, n, 9)
    lines = read_lines(list(source.iter_lines(HOUR))).to_list()
    listed, first = cases()
    rnd = random.Random(4)
    for _, text, _ in listed:
        lines.insert(rnd.randrange(0, len(lines)), text)
    lines.insert(3, first)
    # an extra key first met on a line that is not in the form, early, and one late
    lines.insert(1, variant(json.loads(first), early_key={"x": 1}, uuid="11111111-1111-4111-8111-111111111111").replace(',"uuid"', ', "uuid"'))
    lines.append(variant(json.loads(first), late_key=[1], uuid="22222222-2222-4222-8222-222222222222"))
    return lines


@pytest.mark.parametrize("chunk", [7, 97, 100_000])
def test_both_paths_shape_the_same_hour(chunk):
    lines = hour_lines()
    fast, fast_summary, _ = shaped_hour(lines, True, chunk)
    full, full_summary, _ = shaped_hour(lines, False, chunk)
    assert fast == full
    assert fast_summary.counts == full_summary.counts
    assert fast_summary.extras == full_summary.extras
    assert fast_summary.rejects.equals(full_summary.rejects)
    assert fast_summary.repairs.equals(full_summary.repairs)
    assert pl.read_parquet(fast_summary.identities).equals(pl.read_parquet(full_summary.identities))
    assert fast_summary.counts.rejected >= 10 and fast_summary.counts.duplicates >= 2
    # and the path did take most of the hour's lines
    found, _ = split_in_form(pl.Series(lines), FIELDS)
    assert found.height > 0.85 * len(lines)


def test_both_paths_agree_when_the_lines_are_read_in_parallel_parts():
    source = SyntheticSource(PROJECT, 40_000, 2)
    lines = read_lines(list(source.iter_lines(HOUR))).to_list()
    fast, fast_summary, _ = shaped_hour(lines, True, 100_000)
    full, full_summary, _ = shaped_hour(lines, False, 100_000)
    assert fast == full and fast_summary.counts == full_summary.counts
    assert pl.read_parquet(fast_summary.identities).equals(pl.read_parquet(full_summary.identities))


def test_a_filter_on_plain_fields_keeps_the_path_and_one_on_objects_parses_in_full():
    lines = hour_lines(300)
    plain = (pl.col("event_type") != "Sign Up") & (pl.col("event_time") > datetime(2020, 1, 25, 17, 20))
    on_object = pl.col("event_properties").str.contains("google")
    for keep, in_form in ((plain, True), (on_object, False)):
        fast, fast_summary, shaped = shaped_hour(lines, True, 97, keep=keep)
        full, full_summary, _ = shaped_hour(lines, False, 97, keep=keep)
        assert (shaped.in_form_fields is not None) is in_form
        assert fast == full and fast_summary.counts == full_summary.counts
        assert 0 < fast_summary.counts.filtered < fast_summary.counts.source_rows


@pytest.fixture
def client(fresh_container):
    return fresh_container("inform")


@pytest.mark.azurite
def test_both_paths_write_the_same_blobs(client):
    lines = hour_lines()
    chunks = [("\n".join(lines[i:i + 80]) + "\n").encode() for i in range(0, len(lines), 80)]
    written = []
    for in_form in (True, False):
        layout = EventsLayout("in-form" if in_form else "full", PROJECT)
        manifest, _ = export_events_hour(client, layout, chunks, HOUR, keep=None, source="synthetic",
                                         max_rows_per_file=200, lines_per_chunk=150, in_form=in_form)
        parts = [client.download_blob(layout.folder + p.name).readall() for p in manifest.parts]
        written.append((parts, manifest.counts, manifest.extra["validated"]))
    assert written[0] == written[1] and len(written[0][0]) >= 3
    # the lines encoded in the shaping are counted, and validated, as encoded
    validated = written[0][2]
    assert validated["encoded"] > 0 and validated["as_sent"] + validated["encoded"] == validated["lines"]
