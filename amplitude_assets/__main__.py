"""The command line: `python -m amplitude_assets {backfill,check-destination,test-alert}`."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from datetime import datetime, timezone

from amplitude_assets.cli_backfill import BACKFILL_TAG  # noqa: F401 - importable from here as before
from amplitude_assets.partitions import hours_between, parse_hour, partition_key
from amplitude_assets.settings import Settings, SettingsError

LOG_WIDTH = 200  # columns when the output goes to a file or a pipe, where rich would assume 80
SUMMARY_COLUMNS = ("rows", "parts", "bytes", "dups", "filtered", "rejected", "merges")


def output_console(file=None):
    """The command's rich console: a terminal's own width, or, sent to a log file or a pipe, wide
    enough that the summary table keeps whole values (rich would fit it to 80 columns, or to
    COLUMNS, and cut them)."""
    from rich.console import Console

    console = Console(file=file)
    if not console.is_terminal:
        console.width = LOG_WIDTH
    return console


def summary_table(title: str, rows: list[tuple[str, ...]]):
    """What landed, one row per hour: hour, status, then SUMMARY_COLUMNS."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("hour", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for column in SUMMARY_COLUMNS:
        table.add_column(column, justify="right", overflow="fold")  # a narrow terminal folds, never cuts
    for row in rows:
        table.add_row(*row)
    return table


def _chunks(hours: list[datetime], size: int) -> list[list[datetime]]:
    return [hours[i : i + size] for i in range(0, len(hours), size)]


def backfill(args: argparse.Namespace) -> int:
    """Exports a range of hours in the DAGSTER_HOME instance, one range run per
    AMPLITUDE_HOURS_PER_RUN hours (`cli_backfill`), then prints what landed."""
    import dagster as dg

    console = output_console()
    settings = Settings.from_env()
    hours = _checked_range(args, settings, "the backfill records its runs")

    from amplitude_assets.cli_backfill import RangeRuns, follow_markers, run_chunks, summary
    from amplitude_assets.definitions import defs

    instance = dg.DagsterInstance.get()
    job = defs.resolve_implicit_global_asset_job_def()
    available = defs.resolve_asset_graph().get_all_asset_keys()
    selection = [k for k in (dg.AssetKey("events"), dg.AssetKey("merged_ids")) if k in available]
    chunks = _chunks(hours, settings.hours_per_run)
    started_at = datetime.now(timezone.utc)
    runs = RangeRuns(job, instance, selection)
    names = " and ".join(k.to_user_string() for k in selection)
    console.print(
        f"Exporting {len(hours)} hour(s) of {names}, {args.start} to {args.end}, "
        f"in {len(chunks)} run(s) of up to {settings.hours_per_run} hours (AMPLITUDE_HOURS_PER_RUN)"
    )
    failed_runs, in_failed_run = run_chunks(console, runs, chunks, follow_markers(defs, settings))

    storage = defs.resources["storage"].process_config_and_initialize()  # resolves the EnvVars
    rows, failures = summary(storage, settings, hours, started_at, in_failed_run, len(selection))
    console.print(summary_table(f"What landed ({settings.events_container}/{settings.events_prefix or ''})", rows))
    if failed_runs:
        console.print(f"[red]{len(failed_runs)} run(s) failed: {', '.join(failed_runs)}; open them in the Dagster UI (Runs) for the errors")
    if failures:
        console.print(f"[red]{failures} of {len(hours)} hour(s) did not export cleanly")
        return 1
    console.print(f"[green]All {len(hours)} hour(s) exported.")
    return 0


def deep_check(args: argparse.Namespace) -> int:
    """The events checks with `read_back` over a range of hours, in the DAGSTER_HOME instance.

    Every part is downloaded and every line parsed again, instead of relying on the
    validation each export recorded. One run per AMPLITUDE_HOURS_PER_RUN hours; each hour
    gets its own evaluations, as in any range run, and they show in the UI.
    """
    import dagster as dg

    from amplitude_assets.checks import READ_BACK_CONFIG
    from amplitude_assets.definitions import defs
    from amplitude_assets.partitions import RANGE_END, RANGE_START

    console = output_console()
    settings = Settings.from_env()
    hours = _checked_range(args, settings, "the deep check records its runs")
    instance = dg.DagsterInstance.get()
    checks = {dg.AssetCheckKey(dg.AssetKey("events"), name) for name in ("schema", "unique", "complete")}
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=set(), asset_check_selection=checks)
    config = {**READ_BACK_CONFIG, "loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    failed: list[str] = []
    for chunk in _chunks(hours, settings.hours_per_run):
        keys = (partition_key(chunk[0]), partition_key(chunk[-1]))
        result = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False,
                                        tags={RANGE_START: keys[0], RANGE_END: keys[1]})
        records = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        for record in records:
            evaluation = record.dagster_event.event_specific_data
            if evaluation.partition is None:
                continue  # the range's summary
            mark = "[green]passed" if evaluation.passed else "[red]FAILED"
            console.print(f"events {evaluation.check_name} {evaluation.partition}: {mark}[/] {evaluation.description or ''}")
            if not evaluation.passed:
                failed.append(f"{evaluation.partition} {evaluation.check_name}")
    if failed:
        console.print(f"[red]{len(failed)} check(s) failed: {', '.join(failed[:20])}")
        return 1
    console.print(f"[green]All {len(hours)} hour(s) read back and passed.")
    return 0


def _checked_range(args: argparse.Namespace, settings: Settings, why: str) -> list[datetime]:
    start = parse_hour(args.start, "--start")
    end = parse_hour(args.end, "--end")
    if end < start:
        raise SettingsError(f"--end {args.end} is before --start {args.start}")
    if start < settings.start_hour:
        raise SettingsError(
            f"--start {args.start} is before the first partition {settings.start} (AMPLITUDE_START)"
        )
    if not os.environ.get("DAGSTER_HOME"):
        raise SettingsError(f"DAGSTER_HOME is not set: {why} in the Dagster instance there, so that the UI shows them")
    return hours_between(start, end)


def _hour_range_arguments(parser: argparse.ArgumentParser) -> None:
    """--start and --end, an inclusive range of hours (read by `_checked_range`)."""
    parser.add_argument("--start", required=True, help="first hour, e.g. 2024-01-01-00:00")
    parser.add_argument("--end", required=True, help="last hour (included), e.g. 2024-01-01-23:00")


def check_destination(args: argparse.Namespace) -> int:
    from amplitude_assets.destination.credentials import AzureStorage
    from amplitude_assets.jobs import run_check_destination

    settings = Settings.from_env()
    # The definitions' `storage` resource, built the same way without loading every asset:
    # the answer must come within seconds.
    storage = AzureStorage.from_env(create_containers=settings.create_containers)
    return 0 if run_check_destination(settings, storage.process_config_and_initialize()) else 1


def default_sigterm() -> None:
    """SIGTERM back to its default action when the command was started with it ignored.

    Each step of a run mirrors its compute log to this process's stdout and stderr through a
    `tail -F` child, which Dagster stops with SIGTERM: at the end of the step, or, through its
    watch_orphans helper, once this process is gone. An ignored signal stays ignored across
    fork and exec, so a command started with SIGTERM ignored (by a scheduler, a supervisor, a
    test runner that ignores it) would hand that on to every `tail`: they would outlive the
    command, keep its stdout and stderr open, and `... backfill | tee log` would never end.
    (Dagster's in-process execution on a main thread copies SIGINT's disposition onto SIGTERM,
    so a process started with SIGINT ignored, as a shell starts a background job, ends up
    ignoring SIGTERM after its first run.) Reset here, before any child starts, every child
    inherits the default. SIGINT is left as it is: the tails are not stopped with it, and an
    ignored SIGINT is how a shell keeps Ctrl-C away from its background jobs.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set a handler; the command itself runs there
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_alert(args: argparse.Namespace) -> int:
    import logging

    from amplitude_assets.alerts.messages import probe_message
    from amplitude_assets.alerts.webhook import payload_format, send, webhook_url

    settings = Settings.from_env()
    if not settings.alert_webhook_set:
        raise SettingsError("AMPLITUDE_ALERT_WEBHOOK_URL is not set: there is nowhere to send the test message")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    fmt = payload_format(webhook_url() or "", settings.alert_format)
    if send(probe_message(settings), settings, logging.getLogger("amplitude_assets.alerts")):
        print(f"sent a test message ({fmt} payload)")
        return 0
    print(f"the test message was not delivered ({fmt} payload); the reason is above", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    import warnings

    default_sigterm()  # first: before any run starts a compute-log `tail`
    warnings.filterwarnings("ignore", message=".*is currently in (beta|preview).*")
    parser = argparse.ArgumentParser(
        prog="python -m amplitude_assets",
        description="Amplitude's Azure Blob Storage export as a Dagster code location.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    check = verbs.add_parser(
        "check-destination",
        help="write, read, list and delete a probe blob in each destination, as Amplitude's test upload does",
    )
    check.set_defaults(run=check_destination)
    fill = verbs.add_parser(
        "backfill",
        help="export an inclusive range of hours (events, then merged_ids, with their checks) "
        "in the DAGSTER_HOME instance, replacing hours already exported",
    )
    _hour_range_arguments(fill)
    fill.set_defaults(run=backfill)
    deep = verbs.add_parser(
        "deep-check",
        help="read an inclusive range of exported hours back and run the events checks on every line "
        "(the export validates what it writes; this re-reads it), in the DAGSTER_HOME instance",
    )
    _hour_range_arguments(deep)
    deep.set_defaults(run=deep_check)
    alert = verbs.add_parser("test-alert", help="send one test message to AMPLITUDE_ALERT_WEBHOOK_URL")
    alert.set_defaults(run=test_alert)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
