"""A line's position in the hour (0, 1, ...), and back to its file and line number.

The unique check keeps one 32-bit position per key instead of the file's name and the
line's number; a repeat found is located again from the batches' starts.
"""

from __future__ import annotations

import bisect

from amplitude_assets.checks.blobs import Batch


class Positions:
    """Maps a line's position in the hour (0, 1, ...) back to its file and line number."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.batches: list[tuple[str, int]] = []
        self.total = 0

    def add(self, batch: Batch) -> int:
        """Record a batch; returns the hour position of its first line."""
        start = self.total
        self.starts.append(start)
        self.batches.append((batch.file, batch.first_line))
        self.total += len(batch.lines)
        return start

    def locate(self, position: int) -> tuple[str, int]:
        i = bisect.bisect_right(self.starts, position) - 1
        name, first = self.batches[i]
        return name, first + position - self.starts[i]
