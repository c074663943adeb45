"""The one adapter onto Dagster's private backfill API: it fails here when Dagster renames what it needs."""

from __future__ import annotations

import dagster as dg

from amplitude_assets import backfills
from tests.helpers import backfill_classes


def test_the_private_names_the_adapter_needs_exist():
    assert {s.value for s in backfills.IN_PROGRESS} == {"REQUESTED", "CANCELING", "FAILING"}
    filters = backfills.BulkActionsFilter(statuses=backfills.IN_PROGRESS)
    assert list(filters.statuses) == backfills.IN_PROGRESS
    PartitionBackfill, AssetBackfillData = backfill_classes()
    assert "asset_backfill_data" in PartitionBackfill._fields
    assert callable(AssetBackfillData.get_targeted_partitions_without_materialization_status)


def test_an_instance_without_backfills_has_no_busy_hours(instance):
    assert backfills.hours_in_backfills(instance, {dg.AssetKey("events")}) == set()
