"""The merged-ID chain's links: the identity state each hour started from, and the state it left.

Every merged-IDs marker records the md5 of the state its hour started from
(`previous_state`, null where the identity history starts) and of the state it left
(`state`); the marker blob carries the same two digests as blob metadata, so one listing
with metadata tells them for a whole day. An hour is stale when the hour before is
exported and its `state` is not this hour's `previous_state`. `chain.py` checks it per
hour; the merged-IDs IO manager and the sensor use the same rules.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient

from amplitude_assets.layout import MergedIdsLayout
from amplitude_assets.partitions import partition_key as hour_key

# Blob metadata on each merged-IDs marker (names must be C# identifiers; values never empty).
STATE_MD5 = "state_md5"
PREVIOUS_STATE_MD5 = "previous_state_md5"
NO_STATE = "none"  # the history starts at this hour
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Link:
    """One hour's place in the chain: the state it left, and the state it started from."""

    state: str
    previous: str | None  # None: the identity history starts at this hour

    def as_blob_metadata(self) -> dict[str, str]:
        return {STATE_MD5: self.state, PREVIOUS_STATE_MD5: self.previous or NO_STATE}

    @classmethod
    def from_blob_metadata(cls, metadata: Mapping[str, str] | None) -> "Link | None":
        """None for a marker written before the digests were put in its metadata."""
        metadata = {k.lower(): v for k, v in (metadata or {}).items()}
        if STATE_MD5 not in metadata or PREVIOUS_STATE_MD5 not in metadata:
            return None
        previous = metadata[PREVIOUS_STATE_MD5]
        return cls(metadata[STATE_MD5], None if previous == NO_STATE else previous)

    @classmethod
    def from_manifest(cls, manifest: Mapping) -> "Link":
        previous = manifest.get("previous_state") or {}
        return cls(str((manifest.get("state") or {}).get("md5")), previous.get("md5"))


def link_problem(hour: datetime, link: Link, before: Link | None) -> str | None:
    """Why `hour` is stale given the hour before's link, or None when it follows on (or nothing precedes it)."""
    if before is None:
        return None
    previous = hour_key(hour - HOUR)
    if link.previous is None:
        return (f"its identity history starts at {hour_key(hour)}, but {previous} is exported (state md5 "
                f"{before.state}): re-export merged_ids from {hour_key(hour)} on")
    if link.previous != before.state:
        return (f"it was derived from an identity state (md5 {link.previous}) other than the one {previous} "
                f"left (md5 {before.state}): re-export merged_ids from {hour_key(hour)} on")
    return None


def stale_hours(links: Mapping[datetime, Link]) -> dict[datetime, str]:
    """The stale hours among `links` (hour -> link of every exported hour known), each with its reason.

    An hour whose hour before is not in `links` starts a chain: it is judged only against
    what precedes it. An hour after a stale hour is stale too: it was derived from it.
    """
    stale: dict[datetime, str] = {}
    for hour in sorted(links):
        before = links.get(hour - HOUR)
        if before is None:
            continue
        if hour - HOUR in stale:
            stale[hour] = f"it was derived from {hour_key(hour - HOUR)}, which is stale"
            continue
        problem = link_problem(hour, links[hour], before)
        if problem:
            stale[hour] = problem
    return stale


def read_link(client: ContainerClient, layout: MergedIdsLayout, hour: datetime) -> Link | None:
    """The hour's link from its marker's manifest; None when the hour is not exported."""
    try:
        return Link.from_manifest(json.loads(client.download_blob(layout.marker(hour)).readall()))
    except ResourceNotFoundError:
        return None
