"""Where the data comes in. Every source hands the transform the same thing: an hour's
JSON lines, in source order, as chunks of bytes that each end at a line boundary."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Protocol


class Source(Protocol):
    name: str

    def iter_lines(self, hour: datetime) -> Iterator[bytes]:
        """The hour's lines (bucketed by server_upload_time), in source order."""
        ...


# A source may also offer `prefetch(hours)`: a hint, before the first `iter_lines`, that a
# range run will read these hours, so it can fetch them in fewer requests (the Export API
# fetches non-overlapping multi-hour windows).
