"""An hour's raw bytes as one column of lines: blank lines and byte-order marks dropped,
lines that are not UTF-8 held as their exact bytes (base64) so they are rejected and kept."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable

import polars as pl

BOM = "\ufeff"
# A line that is not valid UTF-8 travels as NOT_UTF8 + the base64 of its exact bytes, and is
# rejected (and kept byte for byte). A valid line that starts with a NUL character, which
# no JSON line can, travels as NUL_TEXT + base64 too, so that every line starting with
# NUL is one of these two and nothing else.
NOT_UTF8 = "\x00base64:"
NUL_TEXT = "\x00text:"


def read_lines(chunks: Iterable[bytes]) -> pl.Series:
    """The hour's non-blank lines, in source order, as one string column.

    A byte-order mark at the start of a line (or file) is dropped: it is not data.
    """
    frames = [_read_chunk(chunk) for chunk in chunks if chunk]
    if not frames:
        return pl.Series("line", [], dtype=pl.String)
    lines = pl.concat(frames).to_series()
    # A blank line is all whitespace: find one non-space character (the same Unicode
    # whitespace strip_chars removes) instead of stripping every line.
    return lines.filter(lines.str.contains(r"\S")).rename("line")


def _read_chunk(chunk: bytes) -> pl.DataFrame:
    try:
        frame = pl.read_lines(io.BytesIO(chunk))
    except pl.exceptions.ComputeError:
        # Invalid UTF-8 somewhere in the chunk (rare): split it the way read_lines does, and
        # hold each line that does not decode as its exact bytes, so it is rejected and kept
        # as sent instead of failing the whole hour.
        pieces = chunk.split(b"\n")
        if pieces and not pieces[-1]:
            pieces.pop()
        return pl.DataFrame({"line": [_line_text(p[:-1] if p.endswith(b"\r") else p) for p in pieces]}, schema={"line": pl.String})
    line = frame.to_series()
    if line.str.starts_with(BOM).any():
        line = line.str.strip_prefix(BOM)
    if line.str.starts_with("\x00").any():
        nul = line.str.starts_with("\x00")
        line = line.to_frame().select(pl.when(nul).then(NUL_TEXT + line.str.encode("base64")).otherwise(line)).to_series()
    return line.to_frame("line")


def _line_text(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return NOT_UTF8 + base64.b64encode(raw).decode()
    if text.startswith(BOM):
        text = text[len(BOM):]
    return NUL_TEXT + base64.b64encode(text.encode()).decode() if text.startswith("\x00") else text


def _unmark(rejects: pl.DataFrame) -> pl.DataFrame:
    """Rejects whose line is held in base64: the reason for bytes that are not UTF-8, and a
    valid line that starts with NUL back as its text."""
    marked = rejects["line"].str.starts_with("\x00")
    if not marked.any():
        return rejects
    rows = marked.arg_true()
    lines, reasons = rejects["line"].to_list(), rejects["reason"].to_list()
    for i in rows.to_list():
        if lines[i].startswith(NOT_UTF8):
            reasons[i] = "not valid UTF-8"
        else:
            lines[i] = base64.b64decode(lines[i][len(NUL_TEXT):]).decode()
    return rejects.with_columns(pl.Series("reason", reasons, pl.String), pl.Series("line", lines, pl.String))
