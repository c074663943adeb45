"""The `dagster` contender: Dagster's overhead on a week of small hours, materialized as 7
range runs of 24 hours (the default backfill policy) or as 168 runs of one hour."""

from __future__ import annotations

import os
import time
from datetime import timedelta

from bench.worker_io import peak_rss


def _environment(config: dict) -> None:
    """The settings the project's definitions read, before they are imported."""
    os.environ.update({
        "AMPLITUDE_START": config["start"],
        "AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR": str(config["events_per_hour"]),
        "AZURE_STORAGE_CONNECTION_STRING": config["connection_string"],
        "AZURE_EVENTS_CONTAINER": config["container"],
        "AZURE_CREATE_CONTAINERS": "true",
        "AMPLITUDE_EXPORT_DELAY_MINUTES": "0",
    })


def _materialize_all(defs, selection: list[str], keys: list[str], config: dict, instance) -> int:
    """Every hour of `keys`, batched `hours_per_run` a run or one a run; returns the runs."""
    from tests.helpers import materialize

    per_run = config["hours_per_run"]
    runs = 0
    if config["mode"] == "batched":
        for i in range(0, len(keys), per_run):
            batch = keys[i : i + per_run]
            result = materialize(defs, selection, start=batch[0], end=batch[-1], instance=instance)
            assert result.success
            runs += 1
    else:
        for key in keys:
            result = materialize(defs, selection, partition=key, instance=instance)
            assert result.success
            runs += 1
    return runs


def dagster(config: dict) -> dict:
    """A week of small hours: 7 range runs of 24 hours (the default backfill policy) vs 168 runs."""
    _environment(config)
    import dagster as dg

    from amplitude_assets.partitions import parse_hour, partition_key
    from tests.helpers import definitions

    defs = definitions()
    selection = [key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()]
    first = parse_hour(config["start"])
    hours = [first + timedelta(hours=i) for i in range(config["hours"])]
    keys = [partition_key(h) for h in hours]
    instance = dg.DagsterInstance.ephemeral()
    started = time.perf_counter()
    runs = _materialize_all(defs, selection, keys, config, instance)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds, "runs": runs, "hours": len(keys), "per_hour_seconds": seconds / len(keys),
        "events_per_hour": config["events_per_hour"], "assets": selection, "peak_rss": peak_rss(),
    }
