"""JSON lines read in chunks that end at line boundaries, from plain or gzip streams.

Both ends of the export use them: the sources read Amplitude-layout files and Export API
entries with them, and the writer reads back its own compressed parts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

from isal import igzip

CHUNK_BYTES = 8 << 20
GZIP_MAGIC = b"\x1f\x8b"


def line_chunks(stream: IO[bytes], chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Read JSON lines in chunks that each end at a line boundary.

    A last line without its newline (as in Amplitude's Export API entries) gets one, so
    the next file's first line never joins it.
    """
    rest = b""
    while True:
        block = stream.read(chunk_bytes)
        if not block:
            break
        if rest:
            block = rest + block
        cut = block.rfind(b"\n") + 1
        if cut:
            yield block[:cut]
        rest = block[cut:]
    if rest:
        yield rest + b"\n"


def gzip_line_chunks(raw: IO[bytes], chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The lines of a gzip stream (multi-member too), decompressed a chunk at a time."""
    with igzip.IGzipFile(fileobj=raw, mode="rb") as gz:
        yield from line_chunks(gz, chunk_bytes)


def is_gzip(head: bytes) -> bool:
    return head[:2] == GZIP_MAGIC
