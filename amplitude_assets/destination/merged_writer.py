"""Writing one hour of merged IDs in the four-step order, under the hour's lease.

    1. delete the hour's marker;
    2. write the file `{scope}_{yyyy-MM-dd}_{H}.json.gz` with its Content-MD5 (only when
       the hour has merges; else delete a stale file of an earlier export);
    3. write the identity state the hour leaves (`[Q/]_state/...parquet`);
    4. write the marker, with the chain's two digests as blob metadata.

The state goes in just before the marker, so a marker always names a state that exists.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import polars as pl
from azure.storage.blob import ContainerClient

from amplitude_assets.destination.blobs import (
    GZIP_CONTENT,
    JSON_CONTENT,
    PARQUET_CONTENT,
    PartInfo,
    delete_if_exists,
    upload,
)
from amplitude_assets.destination.encoding import encode_records
from amplitude_assets.destination.lease import hour_lease
from amplitude_assets.destination.links import Link
from amplitude_assets.destination.manifest import Manifest
from amplitude_assets.identity import MergedHour
from amplitude_assets.layout import MergedIdsLayout
from amplitude_assets.partitions import manifest_hour, partition_key
from amplitude_assets.settings import Settings


def merged_hour_extra(layout: MergedIdsLayout, merged: MergedHour) -> dict[str, Any]:
    """The marker's account of the hour's identity state: where it is, and the state it started from."""
    extra: dict[str, Any] = {}
    if merged.history_starts:
        extra["identity_history_starts"] = manifest_hour(merged.hour)
    extra["state"] = {"name": layout.state(merged.hour), "stored_as": merged.state_stored_as,
                      "bytes": len(merged.state), "md5": merged.state_md5, "sizes": merged.state_sizes}
    started = merged.started_from
    extra["previous_state"] = {"name": started.name, "md5": started.md5} if started else None
    return extra


def write_merged_ids_hour(
    client: ContainerClient,
    layout: MergedIdsLayout,
    hour: datetime,
    rows: pl.DataFrame,
    state: bytes,
    *,
    source: str,
    counts: dict[str, int],
    extra: dict[str, Any],
    lock_wait_seconds: float = Settings.hour_lock_wait_seconds,
    holder: str | None = None,
    notify: Callable[[str], None] | None = None,
) -> Manifest:
    """Export one hour in the four-step order; the state goes in just before the marker.

    All of it under the hour's lease (`destination/lease.py`): two runs never write the
    state, file or marker of one hour at once. Another run's export of the hour makes this
    one wait up to `lock_wait_seconds`, then fail with `HourLocked`, changing nothing.
    """
    label = f"merged_ids {partition_key(hour)}"
    with hour_lease(client, layout.lock(hour), label, lock_wait_seconds, holder=holder, notify=notify) as lease:
        delete_if_exists(client, layout.marker(hour))
        parts = []
        if rows.height:
            info = upload(client, layout.file(hour), encode_records(rows), GZIP_CONTENT)
            parts.append(PartInfo(name=info.name, rows=rows.height, bytes=info.bytes, md5=info.md5))
        else:
            delete_if_exists(client, layout.file(hour))  # a stale file from an earlier export
        upload(client, layout.state(hour), state, PARQUET_CONTENT)
        manifest = Manifest(hour=hour, source=source, parts=parts, counts=counts, extra=extra)
        # The chain's two digests ride on the marker as blob metadata: one listing gives a day's links.
        link = Link(extra["state"]["md5"], (extra.get("previous_state") or {}).get("md5"))
        lease.confirm()
        upload(client, layout.marker(hour), manifest.to_json(), JSON_CONTENT, metadata=link.as_blob_metadata())
    return manifest
