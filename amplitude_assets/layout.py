"""Blob names, in Amplitude's exact layout. No other module formats a blob name.

Events:      [P/]{project_id}/{project_id}_{yyyy-MM-dd}_{H}#{n}.json.gz
Marker:      [P/]{project_id}/{project_id}_{yyyy-MM-dd}_{H}_complete
Rejected:    [P/]_rejected/{project_id}/{project_id}_{yyyy-MM-dd}_{H}.jsonl.gz
Repaired:    [P/]_repaired/{project_id}/{project_id}_{yyyy-MM-dd}_{H}.jsonl.gz
Merged IDs:  [Q/]{scope}/{scope}_{yyyy-MM-dd}_{H}.json.gz   (scope is -{org_id} or {project_id})
State:       [Q/]_state/{scope}/...                          (identity state, outside reader globs)
Locks:       [P/]_locks/{project_id}/{project_id}_{yyyy-MM-dd}_{H}.lock, [Q/]_locks/{scope}/... (leased while exporting)
`H` is the UTC hour, not zero-padded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone


def hour_stem(scope: str, hour: datetime) -> str:
    """`187520_2020-01-25_17` for 17:00-18:00 UTC on 2020-01-25."""
    return f"{scope}_{hour:%Y-%m-%d}_{hour.hour}"


def _stem_hour(day: str, hour: str) -> datetime:
    """The UTC hour a stem names by its `{yyyy-MM-dd}` and `{H}` (`2020-01-25`, `17`)."""
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc) + timedelta(hours=int(hour))


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


@dataclass(frozen=True)
class EventsLayout:
    prefix: str
    project_id: str

    @property
    def folder(self) -> str:
        """The folder readers glob: `[P/]{project_id}/`."""
        return _join(self.prefix, self.project_id) + "/"

    def hour_prefix(self, hour: datetime) -> str:
        """Common prefix of an hour's parts and marker (`..._17`; callers add `#` or `_`)."""
        return self.folder + hour_stem(self.project_id, hour)

    def part(self, hour: datetime, n: int) -> str:
        return f"{self.hour_prefix(hour)}#{n}.json.gz"

    def parts_prefix(self, hour: datetime) -> str:
        return f"{self.hour_prefix(hour)}#"

    def day_prefix(self, hour: datetime) -> str:
        """Common prefix of every blob of the hour's UTC day: one listing finds a day's markers."""
        return f"{self.folder}{self.project_id}_{hour:%Y-%m-%d}_"

    def marker(self, hour: datetime) -> str:
        return f"{self.hour_prefix(hour)}_complete"

    def rejected(self, hour: datetime) -> str:
        return _join(self.prefix, "_rejected", self.project_id, hour_stem(self.project_id, hour)) + ".jsonl.gz"

    def repaired(self, hour: datetime) -> str:
        """The originals of the hour's repaired values, one JSON line per repair."""
        return _join(self.prefix, "_repaired", self.project_id, hour_stem(self.project_id, hour)) + ".jsonl.gz"

    def identities(self, hour: datetime) -> str:
        """The hour's identity observations, written beside the export for `merged_ids`."""
        return _join(self.prefix, "_state", self.project_id, "identities", hour_stem(self.project_id, hour)) + ".parquet"

    def lock(self, hour: datetime) -> str:
        """The blob whose lease an export of the hour holds (`destination/lease.py`)."""
        return _join(self.prefix, "_locks", self.project_id, hour_stem(self.project_id, hour)) + ".lock"

    def part_number(self, name: str, hour: datetime) -> int | None:
        """`n` of a part blob of this hour, or None when the name is not one."""
        match = re.fullmatch(re.escape(self.parts_prefix(hour)) + r"(\d+)\.json\.gz", name)
        return int(match.group(1)) if match else None


@dataclass(frozen=True)
class MergedIdsLayout:
    prefix: str
    scope: str  # "-{org_id}", or "{project_id}" for a legacy org

    @property
    def folder(self) -> str:
        return _join(self.prefix, self.scope) + "/"

    def hour_prefix(self, hour: datetime) -> str:
        return self.folder + hour_stem(self.scope, hour)

    def file(self, hour: datetime) -> str:
        return f"{self.hour_prefix(hour)}.json.gz"

    def marker(self, hour: datetime) -> str:
        return f"{self.hour_prefix(hour)}_complete"

    def day_prefix(self, hour: datetime) -> str:
        """Common prefix of every blob of the hour's UTC day: one listing finds a day's markers."""
        return f"{self.folder}{self.scope}_{hour:%Y-%m-%d}_"

    def state(self, hour: datetime) -> str:
        """The identity state after `hour` (Parquet): a snapshot, or a delta on the hour before."""
        return _join(self.prefix, "_state", self.scope, hour_stem(self.scope, hour)) + ".parquet"

    def lock(self, hour: datetime) -> str:
        """The blob whose lease an export of the merged-ID hour holds (`destination/lease.py`)."""
        return _join(self.prefix, "_locks", self.scope, hour_stem(self.scope, hour)) + ".lock"

    @property
    def state_folder(self) -> str:
        return _join(self.prefix, "_state", self.scope) + "/"

    def state_hour(self, name: str) -> datetime | None:
        """The hour of a state snapshot blob, or None when `name` is not one."""
        match = re.fullmatch(
            re.escape(self.state_folder + self.scope) + r"_(\d{4}-\d{2}-\d{2})_(\d{1,2})\.parquet", name
        )
        return _stem_hour(match.group(1), match.group(2)) if match else None


# Matches part names in Amplitude's layout, with or without a folder: captures the
# scope, the date, the hour and the part number.
PART_NAME_RE = re.compile(r"(?:^|/)(-?\d+)_(\d{4}-\d{2}-\d{2})_(\d{1,2})#(\d+)\.json\.gz$")


def part_hour(name: str) -> datetime | None:
    """The hour a part is named after (`..._2020-01-25_17#0.json.gz`, any scope and folder), or None."""
    match = PART_NAME_RE.search(name)
    return _stem_hour(match.group(2), match.group(3)) if match else None


def split_az_url(url: str) -> tuple[str, str]:
    """`az://container/some/prefix` -> ("container", "some/prefix"); the prefix may be empty."""
    path = url[len("az://"):] if url.startswith("az://") else url
    container, _, prefix = path.strip("/").partition("/")
    prefix = prefix.strip("/")
    if not container or any(s in ("", ".", "..") for s in prefix.split("/") if prefix):
        raise ValueError(f"expected az://container/prefix with no empty or '..' segment, got {url!r}")
    return container, prefix


def probe_blob_name(prefix: str) -> str:
    """The blob the destination test writes, reads back and deletes."""
    return _join(prefix, "_amplitude_assets_probe") + ".txt"
