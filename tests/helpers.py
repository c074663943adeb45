"""Helpers shared by the tests: build the definitions for an environment, run partitions."""

from __future__ import annotations

import gzip
import json
import os

import dagster as dg

from amplitude_assets.definitions import build_definitions
from amplitude_assets.settings import Settings

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def definitions(**env: str) -> dg.Definitions:
    """The code location as it loads with the current environment plus `env`."""
    for key, value in env.items():
        os.environ[key] = value
    return build_definitions(Settings.from_env())


def materialize(defs: dg.Definitions, selection: list[str], *, partition: str | None = None,
                start: str | None = None, end: str | None = None, instance=None, raise_on_error=True):
    """Run `selection` for one partition, or for an inclusive range as Dagster's range runs do."""
    job = defs.resolve_implicit_global_asset_job_def()
    tags = {RANGE_START: start, RANGE_END: end} if start else None
    return job.execute_in_process(
        instance=instance or dg.DagsterInstance.ephemeral(),
        partition_key=partition,
        tags=tags,
        asset_selection=[dg.AssetKey(k) for k in selection],
        raise_on_error=raise_on_error,
    )


def part_slices(height: int, max_rows: int) -> list[tuple[int, int]]:
    """(offset, length) of each part of a whole hour: at most `max_rows` rows, no empty part.

    With `whole_hour` (tests/reference.py), `encode_lines` and `gzip_bytes`, the whole-hour reference the
    chunked export is compared with, byte for byte."""
    return [(offset, min(max_rows, height - offset)) for offset in range(0, height, max_rows)]


def lines_of(gz: bytes) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(gz).decode().splitlines()]


def keys_in_order(line: str) -> list[str]:
    return list(json.loads(line, object_pairs_hook=lambda pairs: dict(pairs)).keys())
