"""`FirstWins`, the streaming export's dedup, against `transform.dedup` on the whole hour."""

from __future__ import annotations

import random

import polars as pl
import pytest

from amplitude_assets.shaping import FirstWins
from tests.reference import dedup


def keys_frame(n: int, seed: int) -> pl.DataFrame:
    rnd = random.Random(seed)
    # Few distinct values, so repeats fall within and across chunks; uuids that share
    # their first 64 bits but differ after them; nulls in every column.
    highs = ["0123abcd-0000-4000-8000", "0123abcd-0000-4000-8001", "ffffffff-ffff-4fff-bfff"]
    uuids = [None if rnd.random() < 0.1 else f"{rnd.choice(highs)}-{rnd.randrange(40):012x}" for _ in range(n)]
    inserts = [None if rnd.random() < 0.1 else rnd.choice(["a", "b", "1:a", "ab", ""]) for _ in range(n)]
    devices = [None if rnd.random() < 0.1 else rnd.choice(["b", "", "a", ":b", "d"]) for _ in range(n)]
    return pl.DataFrame({"uuid": uuids, "$insert_id": inserts, "device_id": devices, "row": list(range(n))})


@pytest.mark.parametrize("seed", range(8))
def test_chunk_by_chunk_keeps_exactly_the_rows_the_whole_hour_dedup_keeps(seed):
    frame = keys_frame(3000, seed)
    want = dedup(frame)["row"].to_list()
    rnd = random.Random(100 + seed)
    wins, kept, start = FirstWins(), [], 0
    while start < frame.height:
        size = rnd.choice([1, 7, 50, 400])
        chunk = frame.slice(start, size)
        kept.extend(chunk.filter(wins(chunk.select("uuid", "$insert_id", "device_id")))["row"].to_list())
        start += size
    assert kept == want
    assert len(want) < frame.height  # the input has repeats to drop


def test_pairs_are_compared_whole_not_by_their_joined_text():
    # ("1:a", "b") and ("1", ":ab") both read "1:ab" when joined; they are different pairs.
    frame = pl.DataFrame(
        {"uuid": [None, None], "$insert_id": ["1:a", "1"], "device_id": ["b", ":ab"]},
        schema={"uuid": pl.String, "$insert_id": pl.String, "device_id": pl.String},
    )
    wins = FirstWins()
    assert wins(frame.slice(0, 1)).to_list() == [True]
    assert wins(frame.slice(1, 1)).to_list() == [True]
