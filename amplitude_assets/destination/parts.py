"""An event part as it is written, and its rebuild when a later chunk brings a new extra key.

A part's text is compressed as it comes into a file, the part's copy, which is kept until
the commit; `Part.segments` records which extra keys each run of its lines was written
with. A line's extra keys are those of the whole hour, known only at its end: a part
written with fewer is rebuilt from its copy (`rebuild_part`) before anything is committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO

from isal import igzip

from amplitude_assets.destination.blobs import PartInfo
from amplitude_assets.destination.compress import Gzipper
from amplitude_assets.destination.encoding import jsonl_bytes
from amplitude_assets.line_form import with_keys
from amplitude_assets.lines import line_chunks, written_lines
from amplitude_assets.shaping import Timer
from amplitude_assets.validation import check


@dataclass
class Part:
    """A part being written: its text is compressed as it comes, into a file (the part's copy)."""

    number: int
    path: str  # the compressed part, kept until the commit (a rebuild reads it back)
    rows: int = 0
    segments: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)  # (rows, extra keys written)
    file: IO[bytes] | None = None
    gz: Gzipper | None = None
    info: PartInfo | None = None
    blocks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.file = open(self.path, "wb")
        self.gz = Gzipper(self.file)

    def note(self, rows: int, keys: tuple[str, ...]) -> None:
        """Count `rows` more lines, written with extra keys `keys`."""
        if self.segments and self.segments[-1][1] == keys:
            self.segments[-1] = (self.segments[-1][0] + rows, keys)
        else:
            self.segments.append((rows, keys))
        self.rows += rows

    def finish(self, name: str) -> None:
        self.gz.close()
        self.file.close()
        self.info = PartInfo(name=name.rsplit("/", 1)[-1], rows=self.rows, bytes=self.gz.size, md5=self.gz.md5.hexdigest())

    def lacks_keys(self, extras: list[str]) -> bool:
        """Whether some of its lines were written with other extra keys than the hour's."""
        return any(set(keys) != set(extras) for _, keys in self.segments)


def rebuild_part(part: Part, extras: list[str], timer: Timer) -> None:
    """Rewrite a part's lines with the hour's extra keys, from its compressed copy.

    A segment written before a new key turned up lacks it: the key goes in as null, in its
    code-point place (`line_form.with_keys`); the rest of each line stays as it was
    written. The copy is read a few megabytes at a time, so only the new text is held whole.
    """
    with timer("serialize"):
        segments = [(rows, list(keys)) for rows, keys in part.segments]
        copy_path, part.path = part.path, part.path + ".rebuilt"
        part.file = open(part.path, "wb")
        part.gz = Gzipper(part.file)
        written = 0
        with igzip.open(copy_path, "rb") as copy:
            for chunk in line_chunks(copy):
                lines = written_lines(chunk)
                start = 0
                while start < len(lines):
                    rows, keys = segments[0]
                    take = min(rows, len(lines) - start)
                    rewritten = with_keys(lines.slice(start, take), keys, extras)
                    check(rewritten["line"], extras)
                    part.gz.write(jsonl_bytes(rewritten))
                    start += take
                    written += take
                    segments[0] = (rows - take, keys)
                    if not segments[0][0]:
                        segments.pop(0)
        if written != part.rows or segments:
            raise RuntimeError(f"rebuilding part {part.number}: {written} lines where the part has {part.rows}")
        part.segments = [(part.rows, tuple(extras))]
