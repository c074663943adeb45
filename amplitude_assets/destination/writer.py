"""Writing an hour to the container: parts, stale parts, rejects and the marker, in order.

Exporting an hour runs in this order, so an hour that has a marker is always complete:
  1. delete the hour's marker, if there is one;
  2. write and commit the parts (gzip JSON lines), each with its Content-MD5;
  3. delete stale parts (a higher `n` left by an earlier export);
  4. write the new marker, whose body is the JSON manifest.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import polars as pl
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient, ContentSettings
from isal import igzip

from amplitude_assets import __version__
from amplitude_assets.destination.layout import EventsLayout
from amplitude_assets.schema import EVENT_KINDS, TIMESTAMP_FORMAT, Kind
from amplitude_assets.transform import HourResult

GZIP_LEVEL = 2  # isal igzip: level 2 compresses about as well as zlib 6, ten times faster
GZIP_CONTENT = ContentSettings(content_type="application/gzip")
MANIFEST_VERSION = 1
SOFTWARE = f"amplitude_assets {__version__}"


# -- encoding ---------------------------------------------------------------------------


def _json_scalar(expr: pl.Expr) -> pl.Expr:
    """A column's values as JSON literals (`"text"`, `12`, `1.5`, `true`, `null`)."""
    return pl.struct(expr.alias("v")).struct.json_encode().str.slice(5).str.head(-1)


def json_fragment(name: str, kind: Kind | None) -> pl.Expr:
    """The JSON text of field `name`; `kind` None means an extra field already held as JSON."""
    col = pl.col(name)
    if kind is None:
        return col.fill_null("null")
    if kind is Kind.DICT:
        return col.fill_null("{}")
    if kind is Kind.TIMESTAMP:
        return pl.concat_str(pl.lit('"'), col.dt.strftime(TIMESTAMP_FORMAT), pl.lit('"')).fill_null("null")
    return _json_scalar(col)


def encode_lines(frame: pl.DataFrame, kinds: dict[str, Kind | None] | None = None) -> pl.DataFrame:
    """One JSON object per row, keys in the frame's column order, as a `line` column."""
    kinds = EVENT_KINDS if kinds is None else kinds
    pieces: list[pl.Expr] = []
    for i, name in enumerate(frame.columns):
        key = json.dumps(name, ensure_ascii=False)
        pieces.append(pl.lit(("{" if i == 0 else ",") + key + ":"))
        pieces.append(json_fragment(name, kinds.get(name)))
    pieces.append(pl.lit("}"))
    return frame.select(pl.concat_str(pieces).alias("line"))


def jsonl_bytes(lines: pl.DataFrame) -> bytes:
    """UTF-8 JSON lines, each ending in a newline."""
    if lines.height == 0:
        return b""
    buffer = io.BytesIO()
    lines.write_csv(buffer, include_header=False, quote_style="never", line_terminator="\n")
    return buffer.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip: fixed compressor and level, mtime 0."""
    return igzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


def encode_records(frame: pl.DataFrame) -> bytes:
    """gzip JSON lines of a frame whose columns are all plain scalars (rejects, merged IDs)."""
    kinds = {name: Kind.STRING for name in frame.columns}
    return gzip_bytes(jsonl_bytes(encode_lines(frame, kinds)))


# -- blobs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartInfo:
    name: str  # the blob's file name, without its folder
    rows: int
    bytes: int
    md5: str  # hex

    def as_dict(self) -> dict:
        return {"name": self.name, "rows": self.rows, "bytes": self.bytes, "md5": self.md5}


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
            "hour": self.hour.strftime("%Y-%m-%dT%H:00:00Z"),
            "source": self.source,
            "parts": [p.as_dict() for p in self.parts],
            "rows": self.rows,
            "counts": self.counts,
            **self.extra,
            "exported_at": self.exported_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "software": SOFTWARE,
        }
        return json.dumps(body, indent=1).encode()

    @staticmethod
    def from_json(data: bytes) -> dict:
        return json.loads(data)


def upload(container: ContainerClient, name: str, data: bytes, content: ContentSettings) -> PartInfo:
    """One atomic blob write with its Content-MD5 set, replacing any blob of that name."""
    digest = hashlib.md5(data).digest()
    settings = ContentSettings(
        content_type=content.content_type,
        content_md5=bytearray(digest),
    )
    container.upload_blob(
        name, data, overwrite=True, content_settings=settings, max_concurrency=4
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


def b64_md5(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def part_slices(height: int, max_rows: int) -> list[tuple[int, int]]:
    """(offset, length) of each part: at most `max_rows` rows, no empty part."""
    return [(offset, min(max_rows, height - offset)) for offset in range(0, height, max_rows)]


def write_events_hour(
    container: ContainerClient,
    layout: EventsLayout,
    result: HourResult,
    *,
    source: str,
    max_rows_per_file: int,
    on_part: Callable[[PartInfo], None] | None = None,
) -> Manifest:
    """Export one hour in the four-step order; returns the manifest written in the marker."""
    hour = result.hour
    delete_if_exists(container, layout.marker(hour))

    slices = part_slices(result.frame.height, max_rows_per_file)

    def write_part(n: int, offset: int, length: int) -> PartInfo:
        lines = encode_lines(result.frame.slice(offset, length))
        info = upload(container, layout.part(hour, n), gzip_bytes(jsonl_bytes(lines)), GZIP_CONTENT)
        info = PartInfo(name=info.name, rows=length, bytes=info.bytes, md5=info.md5)
        if on_part:
            on_part(info)
        return info

    # Parts are independent: encode, compress and upload them concurrently (polars and
    # igzip release the GIL); keep them in part order in the manifest.
    with ThreadPoolExecutor(max_workers=2) as pool:
        parts = list(pool.map(lambda args: write_part(*args), [(n, o, ln) for n, (o, ln) in enumerate(slices)]))

    delete_stale_parts(container, layout, hour, keep=len(parts))

    rejected_name = layout.rejected(hour)
    if result.rejects.height:
        upload(container, rejected_name, encode_records(result.rejects), GZIP_CONTENT)
    else:
        delete_if_exists(container, rejected_name)

    upload(container, layout.identities(hour), parquet_bytes(result.identities), ContentSettings(content_type="application/vnd.apache.parquet"))

    manifest = Manifest(hour=hour, source=source, parts=parts, counts=result.counts.as_dict())
    upload(container, layout.marker(hour), manifest.to_json(), ContentSettings(content_type="application/json"))
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


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd", statistics=False)
    return buffer.getvalue()


def read_marker(container: ContainerClient, name: str) -> dict | None:
    try:
        return json.loads(container.download_blob(name).readall())
    except ResourceNotFoundError:
        return None


def existing_markers(container: ContainerClient, prefix: str, names: Sequence[str]) -> set[str]:
    """Which of `names` exist, from one listing under `prefix`."""
    wanted = set(names)
    return {b.name for b in container.list_blobs(name_starts_with=prefix) if b.name in wanted}
