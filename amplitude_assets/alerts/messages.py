"""The messages, as pure functions of what happened (`Message`: a title, lines and links)."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

from amplitude_assets.alerts.webhook import Message, scrub
from amplitude_assets.settings import Settings

SHOWN = 12  # hours named in a message; the rest are counted


def hours_text(hours: list[str]) -> str:
    shown = ", ".join(hours[:SHOWN])
    return shown + (f" and {len(hours) - SHOWN} more" if len(hours) > SHOWN else "")


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _title(settings: Settings, text: str) -> str:
    return f"amplitude_assets (project {settings.project_id}): {text}"


def run_link(settings: Settings, run_id: str) -> list[tuple[str, str]]:
    return [(f"run {run_id[:8]}", f"{settings.alert_ui_url}/runs/{run_id}")] if settings.alert_ui_url else []


def hour_links(settings: Settings, asset: str, hours: list[str]) -> list[tuple[str, str]]:
    if not settings.alert_ui_url:
        return []
    return [(f"{asset} {h}", f"{settings.alert_ui_url}/assets/{asset}?view=partitions&partition={quote(h)}")
            for h in hours[:3]]


def run_failed(settings: Settings, run_id: str, hours: list[str], assets: list[str], step: str, cause: str) -> Message:
    return Message(
        kind="run_failed",
        title=_title(settings, f"a run failed; {len(hours)} hour(s) not exported"),
        lines=[f"Hours not exported ({' and '.join(assets)}): {hours_text(hours)}",
               f"Step: {step}", f"Cause: {scrub(cause)}", f"Run: {run_id}"],
        links=run_link(settings, run_id) + hour_links(settings, assets[0] if assets else "events", hours),
    )


def gave_up(settings: Settings, hours: list[str]) -> Message:
    return Message(
        kind="gave_up",
        title=_title(settings, f"hourly_export_sensor gave up on {len(hours)} hour(s)"),
        lines=[f"Hours: {hours_text(hours)}",
               f"Each failed {settings.sensor_max_attempts} runs (AMPLITUDE_SENSOR_MAX_ATTEMPTS). Fix the cause "
               "(the failed runs say it), then re-run the hours by hand; the sensor tries again once one is exported."],
        links=hour_links(settings, "events", hours),
    )


def late(settings: Settings, missing: dict[str, list[str]], deadlines: dict[str, datetime]) -> Message:
    hours = sorted(missing)
    return Message(
        kind="late",
        title=_title(settings, f"{len(hours)} hour(s) late"),
        lines=[f"{h} has no {' and no '.join(missing[h])} materialization by its deadline {_when(deadlines[h])}"
               for h in hours[:SHOWN]]
        + ([f"... and {len(hours) - SHOWN} more"] if len(hours) > SHOWN else [])
        + [f"The deadline is {settings.export_delay_minutes} min (AMPLITUDE_EXPORT_DELAY_MINUTES) plus "
           f"{settings.late_after_minutes} min (AMPLITUDE_LATE_AFTER_MINUTES) after the hour closes."],
        links=hour_links(settings, "events", hours),
    )


def chain_broken(settings: Settings, hour: str, since: datetime, now: datetime, waiting: list[str],
                 cause: str | None) -> Message:
    lines = [f"merged_ids stops at {hour}: it is not materialized, {_duration(now - since)} after its deadline "
             f"{_when(since)}.",
             f"{len(waiting)} later hour(s) have their events and wait for it: {hours_text(waiting)}" if waiting
             else "No later hour has waited on it yet."]
    if cause:
        lines.append(f"Its last run failed: {scrub(cause)}")
    lines.append(f"Merged IDs are derived hour by hour: export merged_ids for {hour}, and the later hours follow.")
    return Message(kind="chain_broken", title=_title(settings, f"the merged-ID chain is broken at {hour}"),
                   lines=lines, links=hour_links(settings, "merged_ids", [hour]))


def reminder(settings: Settings, problems: list[dict]) -> Message:
    return Message(
        kind="reminder",
        title=_title(settings, f"{len(problems)} problem(s) still open"),
        lines=[f"{p['hour']}: {p['what']}, since {p['since']}" for p in problems[:SHOWN]]
        + ([f"... and {len(problems) - SHOWN} more"] if len(problems) > SHOWN else []),
        links=hour_links(settings, "events", [p["hour"] for p in problems]),
    )


def recovered(settings: Settings, problems: list[dict]) -> Message:
    hours = sorted({p["hour"] for p in problems})
    return Message(
        kind="recovered",
        title=_title(settings, f"recovered: {len(hours)} hour(s) landed"),
        lines=[f"{p['hour']}: {p['what']} since {p['since']}; now materialized" for p in problems[:SHOWN]]
        + ([f"... and {len(problems) - SHOWN} more"] if len(problems) > SHOWN else []),
        links=hour_links(settings, "events", hours),
    )


def probe_message(settings: Settings) -> Message:
    return Message(
        kind="test",
        title=_title(settings, "test alert"),
        lines=["This is a test message from `python -m amplitude_assets test-alert`: alerts reach this channel."],
        links=[("Dagster UI", settings.alert_ui_url)] if settings.alert_ui_url else [],
    )


def _duration(delta) -> str:
    minutes = max(int(delta.total_seconds() // 60), 0)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
