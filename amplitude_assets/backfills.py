"""The hours that in-progress backfills still have to materialize.

The sensor must not start a run for an hour that a backfill will export, or both would
derive the same hour's merged IDs at once (and one of them fail on the chain). Dagster has
no public API for a backfill's target, so the reading itself is in `private_apis`
(`unsettled_backfill_partitions`); `tests/test_backfills.py` fails when Dagster renames
what it needs.
"""

from __future__ import annotations

import dagster as dg

from amplitude_assets import private_apis

# A backfill in these states may still launch runs (Dagster's private BulkActionStatus).
IN_PROGRESS = private_apis.BACKFILL_IN_PROGRESS
BulkActionsFilter = private_apis.BulkActionsFilter  # for tests/test_backfills.py


def hours_in_backfills(instance: dg.DagsterInstance, assets: set[dg.AssetKey]) -> set[str]:
    """Partition keys of `assets` that an in-progress asset backfill targets and has not settled yet
    (neither materialized nor failed)."""
    return private_apis.unsettled_backfill_partitions(instance, assets)
