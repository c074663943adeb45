"""The hours that in-progress backfills still have to materialize.

The sensor must not start a run for an hour that a backfill will export, or both would
derive the same hour's merged IDs at once (and one of them fail on the chain). Dagster has
no public API for a backfill's target: `DagsterInstance.get_backfills` is public, but its
filter (`BulkActionsFilter`, `BulkActionStatus`) and the backfill's `asset_backfill_data`
live in `dagster._core.execution.backfill`. This module is the one place that uses them;
`tests/test_backfills.py` fails when Dagster renames them.
"""

from __future__ import annotations

import dagster as dg
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus

# A backfill in these states may still launch runs.
IN_PROGRESS = [BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING, BulkActionStatus.FAILING]


def hours_in_backfills(instance: dg.DagsterInstance, assets: set[dg.AssetKey]) -> set[str]:
    """Partition keys of `assets` that an in-progress asset backfill targets and has not settled yet
    (neither materialized nor failed)."""
    busy: set[str] = set()
    for backfill in instance.get_backfills(filters=BulkActionsFilter(statuses=IN_PROGRESS)):
        data = backfill.asset_backfill_data
        if data is None:  # a job backfill, or one stored in an older format: its runs show in the run list
            continue
        pending = data.get_targeted_partitions_without_materialization_status()
        for key, subset in pending.partitions_subsets_by_asset_key.items():
            if key in assets:
                busy |= set(subset.get_partition_keys())
    return busy
