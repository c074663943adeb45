"""What the assets return: each asset's hours of a step, lazily, for its IO manager to write.

Dagster gives an IO manager one output per step, even when a run covers many hours, so
both assets return a lazy sequence of hours and their IO managers write one hour at a
time. These are the shaping layer's hand-off to the destination: they name what is
shaped (`shaping.ShapedHour`, `identity.MergedHour`), never how it is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from amplitude_assets.identity import MergedHour
from amplitude_assets.shaping import ShapedHour


@dataclass
class HourStream:
    """The `events` asset's output: each hour of the step as a `ShapedHour`, its exported rows
    as Polars frames a chunk at a time. Nothing is read until the IO manager writes the hour."""

    hours: list[datetime]
    shaped: Callable[[datetime], ShapedHour]  # the hour's shaped rows, made lazily
    source: str


@dataclass
class MergedIdsStream:
    """The `merged_ids` asset's output: each hour of the step as a `MergedHour`, oldest first.

    `derived` is lazy: an hour is derived from the state the hour before left only when the
    IO manager asks for it, after the hour before was written; a failed hour ends the step.
    """

    hours: list[datetime]
    derived: Iterable[MergedHour]
    source: str
