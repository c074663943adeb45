"""What the container says about the hours `hourly_export_sensor` looks at (step 2 of its tick).

One listing per day and destination: the events markers, and the merged-IDs markers with
their blob metadata, whose chain links tell which hours' merged IDs are stale (`chain.py`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from azure.core.exceptions import ResourceNotFoundError

from amplitude_assets.destination.credentials import AzureStorage
from amplitude_assets.destination.links import Link, stale_hours
from amplitude_assets.layout import EventsLayout, MergedIdsLayout
from amplitude_assets.partitions import parse_hour, partition_key
from amplitude_assets.settings import Settings


def present_markers(client, prefixes: Iterable[str], markers: set[str]) -> dict[str, datetime]:
    """Which of `markers` exist, and when each was last written (the listing's Last-Modified):
    one listing per prefix; a missing container holds none."""
    found: dict[str, datetime] = {}
    for prefix in sorted(set(prefixes)):
        try:
            found |= {b.name: b.last_modified for b in client.list_blobs(name_starts_with=prefix) if b.name in markers}
        except ResourceNotFoundError:
            return {}
    return found


def marker_links(client, layout: MergedIdsLayout, hours: list[datetime]) -> dict[datetime, Link | None]:
    """hour -> the chain link its merged-IDs marker carries (None: a marker without one), for markers present.

    One listing per day, with blob metadata; a missing container holds none.
    """
    markers = {layout.marker(h): h for h in hours}
    found: dict[datetime, Link | None] = {}
    for prefix in sorted({layout.day_prefix(h) for h in hours}):
        try:
            for blob in client.list_blobs(name_starts_with=prefix, include=["metadata"]):
                if blob.name in markers:
                    found[markers[blob.name]] = Link.from_blob_metadata(blob.metadata)
        except ResourceNotFoundError:
            return {}
    return found


@dataclass(frozen=True)
class Exported:
    """What the container says about the hours a tick looks at."""

    events: set[str]  # hours with an events marker
    merged_ids: set[str]  # hours with a merged-IDs marker that is not stale
    stale: dict[str, str]  # hours whose merged IDs are stale, and why
    events_landed: dict[str, datetime] = field(default_factory=dict)  # hour -> when its events marker was written

    @property
    def done(self) -> set[str]:
        return self.events & self.merged_ids


def exported_hours(settings: Settings, storage: AzureStorage, keys: list[str]) -> Exported:
    """Which of `keys` have their events marker, and a merged-IDs marker that is not stale (`chain.py`)."""
    hours = {k: parse_hour(k) for k in keys}
    events_layout = EventsLayout(settings.events_prefix, settings.project_id)
    markers = {events_layout.marker(h): k for k, h in hours.items()}
    found = present_markers(
        storage.container(settings.events_container), (events_layout.day_prefix(h) for h in hours.values()), set(markers)
    )
    events = {markers[name] for name in found}
    landed = {markers[name]: written for name, written in found.items()}
    layout = MergedIdsLayout(settings.merged_ids_prefix, settings.merged_ids_scope)
    # The hour before the first one too: the first hour is judged against it.
    looked_at = sorted(hours.values())
    links = marker_links(storage.container(settings.merged_ids_container), layout,
                         [looked_at[0] - timedelta(hours=1), *looked_at] if looked_at else [])
    known = {h: link for h, link in links.items() if link is not None}  # a marker without digests is trusted
    stale = {key: reason for hour, reason in stale_hours(known).items() if (key := partition_key(hour)) in hours}
    merged = {k for k, h in hours.items() if h in links and k not in stale}
    return Exported(events=events, merged_ids=merged, stale=stale, events_landed=landed)


def listed_exported(settings: Settings, storage: AzureStorage, due: list[str]) -> Exported:
    """`exported_hours`, failing the tick with a message that carries no secret."""
    try:
        return exported_hours(settings, storage, due)
    except Exception as exc:
        raise Exception(
            f"could not list the markers at {storage.endpoint}: "
            + storage.redact(f"{type(exc).__name__}: {exc}")
        ) from None
