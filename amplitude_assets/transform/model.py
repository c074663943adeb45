"""What a shaped hour hands on: its counts, its repairs, and the hour itself (`HourResult`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

import polars as pl

from amplitude_assets.partitions import reconciles

IDENTITY_COLUMNS = ("user_id", "device_id", "amplitude_id", "event_time", "server_upload_time")


@dataclass(frozen=True)
class Counts:
    source_rows: int = 0
    exported: int = 0
    duplicates: int = 0
    filtered: int = 0
    rejected: int = 0
    repaired: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def reconciles(self) -> bool:
        return reconciles(asdict(self))


# One line per repaired value: the row's (normalized) uuid and $insert_id, the field, and
# the value as it was sent, as JSON text.
REPAIR_SCHEMA = {"uuid": pl.String, "$insert_id": pl.String, "field": pl.String, "value": pl.String}


def no_repairs() -> pl.DataFrame:
    return pl.DataFrame(schema=REPAIR_SCHEMA)


@dataclass
class HourResult:
    """One hour, shaped and counted, ready for the writer."""

    hour: datetime
    frame: pl.DataFrame  # exported rows: the 49 fields typed, then extra fields as JSON text
    rejects: pl.DataFrame  # columns `reason`, `line` (verbatim; see NOT_UTF8)
    identities: pl.DataFrame  # IDENTITY_COLUMNS of deduplicated rows before the filter
    counts: Counts
    repairs: pl.DataFrame = field(default_factory=no_repairs)  # REPAIR_SCHEMA, one row per repair
    lines: pl.Series | None = None  # the exported lines, as written (`process_hour`)
