"""The hour's manifest, which is the body of its `_complete` marker, and reading markers back.

A marker exists only for a complete hour (the writer writes it last), so the manifest is
what a reader trusts: the parts with their rows, sizes and MD5s, and the hour's counts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient

from amplitude_assets import __version__
from amplitude_assets.destination.blobs import PartInfo
from amplitude_assets.partitions import manifest_hour

MANIFEST_VERSION = 1
SOFTWARE = f"amplitude_assets {__version__}"


@dataclass
class Manifest:
    hour: datetime
    source: str
    parts: list[PartInfo]
    counts: dict[str, int]
    exported_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    extra: dict = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    def to_json(self) -> bytes:
        body = {
            "version": MANIFEST_VERSION,
            "hour": manifest_hour(self.hour),
            "source": self.source,
            "parts": [p.as_dict() for p in self.parts],
            "rows": self.rows,
            "counts": self.counts,
            **self.extra,
            "exported_at": self.exported_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "software": SOFTWARE,
        }
        return json.dumps(body, indent=1).encode()


def read_marker(container: ContainerClient, name: str) -> dict | None:
    try:
        return json.loads(container.download_blob(name).readall())
    except ResourceNotFoundError:
        return None


def existing_markers(container: ContainerClient, prefix: str, names: Sequence[str]) -> set[str]:
    """Which of `names` exist, from one listing under `prefix`."""
    wanted = set(names)
    return {b.name for b in container.list_blobs(name_starts_with=prefix) if b.name in wanted}
