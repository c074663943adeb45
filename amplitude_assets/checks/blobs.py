"""Reading the container for the checks: listings, whole small blobs, and parts streamed a batch at a time.

A part is downloaded and decompressed as it arrives, BATCH_BYTES of text at a time, and
handed on as a `Batch` of whole lines: the working set is a batch, whatever the part's size.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import polars as pl
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient
from isal import igzip

from amplitude_assets.destination.blobs import md5_hex

BATCH_BYTES = 32 << 20  # decompressed text scanned at a time


def list_blobs(client: ContainerClient, prefix: str) -> dict[str, dict]:
    """name -> {size, md5 (hex or None)} of the blobs under `prefix`; empty when there is no container."""
    try:
        return {
            b.name: {
                "size": b.size,
                "md5": md5_hex(b.content_settings.content_md5),
            }
            for b in client.list_blobs(name_starts_with=prefix)
        }
    except ResourceNotFoundError:
        return {}


def read_blob(client: ContainerClient, name: str) -> bytes | None:
    try:
        return client.download_blob(name).readall()
    except ResourceNotFoundError:
        return None


class BlobReader(io.RawIOBase):
    """A blob download as a file object: read as it arrives, a few megabytes at a time."""

    def __init__(self, downloader) -> None:
        self.downloader = downloader

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.downloader.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@dataclass
class Batch:
    """Consecutive lines of one file: `lines` are lines `first_line`, `first_line + 1`, ..."""

    file: str
    first_line: int
    lines: pl.Series


def file_batches(client: ContainerClient, name: str, problems: list[dict],
                 batch_bytes: int = BATCH_BYTES) -> Iterator[Batch]:
    """The lines of one gzip blob, streamed and decompressed `batch_bytes` at a time.

    A file that is not gzip of UTF-8 lines, or whose last line lacks its newline, adds a
    problem to `problems`; the lines before the damage are still checked.
    """
    line = 1
    rest = b""
    try:
        stream = BlobReader(client.download_blob(name, max_concurrency=1))
        with igzip.IGzipFile(fileobj=stream, mode="rb") as gz:
            while block := gz.read(batch_bytes):
                if rest:
                    block, rest = rest + block, b""
                cut = block.rfind(b"\n") + 1
                rest = block[cut:]
                if cut:
                    lines = _lines(block[:cut] if rest else block)
                    del block
                    yield Batch(name, line, lines)
                    line += len(lines)
    except ResourceNotFoundError:
        problems.append({"file": name, "problem": "listed, but gone before it could be read"})
        return
    except (OSError, EOFError, ValueError, pl.exceptions.ComputeError) as exc:
        problems.append({"file": name, "problem": f"not readable gzip UTF-8 JSON lines: {exc}"})
        return
    if rest:
        problems.append({"file": name, "line": line, "problem": "the last line does not end in a newline"})
        try:
            yield Batch(name, line, _lines(rest + b"\n"))
        except pl.exceptions.ComputeError as exc:
            problems.append({"file": name, "problem": f"not readable gzip UTF-8 JSON lines: {exc}"})


def _lines(text: bytes) -> pl.Series:
    """Newline-terminated UTF-8 lines as a string column (raises on invalid UTF-8)."""
    return pl.read_lines(io.BytesIO(text)).to_series().rename("text")


def iter_batches(client: ContainerClient, names: list[str], problems: list[dict], batch_bytes: int) -> Iterator[Batch]:
    for name in names:
        yield from file_batches(client, name, problems, batch_bytes)


def fetch_lines(client: ContainerClient, wanted: dict[str, set[int]]) -> dict[tuple[str, int], str]:
    """The text of a few lines, by file and line number (read again: only when keys repeat)."""
    found: dict[tuple[str, int], str] = {}
    for name, numbers in wanted.items():
        last = max(numbers)
        for batch in file_batches(client, name, []):
            for number in numbers:
                if batch.first_line <= number < batch.first_line + len(batch.lines):
                    found[(name, number)] = batch.lines[number - batch.first_line]
            if batch.first_line + len(batch.lines) > last:
                break
    return found
