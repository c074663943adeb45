"""The command line's backfill, run by `__main__.backfill`: one range run per chunk of hours,
in process, while a progress bar follows the hours that land, then what landed.

Progress comes from the container, as the summary does: an hour counts once its events
marker is written (`LandedHours`), whatever the runs log.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from amplitude_assets.partitions import partition_key
from amplitude_assets.settings import Settings

BACKFILL_TAG = "amplitude_assets/cli_backfill"
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}  # the summary says what happened


def hour_report(storage, settings: Settings, hour: datetime, since: datetime) -> dict:
    """What landed for an hour, read from its markers (the container is the truth)."""
    from amplitude_assets.layout import EventsLayout, MergedIdsLayout
    from amplitude_assets.destination.manifest import read_marker

    events = read_marker(
        storage.container(settings.events_container),
        EventsLayout(settings.events_prefix, settings.project_id).marker(hour),
    )
    merged = read_marker(
        storage.container(settings.merged_ids_container),
        MergedIdsLayout(settings.merged_ids_prefix, settings.merged_ids_scope).marker(hour),
    )

    def fresh(manifest: dict | None) -> bool:
        if not manifest:
            return False
        exported = datetime.strptime(manifest["exported_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        return exported >= since.replace(microsecond=0)

    return {"events": events if fresh(events) else None, "merged_ids": merged if fresh(merged) else None}


class LandedHours:
    """How many of a run's hours have landed so far, from their events markers in the container.

    Each hour's export deletes its marker first and writes the new one last
    (`destination/writer.py`), so an hour has landed once it has a marker that is not the one
    it had when the run started (a new blob, or a new ETag): the backfill replaces hours
    already exported. For the progress bar only: a listing that fails leaves the count as it
    was, and without a container (None) nothing is counted."""

    def __init__(self, container, layout, hours: list[datetime]):
        self.container = container
        self.markers = {layout.marker(h) for h in hours}
        self.prefixes = sorted({layout.day_prefix(h) for h in hours})  # one listing a day
        self.count = 0
        self.before = self.etags()

    def etags(self) -> dict[str, str] | None:
        """marker name -> ETag, for the markers there now; None when they cannot be listed."""
        from azure.core.exceptions import ResourceNotFoundError

        if self.container is None:
            return None
        found = {}
        try:
            for prefix in self.prefixes:
                found.update((b.name, b.etag) for b in self.container.list_blobs(name_starts_with=prefix)
                             if b.name in self.markers)
        except ResourceNotFoundError:
            return {}  # no container yet, so no marker
        except Exception:  # noqa: BLE001 - the progress bar never fails the command
            return None
        return found

    def landed(self) -> int:
        now = self.etags()
        if now is not None and self.before is not None:
            self.count = sum(1 for name, etag in now.items() if self.before.get(name) != etag)
        return self.count


def events_container(defs, settings: Settings):
    """The events container, to follow the markers, without creating it; None when the storage
    resource does not initialize (the summary initializes it again, and fails as it did)."""
    try:
        storage = defs.resources["storage"].process_config_and_initialize()
        return storage.service.get_container_client(settings.events_container)
    except Exception:  # noqa: BLE001 - the progress bar never fails the command
        return None


@dataclass(frozen=True)
class RangeRuns:
    """How the backfill runs a range of hours: the asset job, for `selection`, in the
    DAGSTER_HOME instance, its console logger quiet, tagged with the backfill's id."""

    job: object  # the code location's implicit asset job
    instance: object  # dagster.DagsterInstance
    selection: list
    backfill_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def run(self, chunk: list[datetime], run_id: str, poll: Callable[[], None]) -> bool:
        """Run `chunk` in a thread of its own, calling `poll()` every half second while it runs;
        whether the run succeeded. An exception counts as a failed run: it is reported in the
        summary, never as a traceback of secrets."""
        from amplitude_assets.partitions import RANGE_END, RANGE_START

        tags = {RANGE_START: partition_key(chunk[0]), RANGE_END: partition_key(chunk[-1]), BACKFILL_TAG: self.backfill_id}
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["result"] = self.job.execute_in_process(
                    run_config=QUIET, instance=self.instance, asset_selection=self.selection, tags=tags,
                    run_id=run_id, raise_on_error=False,
                )
            except Exception as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
            poll()
        result = outcome.get("result")
        return not outcome.get("error") and bool(result and result.success)


def progress_bar(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("hours"),
        TimeElapsedColumn(), console=console, transient=False,
    )


def run_chunks(console, runs: RangeRuns, chunks: list[list[datetime]],
               follow: Callable[[list[datetime]], LandedHours]) -> tuple[list[str], set[datetime]]:
    """One range run per chunk, one after the other, the progress bar counting the hours that
    land (`follow(chunk)`, from before the chunk's run); (the failed runs' ids, the hours whose
    run failed: an export or a blocking check)."""
    failed_runs: list[str] = []
    in_failed_run: set[datetime] = set()
    with progress_bar(console) as progress:
        task = progress.add_task("exporting", total=sum(len(chunk) for chunk in chunks))
        done = 0
        for chunk in chunks:
            run_id = str(uuid.uuid4())
            keys = (partition_key(chunk[0]), partition_key(chunk[-1]))
            hours = follow(chunk)

            def show() -> None:
                progress.update(task, completed=done + min(hours.landed(), len(chunk)),
                                description=f"run {keys[0]} .. {keys[1]}")

            succeeded = runs.run(chunk, run_id, show)
            done += len(chunk)
            progress.update(task, completed=done)
            if not succeeded:
                failed_runs.append(run_id)
                in_failed_run.update(chunk)
    return failed_runs, in_failed_run


def follow_markers(defs, settings: Settings) -> Callable[[list[datetime]], LandedHours]:
    """`follow` for `run_chunks`: the hours' events markers in the destination."""
    from amplitude_assets.layout import EventsLayout

    container = events_container(defs, settings)
    layout = EventsLayout(settings.events_prefix, settings.project_id)
    return lambda chunk: LandedHours(container, layout, chunk)


def summary_row(hour: datetime, report: dict, ok: bool, landed: bool) -> tuple[str, ...]:
    """An hour of the summary table: hour, status, then `__main__.SUMMARY_COLUMNS`."""
    events, merged = report["events"], report["merged_ids"]
    counts = (events or {}).get("counts", {})
    return (
        partition_key(hour),
        "[green]ok" if ok else ("[red]FAILED (run)" if landed else "[red]FAILED"),
        str(events["rows"]) if events else "-",
        str(len(events["parts"])) if events else "-",
        str(sum(p["bytes"] for p in events["parts"])) if events else "-",
        str(counts.get("duplicates", "-")),
        str(counts.get("filtered", "-")),
        str(counts.get("rejected", "-")),
        str(merged["rows"]) if merged else "-",
    )


def summary(storage, settings: Settings, hours: list[datetime], since: datetime, in_failed_run: set[datetime],
            assets: int) -> tuple[list[tuple[str, ...]], int]:
    """(the summary table's rows, the number of hours that did not export cleanly)."""
    rows = []
    failures = 0
    for hour in hours:
        report = hour_report(storage, settings, hour, since)
        events, merged = report["events"], report["merged_ids"]
        landed = events is not None and (merged is not None or assets == 1)
        ok = landed and hour not in in_failed_run
        failures += not ok
        rows.append(summary_row(hour, report, ok, landed))
    return rows, failures
