"""Dedup decided chunk by chunk, first row wins: `FirstWins`, and the keys it has seen (`SeenKeys`).

`shaping.ShapedHour` asks it, for each chunk in source order, which rows are the first of
their keys in the hour; the keys of the chunks before are held compactly, so memory grows
by 32 bytes an event whatever the ids' lengths.
"""

from __future__ import annotations

import polars as pl


class FirstWins:
    """Dedup decided one chunk at a time in source order: the first row wins.

    A row is kept when its uuid is null or unseen, then when its ($insert_id,
    device_id), both non-null, is unseen among the rows kept by uuid. Each chunk is
    checked against the keys of the chunks before it, held in `SeenKeys`: a uuid as its
    128 bits, a pair as two 64-bit hashes of its exact text (within a chunk, pairs are
    compared whole). So the keys take 32 bytes an event, whatever the ids' lengths.
    """

    def __init__(self) -> None:
        self.uuids = SeenKeys()
        self.pairs = SeenKeys()

    def __call__(self, keys: pl.DataFrame) -> pl.Series:
        """The chunk's mask: True for a row that is the first of its keys in the hour."""
        uuid = keys["uuid"]
        first = (uuid.is_null() | uuid.is_first_distinct()).fill_null(True)
        rows = (first & uuid.is_not_null()).arg_true()
        digits = uuid.gather(rows).str.replace_all("-", "", literal=True)  # canonical: 32 hex digits
        high = digits.str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64)
        low = digits.str.slice(16, 16).str.to_integer(base=16, dtype=pl.UInt64)
        first = first.scatter(rows.filter(self.uuids.check(high, low)), False)

        both = first & keys["$insert_id"].is_not_null() & keys["device_id"].is_not_null()
        rows = both.arg_true()
        # One exact string per pair: the first part's length, then both parts.
        pair = keys.select(
            pl.concat_str(pl.col("$insert_id").str.len_bytes().cast(pl.String), pl.lit(":"), "$insert_id", "device_id")
        ).to_series().gather(rows)
        repeated = ~pair.is_first_distinct()
        fresh = (~repeated).arg_true()
        fresh_pairs = pair.gather(fresh)
        # Across chunks a pair is kept as 128 bits of hash (two seeds): 16 bytes an event
        # instead of its text, and a false match between two of an hour's millions of
        # pairs has odds of about 2^-80.
        seen = self.pairs.check(fresh_pairs.hash(seed=0), fresh_pairs.hash(seed=1))
        repeated = repeated.scatter(fresh.filter(seen), True)
        return first.scatter(rows.filter(repeated), False).rename("unique")


class SeenKeys:
    """A set of keys, each a 64-bit `high` part and the rest, in the order they came.

    A chunk's keys are looked up by probing every key seen so far against a hash of
    the chunk's `high` parts (one pass over the hour's integers, which is cheaper than
    hashing the hour's keys each time); the few matches are then compared whole.
    """

    def __init__(self) -> None:
        self.high = pl.Series("high", [], dtype=pl.UInt64)
        self.rest: pl.Series | None = None

    def check(self, high: pl.Series, rest: pl.Series) -> pl.Series:
        """Which keys were seen before; records the others (distinct, as given)."""
        seen = pl.zeros(len(high), pl.Boolean, eager=True)
        if len(self.high) and len(high):
            matches = self.high.is_in(high.implode()).arg_true()
            if len(matches):
                known = pl.struct(self.high.gather(matches).alias("h"), self.rest.gather(matches).alias("r"), eager=True)
                seen = pl.struct(high.alias("h"), rest.alias("r"), eager=True).is_in(known.implode())
        self.high = self.high.append(high.filter(~seen).rename("high"))
        fresh = rest.filter(~seen).rename("rest")
        self.rest = fresh if self.rest is None else self.rest.append(fresh)
        return seen

