"""The unique check: keys that repeat across the hour, from compact keys kept batch by batch.

Across the hour only compact keys are kept: a uuid's 128 bits, a 128-bit hash of any
other key's text, and each key's line position. A repeat is told by its file and line;
the repeated lines alone are read again, to show the key's value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl
from azure.storage.blob import ContainerClient

from amplitude_assets.checks.blobs import fetch_lines
from amplitude_assets.checks.outcome import MAX_REPORTED, Found, short
from amplitude_assets.checks.positions import Positions
from amplitude_assets.schema import UUID_PATTERN


def _key_label(key: tuple[str, ...]) -> str:
    return key[0] if len(key) == 1 else "(" + ", ".join(key) + ")"


def compact_keys(frame: pl.DataFrame, key: tuple[str, ...], start: int) -> pl.DataFrame:
    """A batch's keys as two 64-bit halves and the line's hour position; rows with a null part left out.

    A canonical uuid is its own 128 bits; anything else is a 128-bit hash of its exact text
    (a uuid lowercased first), so two different keys collide with odds of about 2^-128.
    """
    present = pl.all_horizontal([pl.col(n).is_not_null() for n in key])
    if key == ("uuid",):
        text = pl.col("uuid").str.to_lowercase()
    elif len(key) == 1:
        text = pl.col(key[0])
    else:  # each part's length first, so ("ab", "c") and ("a", "bc") differ
        text = pl.concat_str([e for n in key for e in (pl.col(n).str.len_bytes().cast(pl.String), pl.lit(":"), pl.col(n))])
    keyed = frame.select(text.alias("text"), pl.int_range(start, start + frame.height, dtype=pl.UInt32).alias("pos"),
                         present.alias("present")).filter("present")
    hashed = (pl.col("text").hash(seed=1), pl.col("text").hash(seed=2))
    if key == ("uuid",):
        digits = pl.col("text").str.replace_all("-", "", literal=True)
        canonical = pl.col("text").str.contains(UUID_PATTERN)
        high = pl.when(canonical).then(digits.str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64, strict=False))
        low = pl.when(canonical).then(digits.str.slice(16, 16).str.to_integer(base=16, dtype=pl.UInt64, strict=False))
        hashed = (high.otherwise(hashed[0]), low.otherwise(hashed[1]))
    return keyed.select(hashed[0].alias("high"), hashed[1].alias("low"), "pos")


@dataclass
class Repeats:
    """A key's repeats across the hour: how many, and (position, first position) of the first few."""

    count: int
    first: list[tuple[int, int]]


def find_repeats(keys: list[pl.DataFrame]) -> Repeats:
    """Repeats of a key over the hour's compact keys (in hour order): the first row wins.

    Only keys whose first half repeats can repeat whole, so the 128-bit comparison runs
    on those few; the hour's keys are looked at as the batches left them, not copied.
    """
    if not keys:
        return Repeats(0, [])
    frame = pl.concat(keys, rechunk=False)
    candidates = frame.filter(pl.col("high").is_duplicated())
    if candidates.height == 0:
        return Repeats(0, [])
    first = pl.struct("high", "low").is_first_distinct()
    repeated = candidates.filter(~first)
    if repeated.height == 0:
        return Repeats(0, [])
    shown = repeated.head(MAX_REPORTED).join(
        candidates.filter(first), on=["high", "low"], how="left", suffix="_first", maintain_order="left"
    )
    return Repeats(repeated.height, list(zip(shown["pos"].to_list(), shown["pos_first"].to_list())))


def _key_value(text: str | None, key: tuple[str, ...]) -> str:
    try:
        row = json.loads(text)
        parts = [row.get(n) for n in key]
    except (TypeError, ValueError, AttributeError):
        return "?"
    parts = [p if isinstance(p, str) else json.dumps(p, ensure_ascii=False) for p in parts]
    return ", ".join(p.lower() if key == ("uuid",) else p for p in parts)


class HourKeys:
    """The compact keys of each of `unique` (a key: its fields), batch by batch, in hour order."""

    def __init__(self, unique: tuple[tuple[str, ...], ...]) -> None:
        self.unique = unique
        self.keys: dict[tuple[str, ...], list[pl.DataFrame]] = {key: [] for key in unique}

    def add(self, scanned: pl.DataFrame, start: int) -> None:
        """A scanned batch's key fields, its first line at hour position `start`."""
        for key in self.unique:
            self.keys[key].append(compact_keys(scanned, key, start))

    def found(self, client: ContainerClient, positions: Positions) -> list[Found]:
        """Each key's repeats, one `Found` a key; the keys are let go one key at a time."""
        repeats = {}
        for key in self.unique:
            repeats[key] = find_repeats(self.keys[key])
            self.keys[key].clear()
        wanted: dict[str, set[int]] = {}
        for r in repeats.values():
            for pair in r.first:
                for position in pair:
                    name, number = positions.locate(position)
                    wanted.setdefault(name, set()).add(number)
        texts = fetch_lines(client, wanted) if wanted else {}
        return [_repeat_problems(key, r, positions, texts) for key, r in repeats.items()]


def _repeat_problems(key: tuple[str, ...], repeats: Repeats, positions: Positions,
                     texts: dict[tuple[str, int], str]) -> Found:
    problems = []
    for position, first in repeats.first:
        (name, number), (first_name, first_number) = positions.locate(position), positions.locate(first)
        problems.append({"file": name, "line": number, "field": _key_label(key),
                         "value": short(_key_value(texts.get((name, number)), key)),
                         "problem": f"repeats {first_name} line {first_number}"})
    return Found(problems, repeats.count)
