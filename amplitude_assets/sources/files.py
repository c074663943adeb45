"""Amplitude-layout files: this project's own output, or Amplitude's export copied somewhere.

AMPLITUDE_FILES_URL is the root that plays the part of a prefix, either a local folder or
`az://container/prefix` (read with the same Azure credentials as the destination). An
hour is `{root}/{project_id}/{project_id}_{yyyy-MM-dd}_{H}#{n}.json.gz`, read in order of
`n`. `_complete` markers and other non-gzip objects are skipped, and an hour with no
marker is still read: Amplitude writes its markers only sometimes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO

import dagster as dg
from azure.core.exceptions import ResourceNotFoundError

from amplitude_assets.layout import EventsLayout, split_az_url
from amplitude_assets.lines import CHUNK_BYTES, gzip_line_chunks, is_gzip
from amplitude_assets.partitions import utc_hour
from amplitude_assets.settings import SettingsError

log = dg.get_dagster_logger("amplitude_assets.files")


class FilesSource:
    """Reads an hour's parts from a local folder or an Azure container."""

    name = "files"

    def __init__(self, files_url: str, project_id: str, storage=None, chunk_bytes: int = CHUNK_BYTES):
        self.files_url = files_url
        self.chunk_bytes = chunk_bytes
        self._container = None
        if files_url.startswith("az://"):
            try:
                container, prefix = split_az_url(files_url)
            except ValueError as exc:
                raise SettingsError(f"AMPLITUDE_FILES_URL: {exc}") from None
            if storage is None:
                raise SettingsError(
                    f"AMPLITUDE_FILES_URL points at Azure ({files_url}); reading it needs the Azure "
                    "credentials (AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_URL)"
                )
            self._container_name = container
            self._storage = storage
            self.layout = EventsLayout(prefix, str(project_id))
            self.root = None
        else:
            local = files_url[len("file://"):] if files_url.startswith("file://") else files_url
            self.root = Path(local).expanduser()
            self.layout = EventsLayout("", str(project_id))

    # -- listing ----------------------------------------------------------------------

    def parts(self, hour: datetime) -> list[tuple[int, str]]:
        """(n, name) of the hour's part files in order of n; names relative to the root."""
        hour = utc_hour(hour)
        if self.root is not None:
            folder = self.root / self.layout.folder
            if not folder.is_dir():
                raise SettingsError(
                    f"AMPLITUDE_FILES_URL: there is no folder {folder}; the files source reads "
                    "Amplitude's layout, {root}/{project_id}/{project_id}_{date}_{H}#{n}.json.gz"
                )
            names = (self.layout.folder + p.name for p in folder.iterdir() if p.is_file())
        else:
            names = (b.name for b in self._list(self.layout.parts_prefix(hour)))
        numbered = ((self.layout.part_number(name, hour), name) for name in names)
        return sorted((n, name) for n, name in numbered if n is not None)

    def _client(self):
        if self._container is None:
            self._container = self._storage.container(self._container_name)
        return self._container

    def _list(self, prefix: str):
        try:
            return list(self._client().list_blobs(name_starts_with=prefix))
        except ResourceNotFoundError:
            raise SettingsError(
                f"AMPLITUDE_FILES_URL: container {self._container_name!r} does not exist "
                f"(from {self.files_url})"
            ) from None

    def _open(self, name: str) -> IO[bytes]:
        """A seekable binary stream of one file; a blob is spooled to a temporary file."""
        if self.root is not None:
            return open(self.root / name, "rb")
        spool = tempfile.TemporaryFile(prefix="amplitude-part-")
        try:
            # decompress=False: a blob stored with Content-Encoding gzip still comes as gzip.
            self._client().download_blob(name, decompress=False).readinto(spool)
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool

    # -- Source -----------------------------------------------------------------------

    def iter_lines(self, hour: datetime) -> Iterator[bytes]:
        hour = utc_hour(hour)
        parts = self.parts(hour)
        log.info("files source: hour %s has %d part(s) under %s", f"{hour:%Y-%m-%d %H}:00", len(parts), self.files_url)
        for _, name in parts:
            with self._open(name) as stream:
                if not is_gzip(stream.read(2)):
                    log.warning("files source: skipping %s, which is not gzip", name)
                    continue
                stream.seek(0)
                yield from gzip_line_chunks(stream, self.chunk_bytes)
