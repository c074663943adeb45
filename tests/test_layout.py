"""Blob names, without I/O: the layout readers depend on, to the byte."""

from datetime import datetime, timezone

from amplitude_assets.layout import EventsLayout, MergedIdsLayout, hour_stem, part_hour

H17 = datetime(2020, 1, 25, 17, tzinfo=timezone.utc)


def test_event_names():
    layout = EventsLayout("", "187520")
    assert layout.part(H17, 0) == "187520/187520_2020-01-25_17#0.json.gz"
    assert layout.part(H17, 12) == "187520/187520_2020-01-25_17#12.json.gz"
    assert layout.marker(H17) == "187520/187520_2020-01-25_17_complete"
    assert layout.rejected(H17) == "_rejected/187520/187520_2020-01-25_17.jsonl.gz"
    assert EventsLayout("raw/amp", "1").part(H17.replace(hour=0), 3) == "raw/amp/1/1_2020-01-25_0#3.json.gz"


def test_hours_are_not_zero_padded():
    assert [hour_stem("9", H17.replace(hour=h)) for h in (0, 9, 17, 23)] == [
        "9_2020-01-25_0", "9_2020-01-25_9", "9_2020-01-25_17", "9_2020-01-25_23"]


def test_part_numbers_belong_to_their_hour_only():
    layout = EventsLayout("", "187520")
    assert layout.part_number("187520/187520_2020-01-25_17#4.json.gz", H17) == 4
    assert layout.part_number("187520/187520_2020-01-25_1#4.json.gz", H17) is None
    assert layout.part_number("187520/187520_2020-01-25_17_complete", H17) is None
    # hour 1's parts prefix must not match hour 17's names
    assert layout.part_number("187520/187520_2020-01-25_17#0.json.gz", H17.replace(hour=1)) is None


def test_part_names_read_back_as_their_hour():
    assert part_hour("187520/187520_2020-01-25_17#3.json.gz") == H17
    assert part_hour("raw/amp/-4242/-4242_2020-01-25_0#12.json.gz") == H17.replace(hour=0)  # any scope and folder
    assert part_hour("187520_2020-01-25_9#0.json.gz") == H17.replace(hour=9)
    assert part_hour("187520/187520_2020-01-25_17_complete") is None
    assert part_hour("187520/187520_2020-01-25_17#3.json") is None
    layout = EventsLayout("raw", "187520")
    hours = [datetime(2020, 12, 31, h, tzinfo=timezone.utc) for h in (0, 9, 23)]
    assert [part_hour(layout.part(h, 2)) for h in hours] == hours


def test_state_names_read_back_as_their_hour():
    layout = MergedIdsLayout("merged_ids", "-4242")
    hours = [datetime(2020, 12, 31, h, tzinfo=timezone.utc) for h in (0, 9, 23)]
    assert [layout.state_hour(layout.state(h)) for h in hours] == hours
    assert layout.state_hour("merged_ids/_state/-4242/-4242_2020-01-25_17.parquet") == H17
    assert layout.state_hour("merged_ids/_state/-999/-999_2020-01-25_17.parquet") is None  # another scope
    assert layout.state_hour(layout.file(H17)) is None


def test_merged_id_names():
    assert MergedIdsLayout("", "-42").file(H17) == "-42/-42_2020-01-25_17.json.gz"
    assert MergedIdsLayout("", "-42").marker(H17) == "-42/-42_2020-01-25_17_complete"
    assert MergedIdsLayout("merged_ids", "187520").file(H17) == "merged_ids/187520/187520_2020-01-25_17.json.gz"
