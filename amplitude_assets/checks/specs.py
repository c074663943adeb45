"""The checks as Dagster sees them: each asset's check specs, one multi-asset check, and its results.

Every check has `partitions_def`, so it runs for the hours of its run only and never
loads the asset through the IO manager. In a range run Dagster records a partitioned
check's result once, without a partition; so each hour's own result is also logged as an
`AssetCheckEvaluation` with `partition` set, and the step's result summarizes the range.
"""

# No `from __future__ import annotations` here: Dagster reads the check function's
# parameter annotations (the resource and the config) as classes.

from collections.abc import Callable, Iterator
from datetime import datetime

import dagster as dg
from azure.storage.blob import ContainerClient

from amplitude_assets.checks.hour import events_hour_outcomes, merged_ids_hour_outcomes
from amplitude_assets.checks.outcome import Outcome, outcome_of
from amplitude_assets.destination.credentials import AzureStorage
from amplitude_assets.layout import EventsLayout, MergedIdsLayout
from amplitude_assets.partitions import RANGE_START, parse_hour
from amplitude_assets.schema import MERGED_ID_FIELDS, Kind
from amplitude_assets.validation import LineRules

READ_BACK_CONFIG = {"ops": {"events_checks": {"config": {"read_back": True}}}}


def evaluate_hours(
    context: dg.AssetCheckExecutionContext,
    asset: str,
    specs: list[dg.AssetCheckSpec],
    storage: AzureStorage,
    run: Callable[[datetime, set[str]], dict[str, Outcome]],
) -> Iterator[dg.AssetCheckResult]:
    """Run the selected checks for every hour of the step; one evaluation per check and hour, and a summary."""
    asset_key = dg.AssetKey(asset)
    selected = {k.name for k in context.selected_asset_check_keys if k.asset_key == asset_key}
    specs = [s for s in specs if s.name in selected]
    keys = list(context.partition_keys)
    outcomes = {key: _evaluate_hour(context, asset, specs, storage, run, key, selected) for key in keys}
    # A run of one partition records the results below with their partition; a range run
    # (even of one hour, as the sensor sends) records them without one, so it also logs
    # each hour's own evaluation.
    if len(keys) == 1 and RANGE_START not in context.run.tags:
        for spec in specs:
            outcome = outcomes[keys[0]][spec.name]
            yield dg.AssetCheckResult(asset_key=asset_key, check_name=spec.name, passed=outcome.passed,
                                      metadata=outcome.metadata(), description=outcome.description)
        return
    _log_evaluations(context, asset_key, specs, outcomes)
    for spec in specs:
        yield _range_result(asset_key, spec, keys, outcomes)


def _evaluate_hour(
    context: dg.AssetCheckExecutionContext,
    asset: str,
    specs: list[dg.AssetCheckSpec],
    storage: AzureStorage,
    run: Callable[[datetime, set[str]], dict[str, Outcome]],
    key: str,
    selected: set[str],
) -> dict[str, Outcome]:
    """One hour's outcomes, each logged; an hour whose container could not be read fails, saying why."""
    try:
        outcomes = run(parse_hour(key), selected)
    except Exception as exc:  # the container could not be read: that hour fails, saying why
        message = storage.redact(f"{type(exc).__name__}: {exc}")
        failed = outcome_of([{"problem": f"could not read the container: {message}"}], {})
        outcomes = {name: failed for name in selected}
    for spec in specs:
        outcome = outcomes[spec.name]
        (context.log.info if outcome.passed else context.log.error)(f"{asset} {spec.name} {key}: {outcome.description}")
    return outcomes


def _log_evaluations(context: dg.AssetCheckExecutionContext, asset_key: dg.AssetKey,
                     specs: list[dg.AssetCheckSpec], outcomes: dict[str, dict[str, Outcome]]) -> None:
    """Each hour's own evaluation of each check, with its partition."""
    for key, hour in outcomes.items():
        for spec in specs:
            outcome = hour[spec.name]
            context.op_execution_context.log_event(dg.AssetCheckEvaluation(
                asset_key=asset_key, check_name=spec.name, passed=outcome.passed, metadata=outcome.metadata(),
                description=outcome.description, blocking=spec.blocking, partition=key,
            ))


def _range_result(asset_key: dg.AssetKey, spec: dg.AssetCheckSpec, keys: list[str],
                  outcomes: dict[str, dict[str, Outcome]]) -> dg.AssetCheckResult:
    """A check's result over the step's hours: how many passed, and which failed."""
    failed = [k for k in keys if not outcomes[k][spec.name].passed]
    return dg.AssetCheckResult(
        asset_key=asset_key, check_name=spec.name, passed=not failed,
        description=f"{len(keys) - len(failed)} of {len(keys)} hours passed"
        + (f"; failed: {', '.join(failed[:10])}" if failed else ""),
        metadata={"hours_checked": len(keys), "hours_failed": dg.MetadataValue.json(failed),
                  "first_hour": keys[0], "last_hour": keys[-1]},
    )


class CheckConfig(dg.Config):
    """`read_back`: read every part back and check its lines, instead of relying on the
    validation the export recorded (the deep check: `python -m amplitude_assets deep-check`)."""

    read_back: bool = False


def hourly_checks(
    name: str,
    description: str,
    asset: str,
    partitions: dg.PartitionsDefinition,
    checks: list[tuple[str, bool, str]],
    container: str,
    run: Callable[[ContainerClient, datetime, set[str], bool], dict[str, Outcome]],
) -> dg.AssetChecksDefinition:
    """One multi-asset check over `checks` (name, blocking, description), any subset of them selectable:
    `run(client, hour, selected)` evaluates an hour of the asset read from `container`, for every hour of the step."""
    specs = [dg.AssetCheckSpec(check, asset=asset, blocking=blocking, partitions_def=partitions, description=text)
             for check, blocking, text in checks]

    @dg.multi_asset_check(specs=specs, name=name, can_subset=True, description=description)
    def multi_check(context: dg.AssetCheckExecutionContext, storage: AzureStorage, config: CheckConfig):
        client = storage.container(container)
        yield from evaluate_hours(context, asset, specs, storage,
                                  lambda hour, selected: run(client, hour, selected, config.read_back))

    return multi_check


def build_events_checks(settings, partitions: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    layout = EventsLayout(settings.events_prefix, settings.project_id)
    checks = [
        ("schema", True, "Every line of the hour's parts parses, has the 49 fields and the hour's extra keys in "
                         "code-point order, the same on every line, and the contract's JSON types. Validated "
                         "when the parts were written; the check makes sure the parts present are those."),
        ("unique", False, "No uuid and no ($insert_id, device_id) repeats across the hour's parts."),
        ("complete", True, "The marker's manifest matches the parts in the container (names, sizes, Content-MD5, "
                           "no stray parts) and its counts reconcile."),
    ]

    def run(client: ContainerClient, hour: datetime, selected: set[str], read_back: bool) -> dict[str, Outcome]:
        return events_hour_outcomes(client, layout, hour, selected, read_back=read_back)

    return [hourly_checks("events_checks", "One read of each hour serves the schema, unique and complete checks.",
                          "events", partitions, checks, settings.events_container, run)]


def build_merged_ids_checks(settings, partitions: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    layout = MergedIdsLayout(settings.merged_ids_prefix, settings.merged_ids_scope)
    rules = LineRules(head=MERGED_ID_FIELDS, fields=tuple((name, Kind.INT) for name in MERGED_ID_FIELDS),
                      allow_extras=False, nullable=False, fixed=(("scope", str(int(settings.merged_ids_scope))),),
                      unique=(("amplitude_id",),))
    checks = [
        ("schema", True, "Every line parses, has scope, merge_time, merge_server_time, amplitude_id, "
                         "merged_amplitude_id in order, all integers (never null), and the configured scope."),
        ("unique", False, "No amplitude_id is merged away twice in the hour."),
    ]

    def run(client: ContainerClient, hour: datetime, selected: set[str], read_back: bool) -> dict[str, Outcome]:
        return merged_ids_hour_outcomes(client, layout, rules, hour, selected)

    return [hourly_checks("merged_ids_checks",
                          "One read of each hour's merged-IDs file serves the schema and unique checks.",
                          "merged_ids", partitions, checks, settings.merged_ids_container, run)]
