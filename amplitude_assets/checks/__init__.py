"""Per-hour asset checks. They read what is in the container, not the in-memory frame.

events:     schema (blocking), unique, complete (blocking)
merged_ids: schema (blocking), unique

Each asset's checks are one step (`multi_asset_check`) that reads each hour once:
one listing and the marker serve `complete`, and one streamed read of the parts serves
`schema` and `unique`. The parts are downloaded and decompressed in bounded batches
(BATCH_BYTES of text) while DuckDB scans the batch before, so the working set does not
grow with the hour; `unique` keeps only compact keys across the hour (a uuid's 128 bits,
a 128-bit hash of an `($insert_id, device_id)` pair, and each key's line position).

A batch is first scanned for a yes/no per line (keys in order, JSON types, patterns):
that is three DuckDB JSON functions per line. Only the lines that fail are looked at
again, to say exactly what is wrong with them.

Every check has `partitions_def`, so it runs for the hours of its run only and never
loads the asset through the IO manager. In a range run Dagster records a partitioned
check's result once, without a partition; so each hour's own result is also logged as an
`AssetCheckEvaluation` with `partition` set, and the step's result summarizes the range.

One module a job:
- `outcome`: an hour's `Outcome`, the `Found` problems of one kind, how a problem reads;
- `blobs`: listings, small blobs, and parts streamed and decompressed a `Batch` at a time;
- `positions`: a line's position in the hour, and back to its file and line;
- `problems`: what is wrong with a line that failed the scan (keys, types, fixed values);
- `repeats`: the unique check's compact keys, and the keys that repeat;
- `scan`: one threaded read of an hour's files for the schema and unique checks;
- `hour`: an hour's checks, from the marker, its validation record, or a read of the parts;
- `specs`: the Dagster check specs, the multi-asset checks and their results.
"""

from amplitude_assets.checks.blobs import (
    BATCH_BYTES,
    Batch,
    BlobReader,
    fetch_lines,
    file_batches,
    iter_batches,
    list_blobs,
    read_blob,
)
from amplitude_assets.checks.hour import (
    CHANGED_NOTE,
    complete_outcome,
    events_hour_outcomes,
    merged_ids_hour_outcomes,
    validated_outcomes,
)
from amplitude_assets.checks.outcome import MAX_REPORTED, Found, Outcome, describe
from amplitude_assets.checks.positions import Positions
from amplitude_assets.checks.problems import EXTRAS_NOTE, OLD_ORDER_NOTE, SchemaProblems, json_columns
from amplitude_assets.checks.repeats import HourKeys, Repeats, compact_keys, find_repeats
from amplitude_assets.checks.scan import LinesScan, scan_files
from amplitude_assets.checks.specs import (
    READ_BACK_CONFIG,
    CheckConfig,
    build_events_checks,
    build_merged_ids_checks,
    evaluate_hours,
    hourly_checks,
)
from amplitude_assets.validation import EVENT_RULES, LineRules

__all__ = [
    "BATCH_BYTES", "CHANGED_NOTE", "EVENT_RULES", "EXTRAS_NOTE", "MAX_REPORTED", "OLD_ORDER_NOTE",
    "READ_BACK_CONFIG", "Batch", "BlobReader", "CheckConfig", "Found", "HourKeys", "LineRules", "LinesScan",
    "Outcome", "Positions", "Repeats", "SchemaProblems", "build_events_checks", "build_merged_ids_checks",
    "compact_keys", "complete_outcome", "describe", "evaluate_hours", "events_hour_outcomes", "fetch_lines",
    "file_batches", "find_repeats", "hourly_checks", "iter_batches", "json_columns", "list_blobs",
    "merged_ids_hour_outcomes", "read_blob", "scan_files", "validated_outcomes",
]
