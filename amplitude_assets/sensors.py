"""`hourly_export_sensor`: requests the closed hours that are not in the container yet.

On each tick it:
  1. takes the hours that closed at least AMPLITUDE_EXPORT_DELAY_MINUTES ago, from the later
     of AMPLITUDE_START and AMPLITUDE_CATCH_UP_HOURS ago (from the partitions definition);
  2. lists the events and merged-IDs markers, one listing per day and destination
     (`exported.py`); the merged-IDs markers' blob metadata tells which hours are stale
     (`chain.py`), and those count as missing;
  3. drops hours that a queued or running run, or an in-progress backfill, already covers
     (sensor, backfill, automation or UI);
  4. requests the rest, oldest first, consecutive hours batched into range runs of at most
     AMPLITUDE_HOURS_PER_RUN hours:
     - hours whose events are missing get runs of `events` alone, which never hold the
       merged-ID chain; `merged_ids_automation` derives their merged IDs once they land;
     - hours whose events are in place but whose merged IDs are missing or stale get runs
       of `merged_ids` alone, tagged with the chain (a run-queue limit of 1 runs them one
       after the other), and only once the hour before has its merged IDs: an hour that
       waits for the hour before is not requested, and not counted as an attempt;
     - an hour whose events landed less than AUTOMATION_TURN ago and whose merged IDs are
       missing (not stale) is left to `merged_ids_automation`, whose next tick requests it:
       the two never race for the same hour, and the sensor requests it only once the
       automation has let it be (turned off, or its run failed).

The cursor (JSON) counts the runs requested per hour since the hour was last seen exported.
An hour whose marker is still missing once its run is over is requested again, in a run
of its own, up to AMPLITUDE_SENSOR_MAX_ATTEMPTS runs; then the sensor gives up on it and says so in the tick's
log and as an observation on the hour. Run keys are unique forever, so they carry a sequence
number from the cursor.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import dagster as dg

from amplitude_assets.alerts.sensors import notify_gave_up
from amplitude_assets.destination.credentials import AzureStorage
from amplitude_assets.exported import Exported, listed_exported
from amplitude_assets.in_flight import hours_in_flight
from amplitude_assets.layout import EventsLayout, MergedIdsLayout
from amplitude_assets.partitions import RANGE_END, RANGE_START, parse_hour, partition_key
from amplitude_assets.settings import Settings

DESTINATION = "amplitude_assets/destination"  # for per-destination tag concurrency limits
ATTEMPT = "amplitude_assets/attempt"
# Every run this code location starts for merged_ids carries it: a run-queue limit of 1 on this
# tag (dagster.yaml) makes runs of adjacent hours go one after the other, oldest first.
MERGED_IDS_CHAIN = "amplitude_assets/merged_ids_chain"
# Runs that derive merged IDs alone go ahead of queued exports of events: an hour of merged IDs
# takes about a second, and the later hours of the chain wait for it (Dagster's run queue
# dequeues higher `dagster/priority` first). So merged IDs follow a long backfill of events
# hour by hour, rather than after its last run.
PRIORITY = "dagster/priority"
MERGED_IDS_PRIORITY = "1"
# How long the sensor leaves an hour whose events just landed to merged_ids_automation (it
# ticks every 30 s; once it has requested the hour, its backfill covers the hour).
AUTOMATION_TURN = timedelta(minutes=5)
EVENTS = dg.AssetKey("events")
MERGED_IDS = dg.AssetKey("merged_ids")
ASSETS = (EVENTS, MERGED_IDS)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def due_hours(settings: Settings, partitions: dg.TimeWindowPartitionsDefinition, now: datetime) -> list[str]:
    """Partition keys of the closed hours the sensor looks at, oldest first."""
    ready = now - timedelta(minutes=settings.export_delay_minutes)  # an hour must have closed before this
    lower = max(settings.start_hour, floor_hour(now) - timedelta(hours=settings.catch_up_hours))
    upper = floor_hour(ready)
    if upper <= lower:
        return []
    keys = partitions.get_partition_keys_in_time_window(dg.TimeWindow(lower, upper))
    return [
        k for k in keys
        if partitions.time_window_for_partition_key(k).end <= ready
        and partitions.time_window_for_partition_key(k).start >= lower
    ]


def merged_ids_chain(settings: Settings) -> str:
    """The value of the MERGED_IDS_CHAIN tag: the merged-IDs destination, `container/folder`."""
    layout = MergedIdsLayout(settings.merged_ids_prefix, settings.merged_ids_scope)
    return f"{settings.merged_ids_container}/{layout.folder}"


def build_merged_ids_automation_sensor(settings: Settings) -> dg.AutomationConditionSensorDefinition:
    """Dagster's automation condition sensor for `merged_ids`, on by default: merged IDs follow events."""
    return dg.AutomationConditionSensorDefinition(
        "merged_ids_automation",
        target=dg.AssetSelection.assets(MERGED_IDS),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        # Hours that become ready on one tick go into one backfill, in runs of at most
        # AMPLITUDE_HOURS_PER_RUN hours (the asset's backfill policy); as plain runs they would be
        # one run per hour. Its runs carry the tags below, so they go ahead of queued events.
        run_tags={MERGED_IDS_CHAIN: merged_ids_chain(settings), PRIORITY: MERGED_IDS_PRIORITY},
        description="Materializes merged_ids for every hour whose events landed, in hour order "
                    "(the asset's automation condition). Turn it off only to stop merged IDs following events.",
    )


def batches(keys: list[str], size: int) -> list[list[str]]:
    """Consecutive hours in runs of at most `size` hours."""
    runs: list[list[str]] = []
    for key in keys:
        hour = parse_hour(key)
        if runs and len(runs[-1]) < size and parse_hour(runs[-1][-1]) + timedelta(hours=1) == hour:
            runs[-1].append(key)
        else:
            runs.append([key])
    return runs


def merged_ids_ready(keys: list[str], due: list[str], merged_done: set[str]) -> tuple[list[str], list[str]]:
    """Split hours that need only their merged IDs into (ready to request, waiting for the hour before).

    An hour is ready when the hour before has its merged IDs, is older than the hours the
    tick looks at (its state is judged when the run starts), or is ready itself (the two go
    in one run, in order). Any other hour would start from a state that is not there yet."""
    ready: list[str] = []
    waiting: list[str] = []
    looked_at = set(due)
    for key in keys:  # oldest first
        previous = partition_key(parse_hour(key) - timedelta(hours=1))
        if previous not in looked_at or previous in merged_done or previous in ready:
            ready.append(key)
        else:
            waiting.append(key)
    return ready, waiting


def automation_turn(keys: list[str], found: Exported, now: datetime) -> list[str]:
    """The hours of `keys` that merged_ids_automation still has to request: their events landed
    less than AUTOMATION_TURN before `now` (a real clock, as the markers' Last-Modified is),
    and their merged IDs are missing, not stale (a stale hour is the sensor's alone)."""
    return [k for k in keys if k not in found.stale and k in found.events_landed
            and now - found.events_landed[k] < AUTOMATION_TURN]


def load_cursor(text: str | None) -> dict:
    cursor = json.loads(text) if text else {}
    return {"attempts": dict(cursor.get("attempts", {})), "merged_attempts": dict(cursor.get("merged_attempts", {})),
            "given_up": list(cursor.get("given_up", [])), "seq": int(cursor.get("seq", 0))}


@dataclass
class Attempts:
    """The cursor of a tick: runs requested per hour and asset, the hours given up, the run sequence.

    Attempts are counted per asset: an hour whose events landed starts afresh for its merged
    IDs. An hour seen exported starts afresh (a marker that vanishes later is requested
    again); hours that fell out of the catch-up window are forgotten."""

    events: dict[str, int]
    merged_ids: dict[str, int]
    given_up: list[str]
    seq: int

    @classmethod
    def carried(cls, cursor: dict, needs_events: list[str], needs_merged: list[str]) -> "Attempts":
        """What the last tick's cursor says about the hours still missing."""
        missing = {*needs_events, *needs_merged}
        return cls(
            events={k: n for k, n in cursor["attempts"].items() if k in set(needs_events)},
            merged_ids={k: n for k, n in cursor["merged_attempts"].items() if k in set(needs_merged)},
            given_up=[k for k in cursor["given_up"] if k in missing],
            seq=cursor["seq"],
        )

    def to_cursor(self) -> str:
        return json.dumps({"attempts": self.events, "merged_attempts": self.merged_ids,
                           "given_up": sorted(self.given_up), "seq": self.seq}, sort_keys=True)


def available(keys: list[str], counts: dict[str, int], busy: set[str], max_attempts: int,
              given_up: list[str]) -> tuple[list[str], list[str]]:
    """(the hours of `keys` to request now, those newly given up): an hour is requested when no
    run covers it and it has not spent its `max_attempts`; one that has is given up."""
    chosen: list[str] = []
    newly_given_up: list[str] = []
    for key in keys:
        if key in busy:
            continue
        if counts.get(key, 0) >= max_attempts:
            if key not in given_up:
                newly_given_up.append(key)
            continue
        chosen.append(key)
    return chosen, newly_given_up


@dataclass(frozen=True)
class Wanted:
    """The hours a tick requests, per asset, and those it leaves for now."""

    events: list[str]  # hours to request events for
    merged_ids: list[str]  # hours to request merged IDs for, each after the hour before
    waiting: list[str]  # hours of merged IDs that wait for the hour before
    automation: list[str]  # hours of merged IDs left to merged_ids_automation for now
    newly_given_up: list[str]  # hours that spent their last attempt, events' first

    @property
    def hours(self) -> list[str]:
        return [*self.events, *self.merged_ids]


def wanted_hours(settings: Settings, due: list[str], found: Exported, needs_events: list[str],
                 needs_merged: list[str], busy: set[str], attempts: Attempts) -> Wanted:
    """Which missing hours to request, per asset; `attempts.given_up` gains the hours given up."""
    events, events_given_up = available(needs_events, attempts.events, busy, settings.sensor_max_attempts,
                                        attempts.given_up)
    attempts.given_up.extend(events_given_up)
    automation = automation_turn([k for k in needs_merged if k not in busy], found, utc_now())
    merged, merged_given_up = available([k for k in needs_merged if k not in automation], attempts.merged_ids,
                                        busy, settings.sensor_max_attempts, attempts.given_up)
    attempts.given_up.extend(merged_given_up)
    ready, waiting = merged_ids_ready(merged, due, found.merged_ids)
    return Wanted(events=events, merged_ids=ready, waiting=waiting, automation=automation,
                  newly_given_up=[*events_given_up, *merged_given_up])


def run_requests(selection: list[dg.AssetKey], keys: list[str], counts: dict[str, int], seq: int,
                 hours_per_run: int, tags: dict[str, str]) -> tuple[list[dg.RunRequest], dict[str, int], int]:
    """(the runs of `keys`, oldest first, the attempts counted with them, the last run sequence number).

    A retried hour runs alone: one bad hour that failed its batch must not spend the
    attempts of the healthy hours beside it on every later tick."""
    counts = dict(counts)
    requests = []
    fresh = [k for k in keys if not counts.get(k)]
    retried = [[k] for k in keys if counts.get(k)]
    for run in sorted([*batches(fresh, hours_per_run), *retried], key=lambda run: run[0]):
        seq += 1
        for key in run:
            counts[key] = counts.get(key, 0) + 1
        attempt = max(counts[k] for k in run)
        requests.append(dg.RunRequest(
            run_key=f"{run[0]}...{run[-1]}#attempt{attempt}#{seq}",
            asset_selection=selection,
            tags={RANGE_START: run[0], RANGE_END: run[-1], ATTEMPT: str(attempt), **tags},
        ))
    return requests, counts, seq


def request_runs(settings: Settings, wanted: Wanted, attempts: Attempts, destination: str,
                 chain: str) -> list[dg.RunRequest]:
    """The tick's runs: events first, then merged IDs (tagged with the chain); `attempts` counts them."""
    events, attempts.events, attempts.seq = run_requests(
        [EVENTS], wanted.events, attempts.events, attempts.seq, settings.hours_per_run, {DESTINATION: destination},
    )
    merged, attempts.merged_ids, attempts.seq = run_requests(
        [MERGED_IDS], wanted.merged_ids, attempts.merged_ids, attempts.seq, settings.hours_per_run,
        {DESTINATION: destination, MERGED_IDS_CHAIN: chain, PRIORITY: MERGED_IDS_PRIORITY},
    )
    return [*events, *merged]


def tick_notes(settings: Settings, log, missing: list[str], busy: set[str], found: Exported, wanted: Wanted,
               given_up: list[str], requests: list[dg.RunRequest]) -> list[str]:
    """What the tick says of the hours it does not request, logged as it goes (the skip message)."""
    notes = []
    if given_up:
        notes.append(
            f"gave up on {len(given_up)} hour(s) after {settings.sensor_max_attempts} failed runs each: "
            f"{', '.join(sorted(given_up))}; re-run them by hand (the sensor tries again once one is exported)"
        )
        log.warning(notes[-1])
    notify_gave_up(settings, wanted.newly_given_up, log)
    skipped_busy = [k for k in missing if k in busy]
    if skipped_busy:
        notes.append(f"{len(skipped_busy)} hour(s) already have a run queued or in progress")
    if wanted.automation:
        notes.append(
            f"{len(wanted.automation)} hour(s) of merged_ids left to merged_ids_automation, from "
            f"{wanted.automation[0]}: their events landed under {AUTOMATION_TURN.seconds // 60} min ago"
        )
    if wanted.waiting:
        notes.append(
            f"{len(wanted.waiting)} hour(s) of merged_ids wait for the hour before, from {wanted.waiting[0]} "
            "(merged_ids_automation requests them once it lands)"
        )
    stale_wanted = [k for k in wanted.hours if k in found.stale]
    if stale_wanted:
        notes.append(f"{len(stale_wanted)} stale hour(s) of merged_ids re-exported from {stale_wanted[0]}")
    if requests:
        log.info(
            f"requesting {len(wanted.hours)} hour(s) in {len(requests)} run(s): "
            + ", ".join(f"{r.tags[RANGE_START]}...{r.tags[RANGE_END]}" for r in requests)
        )
    return notes


def gave_up_observations(settings: Settings, keys: list[str]) -> list[dg.AssetObservation]:
    """An observation on each asset of each hour the sensor just gave up on, for the UI."""
    return [
        dg.AssetObservation(
            asset_key=asset, partition=key,
            metadata={"sensor_gave_up": dg.MetadataValue.text(
                f"hourly_export_sensor gave up after {settings.sensor_max_attempts} failed runs; "
                "re-run this hour by hand")},
        )
        for key in keys for asset in ASSETS
    ]


def evaluate_tick(context: dg.SensorEvaluationContext, settings: Settings, due: list[str], found: Exported,
                  cursor: dict, destination: str, chain: str) -> dg.SensorResult:
    """One tick, once the due hours and what the container holds of them are known."""
    # Stale merged IDs are re-exported like missing ones, oldest first.
    missing = [k for k in due if k not in found.done]
    if found.stale:
        first = min(found.stale)
        context.log.info(f"{len(found.stale)} hour(s) of merged_ids are stale, from {first}: {found.stale[first]}")
    busy = hours_in_flight(context.instance, set(ASSETS))
    needs_events = [k for k in missing if k not in found.events]
    needs_merged = [k for k in missing if k in found.events]
    attempts = Attempts.carried(cursor, needs_events, needs_merged)
    wanted = wanted_hours(settings, due, found, needs_events, needs_merged, busy, attempts)
    requests = request_runs(settings, wanted, attempts, destination, chain)
    notes = tick_notes(settings, context.log, missing, busy, found, wanted, attempts.given_up, requests)
    observations = gave_up_observations(settings, wanted.newly_given_up)
    if not requests:
        summary = "; ".join(notes) or f"all {len(due)} hour(s) since {due[0]} are exported"
        return dg.SensorResult(skip_reason=dg.SkipReason(summary), cursor=attempts.to_cursor(),
                               asset_events=observations)
    return dg.SensorResult(run_requests=requests, cursor=attempts.to_cursor(), asset_events=observations)


def build_hourly_export_sensor(
    settings: Settings,
    partitions: dg.TimeWindowPartitionsDefinition,
    now: Callable[[], datetime] = utc_now,
) -> dg.SensorDefinition:
    destination = settings.events_container + "/" + EventsLayout(settings.events_prefix, settings.project_id).folder
    chain = merged_ids_chain(settings)

    @dg.sensor(
        name="hourly_export_sensor",
        target=[key.to_user_string() for key in ASSETS],
        default_status=dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=settings.sensor_interval_seconds,
        description=(
            "Exports every closed hour that is not in the container yet (events and merged IDs), "
            "and re-exports stale merged IDs, "
            f"{settings.export_delay_minutes} min after it closes, looking back "
            f"{settings.catch_up_hours} h; batches up to {settings.hours_per_run} hours per run and "
            f"gives up on an hour after {settings.sensor_max_attempts} failed runs."
        ),
    )
    def hourly_export_sensor(context: dg.SensorEvaluationContext, storage: AzureStorage):
        cursor = load_cursor(context.cursor)
        due = due_hours(settings, partitions, now())
        if not due:
            return dg.SkipReason("no closed hour is old enough to export yet")
        found = listed_exported(settings, storage, due)
        return evaluate_tick(context, settings, due, found, cursor, destination, chain)

    return hourly_export_sensor
