"""What a failed run did not export, which step failed and why, read from the instance."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg

from amplitude_assets import private_apis
from amplitude_assets.partitions import PARTITION, RANGE_END, RANGE_START

ASSETS = (dg.AssetKey("events"), dg.AssetKey("merged_ids"))
# Runs refused on purpose are not failures to report. Their messages come from
# `assets.refuse_young_hours` and `merged_ids.wait_for_the_hour_before` (a run that waited its bound for the run exporting the hour before).
REFUSALS = (
    "is not exportable yet: it becomes exportable at",
    "is still exporting it",
)


@dataclass(frozen=True)
class Cause:
    step: str
    first_line: str
    refused: bool


def run_hours(run: dg.DagsterRun, partitions: dg.PartitionsDefinition) -> list[str]:
    """The hours a run covers, from Dagster's partition tags."""
    tags = run.tags
    if RANGE_START in tags and RANGE_END in tags:
        return list(partitions.get_partition_keys_in_range(dg.PartitionKeyRange(tags[RANGE_START], tags[RANGE_END])))
    return [tags[PARTITION]] if PARTITION in tags else []


def exported_assets(run: dg.DagsterRun) -> list[dg.AssetKey]:
    """The export assets a run selects (none for check_destination or a run of checks alone)."""
    if run.asset_selection is None:
        return list(ASSETS) if run.job_name == "__ASSET_JOB" else []
    return [a for a in ASSETS if a in run.asset_selection]


def failure_cause(instance: dg.DagsterInstance, run_id: str, run_message: str = "") -> Cause:
    """The first failed step and the first line of its cause; refused when every failure was a refusal."""
    failures = [r.dagster_event for r in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)]
    if not failures:
        return Cause(step="(run)", first_line=_first_line(run_message) or "the run failed", refused=False)
    texts = [private_apis.step_failure_text(event) for event in failures]
    refused = all(any(pattern in text for pattern in REFUSALS) for text in texts)
    return Cause(step=failures[0].step_key or "(run)", first_line=_first_line(texts[0]), refused=refused)


def not_exported(instance: dg.DagsterInstance, run: dg.DagsterRun, hours: list[str], assets: list[dg.AssetKey]) -> list[str]:
    """The run's hours that some selected asset did not materialize in this run."""
    done = set()
    for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = record.asset_materialization
        if materialization is not None:
            done.add((materialization.asset_key, materialization.partition))
    return [h for h in hours if any((a, h) not in done for a in assets)]


def reported_before(instance: dg.DagsterInstance, run: dg.DagsterRun, hours: list[str],
                    partitions: dg.PartitionsDefinition, now: datetime) -> bool:
    """Whether earlier failed runs of the last day, not refusals, covered all of `hours` (a retry failing again)."""
    this = instance.get_run_record_by_id(run.run_id)
    if not hours or this is None:
        return False
    covered: set[str] = set()
    for record in instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], updated_after=now - timedelta(days=1)), limit=500
    ):
        other = record.dagster_run
        if other.run_id == run.run_id or record.create_timestamp >= this.create_timestamp:
            continue
        overlap = set(run_hours(other, partitions)) & set(hours)
        if overlap and not failure_cause(instance, other.run_id).refused:
            covered |= overlap
    return set(hours) <= covered


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")[:500]
