"""The message and its delivery to AMPLITUDE_ALERT_WEBHOOK_URL.

Slack's incoming webhooks take `{"text": ...}`, and so does any HTTP endpoint that reads JSON;
Teams workflow webhooks take an Adaptive Card, built and posted with dagster-msteams'
`AdaptiveCard` and `TeamsClient`. (dagster-slack posts through a bot token and
`chat.postMessage`, so it does not fit an incoming webhook.) The URL is a secret: it is read
when a message is sent, through `dagster.EnvVar`, and never logged. A webhook that fails or
does not answer costs at most AMPLITUDE_ALERT_TIMEOUT_SECONDS and is logged; it never raises.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from urllib.parse import urlparse

import dagster as dg
import requests

from amplitude_assets.settings import Settings, redact

VARIABLE = "AMPLITUDE_ALERT_WEBHOOK_URL"
# Teams workflow (Power Automate) webhooks, and the older connectors' host.
TEAMS_HOSTS = (".logic.azure.com", ".powerplatform.com", ".webhook.office.com")
_URL_QUERY = re.compile(r"(https?://[^\s?#'\"<>|]+)\?[^\s'\"<>|]*")


def scrub(text: str) -> str:
    """`text` without secrets: set secret values, SAS signatures, account keys, and URLs' query strings."""
    return _URL_QUERY.sub(r"\1", redact(text))


@dataclass(frozen=True)
class Message:
    """What is sent: a title, lines of text, and links (label, URL) when AMPLITUDE_ALERT_UI_URL is set."""

    kind: str  # run_failed, gave_up, late, chain_broken, reminder, recovered, test
    title: str
    lines: list[str] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)

    def text(self) -> str:
        """The whole message as plain text (what the log and the tests read)."""
        return "\n".join([self.title, *self.lines, *(f"{label}: {url}" for label, url in self.links)])


def slack_payload(message: Message) -> dict:
    text = scrub("\n".join([f"*{message.title}*", *message.lines]))
    if message.links:  # the links are the UI's own, built here: only the text is scrubbed
        text += "\n" + " | ".join(f"<{url}|{label}>" for label, url in message.links)
    return {"text": text}


def teams_payload(message: Message) -> dict:
    from dagster_msteams.adaptive_card import AdaptiveCard

    card = AdaptiveCard()
    card.add_attachment(scrub(f"**{message.title}**"))
    for line in message.lines:
        card.add_attachment(scrub(line))
    if message.links:
        card.add_attachment(" | ".join(f"[{label}]({url})" for label, url in message.links))
    return card.payload


def payload_format(url: str, setting: str) -> str:
    """`slack` or `teams`: AMPLITUDE_ALERT_FORMAT, or with `auto`, Teams for a Teams workflow's host."""
    if setting != "auto":
        return setting
    host = (urlparse(url).hostname or "").lower()
    return "teams" if host.endswith(TEAMS_HOSTS) else "slack"


def webhook_url() -> str | None:
    return dg.EnvVar(VARIABLE).get_value() or None


def send(message: Message, settings: Settings, log: logging.Logger | None = None) -> bool:
    """Post `message`; True once the webhook accepted it. Never raises, never waits longer than the timeout."""
    log = log or logging.getLogger("amplitude_assets.alerts")
    url = webhook_url()
    if not url:
        log.info(f"{VARIABLE} is not set: the {message.kind} alert was not sent")
        return False
    fmt = payload_format(url, settings.alert_format)
    timeout = settings.alert_timeout_seconds
    outcome: dict = {}

    def post() -> None:
        try:
            if fmt == "teams":
                from dagster_msteams.client import TeamsClient

                TeamsClient(hook_url=url, timeout=timeout).post_message(teams_payload(message))
            else:
                response = requests.post(url, json=slack_payload(message), timeout=(timeout, timeout))
                if not response.ok:
                    outcome["error"] = f"the webhook answered HTTP {response.status_code}"
                    return
            outcome["ok"] = True
        except requests.Timeout:
            outcome["error"] = f"the webhook did not answer within {timeout} s"
        except requests.RequestException as exc:  # its text holds the URL: only the kind is logged
            if type(exc) is requests.RequestException:  # TeamsClient's: a reply other than success
                outcome["error"] = "the webhook refused the message"
                return
            reply = exc.response.status_code if exc.response is not None else None
            outcome["error"] = f"the webhook answered HTTP {reply}" if reply else f"{type(exc).__name__} reaching the webhook"
        except Exception as exc:
            outcome["error"] = f"{type(exc).__name__} posting to the webhook"

    worker = threading.Thread(target=post, daemon=True, name="amplitude-alert")
    worker.start()
    worker.join(timeout * 2 + 1)  # requests bounds the connection and each read; this bounds the whole
    if outcome.get("ok"):
        log.info(f"sent the {message.kind} alert ({fmt}): {scrub(message.title)}")
        return True
    reason = outcome.get("error") or f"the webhook did not answer within {timeout * 2 + 1} s"
    log.warning(f"the {message.kind} alert was not delivered: {reason.replace(url, '***')}")
    return False
