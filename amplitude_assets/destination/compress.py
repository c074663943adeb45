"""Deterministic gzip: the same text always gives the same compressed bytes.

Parts, rejects, repairs and merged IDs are all compressed here, with one compressor (isal
igzip) at one level and mtime 0, so an export of the same hour gives the same blobs and
their Content-MD5 tells an unchanged hour from a changed one.
"""

from __future__ import annotations

import hashlib
import io
from typing import IO

from isal import isal_zlib

GZIP_LEVEL = 2  # isal igzip: level 2 compresses about as well as zlib 6, ten times faster
GZIP_PIECE = 4 << 20  # the compressor always takes its input in pieces of this size


class Gzipper:
    """Deterministic streaming gzip into a binary file: fixed compressor and level, mtime 0.

    Whatever sizes the text arrives in, the compressor is fed the same pieces
    (GZIP_PIECE bytes, then the rest), so the same text always gives the same bytes,
    whether it was written at once or a chunk at a time. The MD5 and size of the
    compressed bytes are kept as they are written.
    """

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)  # 31: a gzip header, mtime 0
        self.pending = bytearray()
        self.md5 = hashlib.md5()
        self.size = 0

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        if self.pending:
            take = min(GZIP_PIECE - len(self.pending), len(view))
            self.pending += view[:take]
            view = view[take:]
            if len(self.pending) < GZIP_PIECE:
                return
            self._emit(self.compressor.compress(self.pending))
            self.pending = bytearray()
        whole = len(view) - len(view) % GZIP_PIECE
        for start in range(0, whole, GZIP_PIECE):
            self._emit(self.compressor.compress(view[start : start + GZIP_PIECE]))
        self.pending += view[whole:]

    def close(self) -> None:
        if self.pending:
            self._emit(self.compressor.compress(self.pending))
            self.pending = bytearray()
        self._emit(self.compressor.flush())

    def _emit(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.md5.update(data)
            self.size += len(data)


def gzip_bytes(data) -> bytes:
    """Deterministic gzip of `data` (the same bytes `Gzipper` gives for the same text)."""
    out = io.BytesIO()
    gz = Gzipper(out)
    gz.write(data)
    gz.close()
    return out.getvalue()
