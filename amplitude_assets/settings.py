"""Every environment variable the project reads, read and validated in one place.

`Settings.from_env()` never needs a secret: credentials reach Azure and the Export API
only through `dagster.EnvVar` at run time (see `destination/credentials.py`), so the
definitions load with nothing set and no secret ends up in run config or metadata.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlparse

from amplitude_assets import duck
from amplitude_assets.errors import SettingsError
from amplitude_assets.partitions import parse_hour

SOURCES = ("synthetic", "export_api", "files")
REGION_URLS = {"us": "https://amplitude.com", "eu": "https://analytics.eu.amplitude.com"}
_CONTAINER_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")

# Names of the secret variables; they are read only through dagster.EnvVar.
SECRET_VARIABLES = (
    "AMPLITUDE_API_KEY",
    "AMPLITUDE_SECRET_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_CLIENT_SECRET",
    "AZURE_STORAGE_SAS_TOKEN",
    "AMPLITUDE_ALERT_WEBHOOK_URL",
)
ALERT_FORMATS = ("auto", "slack", "teams")


def redact(text: str, secrets: list[str | None] | None = None) -> str:
    """Remove every secret value (and SAS signatures, account keys) from a message."""
    values = secrets if secrets is not None else [os.environ.get(v) for v in SECRET_VARIABLES]
    for value in values:
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    text = re.sub(r"(?i)(sig=)[^&\s'\"]+", r"\1***", text)
    text = re.sub(r"(?i)(AccountKey=)[^;\s'\"]+", r"\1***", text)
    return text


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(url: str, variable: str) -> None:
    """Plain http is allowed only to loopback hosts (the emulator, local stand-ins)."""
    parsed = urlparse(url)
    if parsed.scheme == "https":
        return
    if parsed.scheme == "http" and is_loopback(parsed.hostname):
        return
    raise SettingsError(
        f"{variable} must use https (plain http is allowed only to 127.0.0.1/localhost, "
        f"for the emulator); got a {parsed.scheme or 'schemeless'} URL for host {parsed.hostname!r}"
    )


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _digits(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    raw = _get(env, name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise SettingsError(f"{name} must contain digits only, got {raw!r}")
    return str(int(raw))


def _prefix(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name)
    raw = default if raw is None else raw.strip()
    prefix = raw.strip("/")
    if prefix == "":
        return ""
    for segment in prefix.split("/"):
        if segment in ("", ".", ".."):
            raise SettingsError(
                f"{name} must not contain an empty, '.' or '..' path segment, got {raw!r}"
            )
    return prefix


def _container(env: Mapping[str, str], name: str, default: str) -> str:
    value = _get(env, name) or default
    if not _CONTAINER_RE.match(value):
        raise SettingsError(
            f"{name} must be a valid Azure container name (3-63 lowercase letters, digits "
            f"and single hyphens), got {value!r}"
        )
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _alert_webhook_set(env: Mapping[str, str]) -> bool:
    """Whether the webhook is set; its transport is checked here, its value is kept nowhere."""
    url = _get(env, "AMPLITUDE_ALERT_WEBHOOK_URL")
    if url is None:
        return False
    check_transport(url, "AMPLITUDE_ALERT_WEBHOOK_URL")  # names the scheme and host, never the path
    return True


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    value = (_get(env, name) or choices[0]).lower()
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _ui_url(env: Mapping[str, str], name: str) -> str | None:
    url = _get(env, name)
    if url is None:
        return None
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SettingsError(f"{name} must be the Dagster UI's address, such as https://dagster.example.com, got {url!r}")
    return url.rstrip("/")


@dataclass(frozen=True)
class Settings:
    project_id: str = "187520"
    org_id: str | None = None
    start: str = "2025-01-01-00:00"
    source: str = "synthetic"
    synthetic_events_per_hour: int = 2000
    synthetic_seed: int = 0
    region: str = "us"
    export_api_url: str | None = None
    files_url: str | None = None
    event_filter: str | None = None
    max_rows_per_file: int = 500_000
    export_delay_minutes: int = 10
    hours_per_run: int = 24
    catch_up_hours: int = 72
    sensor_max_attempts: int = 3
    sensor_interval_seconds: int = 300
    api_max_attempts: int = 6
    api_timeout_seconds: int = 600
    hour_lock_wait_seconds: int = 600
    events_container: str = "amplitude"
    events_prefix: str = ""
    merged_ids_container: str = "amplitude"
    merged_ids_prefix: str = "merged_ids"
    create_containers: bool = False
    late_after_minutes: int = 60
    alert_webhook_set: bool = False  # whether AMPLITUDE_ALERT_WEBHOOK_URL is set; its value is read only when sending
    alert_format: str = "auto"
    alert_ui_url: str | None = None
    alert_timeout_seconds: int = 10

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        source = (_get(env, "AMPLITUDE_SOURCE") or "synthetic").lower()
        if source not in SOURCES:
            raise SettingsError(f"AMPLITUDE_SOURCE must be one of {', '.join(SOURCES)}, got {source!r}")
        region = (_get(env, "AMPLITUDE_REGION") or "us").lower()
        if region not in REGION_URLS:
            raise SettingsError(f"AMPLITUDE_REGION must be us or eu, got {region!r}")
        start = _get(env, "AMPLITUDE_START") or "2025-01-01-00:00"
        parse_hour(start, "AMPLITUDE_START")

        events_container = _container(env, "AZURE_EVENTS_CONTAINER", "amplitude")
        merged_container = _container(env, "AZURE_MERGED_IDS_CONTAINER", events_container)
        shared = merged_container == events_container
        settings = cls(
            project_id=_digits(env, "AMPLITUDE_PROJECT_ID", "187520") or "187520",
            org_id=_digits(env, "AMPLITUDE_ORG_ID", None),
            start=start,
            source=source,
            synthetic_events_per_hour=_int(env, "AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR", 2000),
            synthetic_seed=_int(env, "AMPLITUDE_SYNTHETIC_SEED", 0),
            region=region,
            export_api_url=(_get(env, "AMPLITUDE_EXPORT_API_URL") or "").rstrip("/") or None,
            files_url=_get(env, "AMPLITUDE_FILES_URL"),
            event_filter=_get(env, "AMPLITUDE_EVENT_FILTER"),
            max_rows_per_file=_int(env, "AMPLITUDE_MAX_ROWS_PER_FILE", 500_000, minimum=1),
            export_delay_minutes=_int(
                env, "AMPLITUDE_EXPORT_DELAY_MINUTES", 120 if source == "export_api" else 10
            ),
            hours_per_run=_int(env, "AMPLITUDE_HOURS_PER_RUN", 24, minimum=1),
            catch_up_hours=_int(env, "AMPLITUDE_CATCH_UP_HOURS", 72, minimum=1),
            sensor_max_attempts=_int(env, "AMPLITUDE_SENSOR_MAX_ATTEMPTS", 3, minimum=1),
            sensor_interval_seconds=_int(env, "AMPLITUDE_SENSOR_INTERVAL_SECONDS", 300, minimum=30),
            api_max_attempts=_int(env, "AMPLITUDE_API_MAX_ATTEMPTS", 6, minimum=1),
            api_timeout_seconds=_int(env, "AMPLITUDE_API_TIMEOUT_SECONDS", 600, minimum=1),
            hour_lock_wait_seconds=_int(env, "AMPLITUDE_HOUR_LOCK_WAIT_SECONDS", 600),
            events_container=events_container,
            events_prefix=_prefix(env, "AZURE_EVENTS_PREFIX", ""),
            merged_ids_container=merged_container,
            merged_ids_prefix=_prefix(env, "AZURE_MERGED_IDS_PREFIX", "merged_ids" if shared else ""),
            create_containers=_bool(env, "AZURE_CREATE_CONTAINERS", False),
            late_after_minutes=_int(env, "AMPLITUDE_LATE_AFTER_MINUTES", 60),
            alert_webhook_set=_alert_webhook_set(env),
            alert_format=_choice(env, "AMPLITUDE_ALERT_FORMAT", ALERT_FORMATS),
            alert_ui_url=_ui_url(env, "AMPLITUDE_ALERT_UI_URL"),
            alert_timeout_seconds=_int(env, "AMPLITUDE_ALERT_TIMEOUT_SECONDS", 10, minimum=1),
        )
        settings.validate()
        duck.settings(env)  # checked here too, so a bad value stops the definitions from loading
        return settings

    # -- derived values ---------------------------------------------------------------
    @property
    def merged_ids_scope(self) -> str:
        """`-{org_id}`, or the project id for a legacy single-project org."""
        return f"-{self.org_id}" if self.org_id else self.project_id

    @property
    def export_api_base_url(self) -> str:
        return self.export_api_url or REGION_URLS[self.region]

    @property
    def start_hour(self) -> datetime:
        return parse_hour(self.start, "AMPLITUDE_START")

    def validate(self) -> None:
        events_folder = "/".join(p for p in (self.events_prefix, self.project_id) if p)
        merged_folder = "/".join(p for p in (self.merged_ids_prefix, self.merged_ids_scope) if p)
        if self.events_container == self.merged_ids_container and events_folder == merged_folder:
            raise SettingsError(
                "AZURE_MERGED_IDS_PREFIX: the merged-IDs folder would be the events folder "
                f"{self.events_container}/{events_folder}/; set AZURE_MERGED_IDS_PREFIX or "
                "AZURE_MERGED_IDS_CONTAINER so that they differ"
            )
        if self.export_api_url:  # the API key and secret travel in its Basic auth header
            check_transport(self.export_api_url, "AMPLITUDE_EXPORT_API_URL")
        if self.event_filter is not None:
            from amplitude_assets.filters import parse_filter

            parse_filter(self.event_filter)  # raises SettingsError naming the variable
