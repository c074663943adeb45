"""JSON lines read in chunks that end at line boundaries, from plain or gzip streams, and
`prefetch`, which reads the next chunk in a thread while the caller works on this one.

Both ends of the export use them: the sources read Amplitude-layout files and Export API
entries with them, and the writer reads back its own compressed parts (`written_lines`).
"""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Iterator
from typing import IO

import polars as pl
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


def written_lines(chunk: bytes) -> pl.Series:
    """The lines of a chunk of JSON lines the exporter wrote itself, as one string column.

    Its own text needs none of what reading a source does (`transform.read_lines`): it is
    UTF-8, each line a JSON object that ends in `}` and a newline, with no byte-order
    mark, no blank line and no carriage return before the newline, so splitting it at the
    newlines gives the lines exactly.
    """
    return pl.read_lines(io.BytesIO(chunk), name="line").to_series()


def gzip_line_chunks(raw: IO[bytes], chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The lines of a gzip stream (multi-member too), decompressed a chunk at a time."""
    with igzip.IGzipFile(fileobj=raw, mode="rb") as gz:
        yield from line_chunks(gz, chunk_bytes)


def is_gzip(head: bytes) -> bool:
    return head[:2] == GZIP_MAGIC


def prefetch(items: Iterator, depth: int = 1, *, handoff: bool = False) -> Iterator:
    """Produce the next items in a background thread while the caller works on this one.

    With `handoff`, the producer makes an item only once the caller has taken the one
    before: at most two items are alive, the caller's and the next one, instead of a
    third waiting in the queue. For large items (a parsed chunk) that bounds memory.

    If the caller stops early (an error in the hour), the producer is told to stop and
    its queue drained, so no thread is left holding a chunk or the source's download.
    """
    done = object()
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    taken = threading.Semaphore(0)  # released each time the caller takes an item
    failure: list[BaseException] = []

    def put(item, wait: bool = handoff) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                break
            except queue.Full:
                continue
        else:
            return False
        while wait and not taken.acquire(timeout=0.1):
            if stop.is_set():
                return False
        return True

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    break
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)
        finally:
            put(done, wait=False)  # the caller takes it and stops: nothing to wait for
            close = getattr(items, "close", None)
            if stop.is_set() and close is not None:
                close()

    thread = threading.Thread(target=produce, name="amplitude-source", daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not done:
            taken.release()
            yield item
    finally:
        stop.set()
        while True:
            try:
                buffer.get_nowait()
            except queue.Empty:
                break
        thread.join(timeout=30)
    if failure:
        raise failure[0]
