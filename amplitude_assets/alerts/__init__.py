"""Telling the team: messages to AMPLITUDE_ALERT_WEBHOOK_URL (Slack, Teams, or any HTTP endpoint).

`webhook.py` builds and posts a message, `messages.py` says what happened, `runs.py` reads a
failed run, and `sensors.py` holds the two sensors that send them.
"""

from __future__ import annotations

import logging

from amplitude_assets.settings import Settings


def notify_gave_up(settings: Settings, hours: list[str], log: logging.Logger | None = None) -> None:
    """`hourly_export_sensor` gave up on `hours`: say so (a no-op without the webhook)."""
    from amplitude_assets.alerts.messages import gave_up
    from amplitude_assets.alerts.webhook import send

    if hours and settings.alert_webhook_set:
        send(gave_up(settings, sorted(hours)), settings, log)


def build_alert_sensors(settings: Settings, partitions) -> list:
    from amplitude_assets.alerts.sensors import build_freshness_sensor, build_run_failure_sensor

    return [build_run_failure_sensor(settings, partitions), build_freshness_sensor(settings, partitions)]
