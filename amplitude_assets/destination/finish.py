"""Steps 3 and 4 of an hour's export, once its parts are committed: stale parts, the side
files (rejects, repairs, identities), and last the marker, whose body is the manifest."""

from __future__ import annotations

from datetime import datetime

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
from amplitude_assets.destination.encoding import encode_rejects, encode_repairs
from amplitude_assets.destination.lease import HourLease
from amplitude_assets.destination.manifest import Manifest
from amplitude_assets.layout import EventsLayout
from amplitude_assets.transform import Counts


def finish_hour(
    container: ContainerClient,
    layout: EventsLayout,
    hour: datetime,
    parts: list[PartInfo],
    rejects: pl.DataFrame,
    identities: bytes,
    counts: Counts,
    source: str,
    repairs: pl.DataFrame | None = None,
    lease: HourLease | None = None,
    validated: dict | None = None,
) -> Manifest:
    """Steps 3 and 4, once the parts are committed: stale parts, rejects, repairs, identities, marker.

    Under `lease`, the marker is written only once the lease is confirmed still held.
    """
    delete_stale_parts(container, layout, hour, keep=len(parts))
    if rejects.height:
        upload(container, layout.rejected(hour), encode_rejects(rejects), GZIP_CONTENT)
    else:
        delete_if_exists(container, layout.rejected(hour))
    if repairs is not None and repairs.height:
        upload(container, layout.repaired(hour), encode_repairs(repairs), GZIP_CONTENT)
    else:
        delete_if_exists(container, layout.repaired(hour))
    upload(container, layout.identities(hour), identities, PARQUET_CONTENT)  # Parquet, for merged_ids
    manifest = Manifest(hour=hour, source=source, parts=parts, counts=counts.as_dict(),
                        extra={"validated": validated} if validated is not None else {})
    if lease is not None:
        lease.confirm()
    upload(container, layout.marker(hour), manifest.to_json(), JSON_CONTENT)
    return manifest


def delete_stale_parts(container: ContainerClient, layout: EventsLayout, hour: datetime, keep: int) -> list[str]:
    """Delete parts numbered `keep` and above (one by one; batch delete is not portable)."""
    stale = []
    for blob in container.list_blobs(name_starts_with=layout.parts_prefix(hour)):
        n = layout.part_number(blob.name, hour)
        if n is not None and n >= keep:
            delete_if_exists(container, blob.name)
            stale.append(blob.name)
    return stale
