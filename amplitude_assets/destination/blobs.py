"""Blob writes and deletes: one atomic upload with its Content-MD5, a delete that tolerates absence.

`PartInfo` is what the manifest records of a blob it names: its file name, rows, size and MD5.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient, ContentSettings

GZIP_CONTENT = ContentSettings(content_type="application/gzip")
JSON_CONTENT = ContentSettings(content_type="application/json")
PARQUET_CONTENT = ContentSettings(content_type="application/vnd.apache.parquet")


@dataclass(frozen=True)
class PartInfo:
    name: str  # the blob's file name, without its folder
    rows: int
    bytes: int
    md5: str  # hex

    def as_dict(self) -> dict:
        return {"name": self.name, "rows": self.rows, "bytes": self.bytes, "md5": self.md5}


def upload(
    container: ContainerClient, name: str, data: bytes, content: ContentSettings, metadata: dict[str, str] | None = None
) -> PartInfo:
    """One atomic blob write with its Content-MD5 set (and optional blob metadata), replacing any blob of that name."""
    digest = hashlib.md5(data).digest()
    settings = ContentSettings(
        content_type=content.content_type,
        content_md5=bytearray(digest),
    )
    container.upload_blob(
        name, data, overwrite=True, content_settings=settings, max_concurrency=4, metadata=metadata
    )
    return PartInfo(name=name.rsplit("/", 1)[-1], rows=0, bytes=len(data), md5=digest.hex())


def delete_if_exists(container: ContainerClient, name: str) -> bool:
    try:
        container.delete_blob(name)
        return True
    except ResourceNotFoundError:
        return False


def md5_hex(content_md5: bytes | bytearray | None) -> str | None:
    return bytes(content_md5).hex() if content_md5 else None
