"""An hour's parts staged as uncommitted blocks while later chunks are shaped, then committed at once.

`HourUpload` cuts the hour's lines into parts of `max_rows_per_file` rows, has the
compressor thread compress them as they come and stage each full part's blocks, rebuilds
a part that lacks a late extra key, and commits every part in the end. A staged block
changes nothing: until the commit the container is as it was, so an hour that fails
midway leaves an earlier export of it whole.
"""

from __future__ import annotations

import base64
import collections
import os
import secrets
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime

import polars as pl
from azure.storage.blob import BlobBlock, ContainerClient, ContentSettings

from amplitude_assets.destination.blobs import GZIP_CONTENT
from amplitude_assets.destination.encoding import jsonl_bytes
from amplitude_assets.destination.parts import Part, rebuild_part
from amplitude_assets.layout import EventsLayout
from amplitude_assets.shaping import Timer

BLOCK_BYTES = 32 << 20  # staged block size


def stage_blocks(container: ContainerClient, name: str, path: str, size: int, tag: str, pool: ThreadPoolExecutor) -> list[str]:
    """Stage the file at `path` as blocks of `name` (uncommitted: the blob does not change yet).

    Each block is read from the file when its upload starts, so only the blocks being
    sent are in memory.
    """
    blob = container.get_blob_client(name)

    def stage(block_id: str, offset: int) -> None:
        with open(path, "rb") as copy:
            copy.seek(offset)
            # validate_content: the block's MD5 goes with it, and Azure refuses a block that
            # did not arrive as sent.
            blob.stage_block(block_id, copy.read(BLOCK_BYTES), validate_content=True)

    ids = [base64.b64encode(f"{tag}-{i:06d}".encode()).decode() for i in range(max(1, -(-size // BLOCK_BYTES)))]
    for future in [pool.submit(stage, block_id, i * BLOCK_BYTES) for i, block_id in enumerate(ids)]:
        future.result()
    return ids


def commit_blocks(container: ContainerClient, name: str, part: Part) -> None:
    """Make the staged blocks the blob, with its Content-MD5 and type, in one commit."""
    settings = ContentSettings(content_type=GZIP_CONTENT.content_type, content_md5=bytearray(bytes.fromhex(part.info.md5)))
    container.get_blob_client(name).commit_block_list([BlobBlock(block_id=i) for i in part.blocks], content_settings=settings)


class HourUpload:
    """One hour's parts, from its lines to committed blobs.

    `add` cuts a chunk's lines into the parts, `seal` finishes the last part, waits for the
    compressor and rebuilds the parts that lack some of the hour's extra keys, and `commit`
    makes every part its blob. The parts' copies go under `workdir`; `compressor` (one
    thread) compresses and seals full parts in order, `uploads` stages and commits blocks.
    """

    def __init__(self, container: ContainerClient, layout: EventsLayout, hour: datetime, timer: Timer, *,
                 max_rows_per_file: int, workdir: str, compressor: ThreadPoolExecutor,
                 uploads: ThreadPoolExecutor) -> None:
        self.container = container
        self.layout = layout
        self.hour = hour
        self.timer = timer
        self.max_rows_per_file = max_rows_per_file
        self.workdir = workdir
        self.compressor = compressor
        self.uploads = uploads
        # Block IDs of this export alone: another export of the same hour at the same time
        # stages its own blocks, and each commit takes only its own.
        self.run = secrets.token_hex(6)
        self.parts: list[Part] = []
        # The compressor thread takes the parts' text and seals full parts, in order; the
        # caller's thread waits only when two pieces of work are already queued for it.
        self.queued: collections.deque[Future] = collections.deque()

    def add(self, lines: pl.DataFrame, keys: tuple[str, ...]) -> None:
        """A chunk's lines (written with extra keys `keys`), cut into the parts as they fill."""
        start = 0
        while start < lines.height:
            part = self._open_part()
            take = min(self.max_rows_per_file - part.rows, lines.height - start)
            with self.timer("serialize"):
                data = jsonl_bytes(lines.slice(start, take))
            part.note(take, keys)
            self._to_compressor(self._compress, part, data)
            del data
            start += take
            if part.rows == self.max_rows_per_file:
                self._hand_over(part)

    def seal(self, extras: list[str]) -> None:
        """After the last chunk: the last part handed over, all staged, and every part that
        lacks some of the hour's `extras` rebuilt from its copy and staged again."""
        parts = self.parts
        if parts and parts[-1].rows < self.max_rows_per_file:
            self._hand_over(parts[-1])
        while self.queued:
            self.queued.popleft().result()
        for part in parts:
            if part.lacks_keys(extras):
                rebuild_part(part, extras, self.timer)
                self._seal(part, f"{self.run}-{part.number:06d}-1")

    def commit(self) -> None:
        """Every part's staged blocks made its blob (the container changes only now)."""
        container, layout, hour = self.container, self.layout, self.hour
        with self.timer("upload"):
            list(self.uploads.map(lambda part: commit_blocks(container, layout.part(hour, part.number), part), self.parts))

    def _open_part(self) -> Part:
        """The part the next lines go into: the last one, or a new one when it is full."""
        parts = self.parts
        if not parts or parts[-1].rows == self.max_rows_per_file:
            parts.append(Part(number=len(parts), path=os.path.join(self.workdir, f"{len(parts)}.gz")))
        return parts[-1]

    def _seal(self, part: Part, tag: str) -> None:
        """Finish a full part's compression and stage its blocks."""
        name = self.layout.part(self.hour, part.number)
        with self.timer("compress"):
            part.finish(name)
        with self.timer("upload"):
            part.blocks = stage_blocks(self.container, name, part.path, part.info.bytes, tag, self.uploads)

    def _compress(self, part: Part, data: bytes) -> None:
        with self.timer("compress"):
            part.gz.write(data)

    def _to_compressor(self, fn: Callable, *args) -> None:
        while len(self.queued) >= 2:
            self.queued.popleft().result()
        self.queued.append(self.compressor.submit(fn, *args))

    def _hand_over(self, part: Part) -> None:
        self._to_compressor(self._seal, part, f"{self.run}-{part.number:06d}-0")
