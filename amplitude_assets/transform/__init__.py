"""The stages of shaping events: read -> parse -> reject -> normalize (dedup and the filter are in `shaping.py`).

Every source hands these stages the same thing: the hour's JSON lines, in source order.
The result is the normalized frame of exported rows (the 49 fields, typed, then any
extra fields as JSON text), the rejected lines kept verbatim with a reason, the original
of every repaired value, the identity columns that `merged_ids` needs, and the counts
that reconcile:

    source_rows = exported + duplicates + filtered + rejected

One module a stage:
- `reading`: an hour's bytes as one column of lines;
- `parsing`: JSON lines into text columns (DuckDB), and the lines that are not JSON objects;
- `reject`: rows whose server_upload_time is outside the hour;
- `normalizing`: every field to its contract type, and the record of each repair;
- `sent`: a value's JSON text exactly as it stands in its line;
- `columns`: the hidden columns a parsed frame carries beside the fields;
- `model`: the counts, the repairs' schema and `HourResult`.
"""

from amplitude_assets import duck
from amplitude_assets.transform.columns import (
    CANON,
    ENCODED,
    EXTRA,
    KEY_SEPARATOR,
    KEYHASH,
    LINE,
    NO_DICTS,
    POS,
    RESERVED,
    SORTED,
    TYPED,
)
from amplitude_assets.transform.model import (
    IDENTITY_COLUMNS,
    REPAIR_SCHEMA,
    Counts,
    HourResult,
    no_repairs,
)
from amplitude_assets.transform.normalizing import (
    normalize,
    normalize_expr,
    normalize_with_repairs,
    parse_timestamp,
    restore_dicts,
)
from amplitude_assets.transform.parsing import (
    _scan,
    extract_json,
    json_fields,
    parse,
    side_by_side,
    sorted_keys_hashes,
)
from amplitude_assets.transform.reading import BOM, NOT_UTF8, NUL_TEXT, read_lines
from amplitude_assets.transform.reject import reject_outside_hour
from amplitude_assets.transform.sent import raw_json_value, sent_json

__all__ = [
    "BOM", "CANON", "ENCODED", "EXTRA", "IDENTITY_COLUMNS", "KEYHASH", "KEY_SEPARATOR", "LINE", "NOT_UTF8",
    "NO_DICTS", "NUL_TEXT", "POS", "REPAIR_SCHEMA", "RESERVED", "SORTED", "TYPED", "Counts",
    "HourResult", "_scan", "duck", "extract_json", "json_fields", "no_repairs", "normalize",
    "normalize_expr", "normalize_with_repairs", "parse", "parse_timestamp", "raw_json_value",
    "read_lines", "reject_outside_hour", "restore_dicts", "sent_json", "side_by_side",
    "sorted_keys_hashes",
]
