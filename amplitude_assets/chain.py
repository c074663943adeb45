"""The merged-ID chain: each hour must start from the identity state the hour before left.

Every merged-IDs marker records the md5 of the state its hour started from
(`previous_state`, null where the identity history starts) and of the state it left
(`state`); the marker blob carries the same two digests as blob metadata, so one listing
with metadata tells them for a whole day. An hour is stale when the hour before is
exported and its `state` is not this hour's `previous_state`, whatever caused it: the
hour before was re-exported, or exported for the first time after this hour, or this
hour's history started although the hour before exists. Every later hour derived from a
stale hour is stale too. The links and the rules are in `destination/links.py`.

The `chain` check on `merged_ids` reports it per hour (and for the hour after the step, which a
new state of the step's last hour can make stale); `hourly_export_sensor` re-exports stale hours.
"""

from dataclasses import dataclass
from datetime import datetime

import dagster as dg
from azure.storage.blob import ContainerClient

from amplitude_assets.destination.credentials import AzureStorage
from amplitude_assets.destination.links import HOUR, NO_STATE, link_problem, read_link
from amplitude_assets.layout import MergedIdsLayout
from amplitude_assets.partitions import RANGE_START, parse_hour
from amplitude_assets.partitions import partition_key as hour_key
from amplitude_assets.settings import Settings


@dataclass(frozen=True)
class Outcome:
    passed: bool
    description: str
    facts: dict

    def metadata(self) -> dict:
        return dict(self.facts)


def chain_outcome(client: ContainerClient, layout: MergedIdsLayout, hour: datetime) -> Outcome:
    """The `chain` check of one exported hour, from its marker and the hour before's."""
    link = read_link(client, layout, hour)
    if link is None:
        return Outcome(False, f"the hour's marker {layout.marker(hour)} is missing", {})
    before = read_link(client, layout, hour - HOUR)
    facts = {"state_md5": link.state, "previous_state_md5": link.previous or NO_STATE,
             "hour_before_state_md5": before.state if before else NO_STATE}
    problem = link_problem(hour, link, before)
    if problem:
        return Outcome(False, f"stale: {problem}", {**facts, "stale": True})
    if before is None and link.previous is not None:
        return Outcome(False, f"the hour before ({hour_key(hour - HOUR)}) is not exported, but this hour was "
                              f"derived from its state (md5 {link.previous}): export merged_ids for "
                              f"{hour_key(hour - HOUR)}, then re-export {hour_key(hour)}", facts)
    if link.previous is None:
        return Outcome(True, "the identity history starts at this hour", facts)
    return Outcome(True, f"follows on from {hour_key(hour - HOUR)} (state md5 {link.previous})", facts)


def build_chain_check(settings: Settings, partitions: dg.PartitionsDefinition) -> dg.AssetChecksDefinition:
    layout = MergedIdsLayout(settings.merged_ids_prefix, settings.merged_ids_scope)
    container = settings.merged_ids_container
    asset_key = dg.AssetKey("merged_ids")

    @dg.asset_check(asset="merged_ids", name="chain", partitions_def=partitions,
                    description="Each hour starts from the identity state the hour before left (its marker's "
                                "previous_state md5 is the hour before's state md5). A stale hour names the "
                                "hours to re-export; the hour after the run's hours is checked too.")
    def merged_ids_chain(context: dg.AssetCheckExecutionContext, storage: AzureStorage) -> dg.AssetCheckResult:
        client = storage.container(container)
        keys = list(context.partition_keys)
        outcomes: dict[str, Outcome] = {}
        for key in keys:
            outcomes[key] = _checked(storage, lambda: chain_outcome(client, layout, parse_hour(key)))
        # A new state of the last hour can make the hour after it stale: say so on that hour too.
        after = parse_hour(keys[-1]) + HOUR
        extra: dict[str, Outcome] = {}
        if client.get_blob_client(layout.marker(after)).exists():
            extra[hour_key(after)] = _checked(storage, lambda: chain_outcome(client, layout, after))
        for key, outcome in {**outcomes, **extra}.items():
            (context.log.info if outcome.passed else context.log.warning)(f"merged_ids chain {key}: {outcome.description}")
        # A run of one partition records the result below with its partition; a range run (even
        # of one hour, as the sensor's) records it without one, so each hour is logged on its own.
        single = len(keys) == 1 and RANGE_START not in context.run.tags
        logged = extra if single else {**outcomes, **extra}
        for key, outcome in logged.items():
            context.op_execution_context.log_event(dg.AssetCheckEvaluation(
                asset_key=asset_key, check_name="chain", passed=outcome.passed, metadata=outcome.metadata(),
                description=outcome.description, partition=key,
            ))
        if single:
            outcome = outcomes[keys[0]]
            return dg.AssetCheckResult(passed=outcome.passed, metadata=outcome.metadata(), description=outcome.description)
        failed = [k for k, o in outcomes.items() if not o.passed]
        return dg.AssetCheckResult(
            passed=not failed,
            description=f"{len(keys) - len(failed)} of {len(keys)} hours follow on from the hour before"
            + (f"; stale: {', '.join(failed[:10])}" if failed else ""),
            metadata={"hours_checked": len(keys), "hours_failed": dg.MetadataValue.json(failed),
                      "first_hour": keys[0], "last_hour": keys[-1]},
        )

    return merged_ids_chain


def _checked(storage: AzureStorage, run) -> Outcome:
    try:
        return run()
    except Exception as exc:  # the container could not be read: the hour fails, saying why
        return Outcome(False, "could not read the container: " + storage.redact(f"{type(exc).__name__}: {exc}"), {})
