"""The merged-ID rule (SPEC 5) as a pure function: no I/O, small frames, and a sequential oracle."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import polars as pl
import pytest

from amplitude_assets.identity import IdentityState, decode_state, derive_merges, encode_state, stored_kind
from amplitude_assets.schema import MERGED_ID_FIELDS

SCOPE = -4242
T0 = datetime(2020, 1, 25, 17)


def frame(events: list[tuple]) -> pl.DataFrame:
    """Events as (user_id, device_id, amplitude_id[, seconds into the hour[, event_time]])."""
    rows = []
    for i, event in enumerate(events):
        user, device, amplitude_id, *rest = event
        upload = T0 + timedelta(seconds=rest[0] if rest else i)
        event_time = rest[1] if len(rest) > 1 else upload - timedelta(seconds=5)
        rows.append((user, device, amplitude_id, event_time, upload))
    return pl.DataFrame(
        rows,
        schema={"user_id": pl.String, "device_id": pl.String, "amplitude_id": pl.Int64,
                "event_time": pl.Datetime("us"), "server_upload_time": pl.Datetime("us")},
        orient="row",
    )


def merges(events: list[tuple], state: IdentityState | None = None) -> tuple[list[tuple], IdentityState]:
    rows, after = derive_merges(frame(events), state or IdentityState.empty(), SCOPE)
    return [(r["amplitude_id"], r["merged_amplitude_id"]) for r in rows.iter_rows(named=True)], after


# -- the sequential rule, word for word, as the oracle ------------------------------------


class Oracle:
    def __init__(self) -> None:
        self.original: dict[str, int] = {}
        self.identified: set[int] = set()
        self.anonymous: dict[str, int] = {}
        self.merged: set[int] = set()
        self.steps: list[int] = []  # which step emitted each row

    def hour(self, events: pl.DataFrame) -> list[tuple]:
        ordered = events.with_row_index("pos").sort("server_upload_time", "pos")
        out = []
        for e in ordered.iter_rows(named=True):
            a, u, d = e["amplitude_id"], e["user_id"], e["device_id"]
            if a is None:
                continue
            if u is None:
                if a not in self.identified and d is not None:
                    self.anonymous[d] = a
                continue
            o = self.original.setdefault(u, a)
            x = self.anonymous.get(d) if d is not None else None
            if x is not None and x != o and x not in self.identified and x not in self.merged:
                out.append((e, x, o))
                self.merged.add(x)
                self.steps.append(2)
            if a != o and a not in self.merged:
                out.append((e, a, o))
                self.merged.add(a)
                self.steps.append(3)
            self.identified |= {o, a}
        return [
            (SCOPE, ms(e["event_time"] or e["server_upload_time"]), ms(e["server_upload_time"]), x, o)
            for e, x, o in out
        ]


def ms(value: datetime) -> int:
    return int((value - datetime(1970, 1, 1)) // timedelta(milliseconds=1))


# -- the cases ------------------------------------------------------------------------------


def test_anonymous_device_then_login_merges():
    rows, state = merges([(None, "d1", 900), (None, "d1", 900), ("u1", "d1", 100)])
    assert rows == [(900, 100)]
    assert state.merged["amplitude_id"].to_list() == [900]
    assert state.anonymous.height == 0  # 900 is merged: its device can never merge it again


def test_new_user_on_an_anonymous_device_keeps_the_anonymous_id():
    # The first event with the user carries the device's anonymous ID: it becomes the original.
    rows, state = merges([(None, "d1", 900), ("u1", "d1", 900)])
    assert rows == []
    assert state.original.rows() == [("u1", 900)]


def test_anonymous_events_after_login_with_the_users_id_merge_nothing():
    rows, _ = merges([("u1", "d1", 100), (None, "d1", 100), (None, "d1", 100), ("u1", "d1", 100)])
    assert rows == []


def test_same_user_with_a_second_id_merges_it():
    rows, _ = merges([("u1", "d1", 100), ("u1", "d2", 200), ("u1", "d2", 200)])
    assert rows == [(200, 100)]


def test_login_event_carrying_the_anonymous_id_emits_once():
    rows, _ = merges([("u1", "d0", 100), (None, "d1", 900), ("u1", "d1", 900)])
    assert rows == [(900, 100)]  # step 2 emits it; step 3 sees it merged


def test_already_merged_anonymous_id_seen_again_with_another_user_merges_nothing():
    rows, _ = merges([
        (None, "d1", 900), ("u1", "d1", 100),  # 900 -> 100
        (None, "d1", 900),  # 900 is not identified: anonymous[d1] = 900 again
        ("u2", "d1", 200),  # already merged: nothing
        ("u2", "d1", 900),  # step 3: already merged: nothing
    ])
    assert rows == [(900, 100)]


def test_identified_anonymous_id_is_not_merged_by_step_2():
    rows, _ = merges([(None, "d1", 900), ("u9", "d9", 900), ("u1", "d1", 100)])
    assert rows == []  # 900 became identified (u9's original) before u1 logged in on d1


def test_null_device_id_takes_no_part_in_step_2():
    rows, state = merges([(None, None, 900), ("u1", None, 100), ("u1", None, 300)])
    assert rows == [(300, 100)]
    assert state.anonymous.height == 0


def test_null_amplitude_id_is_skipped():
    rows, _ = merges([(None, "d1", None), ("u1", "d1", 100), (None, "d1", 900), ("u1", "d1", None), ("u1", "d1", 100)])
    assert rows == [(900, 100)]


def test_chains_across_hours_use_the_carried_state():
    _, after_1 = merges([("u1", "d1", 100)])
    _, after_2 = merges([(None, "d2", 900)], after_1)  # an anonymous install, hours later
    rows, after_3 = merges([("u1", "d2", 100)], after_2)  # ... logs in as u1
    assert rows == [(900, 100)]
    rows, after_4 = merges([("u1", "d3", 300), ("u1", "d2", 900)], after_3)
    assert rows == [(300, 100)]  # 900 was merged two hours ago
    assert after_4.original.rows() == [("u1", 100)]
    assert sorted(after_4.merged["amplitude_id"]) == [300, 900]


def equal(a: IdentityState, b: IdentityState) -> bool:
    return all(getattr(a, k).equals(getattr(b, k)) for k in ("original", "identified", "anonymous", "merged"))


def test_state_round_trips_as_a_snapshot_and_as_deltas():
    _, s1 = merges([(None, "d1", 900), (None, "d2", 901), ("u1", "d1", 100), ("u2", "d3", 200), ("u2", "d4", 201)])
    assert s1.sizes() == {"original": 2, "identified": 3, "anonymous": 1, "merged": 2}
    assert equal(IdentityState.from_frame(s1.to_frame()), s1)
    # Hour 2 replaces d2's anonymous ID, and hour 3 merges it away (so d2 leaves the state).
    _, s2 = merges([(None, "d2", 902), ("u3", "d5", 300)], s1)
    _, s3 = merges([("u1", "d2", 100)], s2)
    assert dict(s2.anonymous.rows()) == {"d2": 902} and s3.anonymous.height == 0
    stored = [encode_state(s1, None), encode_state(s2, s1), encode_state(s3, s2)]
    assert [stored_kind(f) for f in stored] == ["snapshot", "delta", "delta"]
    assert stored[2].height < stored[0].height  # a delta holds only what changed
    assert equal(decode_state(stored[:2]), s2)
    assert equal(decode_state(stored), s3)
    with pytest.raises(ValueError):
        decode_state(stored[1:])


def test_rows_are_ordered_by_server_time_then_emission_and_floored_to_ms():
    events = [
        (None, "d1", 900, 10.0),
        (None, "d2", 901, 11.0),
        ("u2", "d2", 200, 30.0),  # uploaded last, listed first below
        ("u1", "d1", 100, 20.0009),  # emits 900 -> 100 (step 2) then 300 below (step 3)
    ]
    events[3] = ("u1", "d1", 300, 20.0009)
    events.insert(0, ("u1", "d0", 100, 1.0))
    rows, _ = derive_merges(frame(events), IdentityState.empty(), SCOPE)
    assert rows.columns == list(MERGED_ID_FIELDS)
    assert rows.dtypes == [pl.Int64] * 5
    got = rows.rows()
    assert [(r[3], r[4]) for r in got] == [(900, 100), (300, 100), (901, 200)]
    base = ms(T0)
    assert got[0][2] == got[1][2] == base + 20000  # 20.0009 s: the fraction of a ms is dropped
    assert got[0][1] == base + 15000
    assert all(r[0] == SCOPE for r in got)


def test_source_order_breaks_ties_in_server_upload_time():
    rows, _ = merges([(None, "d1", 900, 5.0), ("u1", "d1", 100, 5.0), ("u2", "d1", 200, 5.0)])
    assert rows == [(900, 100)]
    rows, _ = merges([("u2", "d1", 200, 5.0), (None, "d1", 900, 5.0), ("u1", "d1", 100, 5.0)])
    assert rows == [(900, 100)]


def test_unsorted_upload_times_are_taken_in_time_order():
    rows, _ = merges([("u1", "d1", 100, 30.0), (None, "d1", 900, 10.0)])
    assert rows == [(900, 100)]


def test_empty_hour():
    rows, state = derive_merges(frame([]), IdentityState.empty(), SCOPE)
    assert rows.height == 0 and rows.columns == list(MERGED_ID_FIELDS)
    assert state.sizes() == {"original": 0, "identified": 0, "anonymous": 0, "merged": 0}


def test_null_event_time_takes_the_server_time():
    rows, _ = derive_merges(
        frame([(None, "d1", 900, 1.0), ("u1", "d1", 100, 2.0, None)]), IdentityState.empty(), SCOPE
    )
    assert rows["merge_time"].to_list() == rows["merge_server_time"].to_list()


@pytest.mark.parametrize("seed", range(40))
def test_matches_the_sequential_rule_over_many_hours(seed):
    """Random hours over small ID spaces (so every branch fires) agree with the rule, row for row."""
    rng = random.Random(seed)
    oracle, state = Oracle(), IdentityState.empty()
    users = [f"u{i}" for i in range(rng.randint(2, 8))]
    devices = [f"d{i}" for i in range(rng.randint(2, 10))] + [None]
    ids = list(range(100, 100 + rng.randint(4, 25))) + [None]
    total, stored, previous = 0, [], None
    for hour_number in range(6):
        events = [
            (rng.choice(users) if rng.random() < 0.5 else None, rng.choice(devices), rng.choice(ids),
             float(rng.randint(0, 40)))
            for _ in range(rng.randint(0, 60))
        ]
        hour = frame(events)
        rows, state = derive_merges(hour, state, SCOPE)
        assert rows.rows() == oracle.hour(hour)
        total += rows.height
        # The carried state is the rule's, less the anonymous entries that can never merge.
        assert dict(state.original.rows()) == oracle.original
        assert set(state.identified["amplitude_id"]) == oracle.identified
        assert set(state.merged["amplitude_id"]) == oracle.merged
        live = {d: a for d, a in oracle.anonymous.items() if a not in oracle.identified | oracle.merged}
        assert dict(state.anonymous.rows()) == live
        # As stored: a snapshot every third hour, deltas between; read back through the chain.
        stored.append(encode_state(state, None if hour_number % 3 == 0 else previous))
        snapshot = max(i for i, f in enumerate(stored) if stored_kind(f) == "snapshot")
        state = decode_state(stored[snapshot:])
        previous = state
    assert total > 0  # the hours did merge IDs


def test_the_synthetic_source_merges_anonymous_installs_that_log_in():
    from datetime import timezone

    from amplitude_assets.sources.synthetic import SyntheticSource
    from amplitude_assets.shaping import process_hour

    source = SyntheticSource("187520", 300, 0)
    oracle, state = Oracle(), IdentityState.empty()
    start = datetime(2020, 1, 25, tzinfo=timezone.utc)
    per_hour = []
    for k in range(12):
        hour = start + timedelta(hours=k)
        identities = process_hour(source.iter_lines(hour), hour).identities
        rows, state = derive_merges(identities, state, SCOPE)
        assert rows.rows() == oracle.hour(identities)
        per_hour.append(rows.height)
    assert all(n > 0 for n in per_hour[6:])  # merges keep coming, not only at the start of history
    assert oracle.steps.count(2) > 20  # anonymous installs that log in (step 2)
    assert oracle.steps.count(3) > 0  # logged-in events that carry another ID (step 3)
