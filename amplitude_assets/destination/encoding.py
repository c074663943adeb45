"""Frames as JSON lines: the `line` column of an hour's rows, and the side files' records.

An event part's lines come from `line_form.event_lines`; here are the generic encoder
(`encode_lines`, one JSON object per row in the frame's column order), the UTF-8 text of a
`line` column, the gzip JSON lines of the rejects, the repairs and the merged IDs, and the
Parquet of a frame (the identities, the identity state).
"""

from __future__ import annotations

import io
import json

import polars as pl

from amplitude_assets.destination.compress import gzip_bytes
from amplitude_assets.line_form import json_fragment
from amplitude_assets.schema import EVENT_KINDS, Kind
from amplitude_assets.transform import NOT_UTF8


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


def write_jsonl(lines: pl.DataFrame, buffer: io.BytesIO) -> None:
    """Append a `line` column to `buffer` as UTF-8 lines, each ending in a newline."""
    lines.write_csv(buffer, include_header=False, quote_style="never", line_terminator="\n")


def jsonl_bytes(lines: pl.DataFrame) -> bytes:
    """UTF-8 JSON lines, each ending in a newline."""
    if lines.height == 0:
        return b""
    buffer = io.BytesIO()
    write_jsonl(lines, buffer)
    return buffer.getvalue()


def encode_records(frame: pl.DataFrame) -> bytes:
    """gzip JSON lines of a frame whose columns are all plain scalars (rejects, merged IDs)."""
    kinds = {name: Kind.STRING for name in frame.columns}
    return gzip_bytes(jsonl_bytes(encode_lines(frame, kinds)))


def encode_rejects(rejects: pl.DataFrame) -> bytes:
    """`{"reason", "line"}` per rejected line; a line that is not UTF-8 is kept as the
    base64 of its exact bytes: `{"reason", "line_base64", "encoding": "base64"}`."""
    binary = rejects["line"].str.starts_with(NOT_UTF8)
    if not binary.any():
        return encode_records(rejects)
    plain = encode_lines(rejects, {"reason": Kind.STRING, "line": Kind.STRING})["line"]
    kept = encode_lines(
        rejects.select("reason", pl.col("line").str.slice(len(NOT_UTF8)).alias("line_base64"), pl.lit("base64").alias("encoding")),
        {"reason": Kind.STRING, "line_base64": Kind.STRING, "encoding": Kind.STRING},
    )["line"]
    lines = pl.DataFrame({"line": plain.zip_with(~binary, kept)})
    return gzip_bytes(jsonl_bytes(lines))


def encode_repairs(repairs: pl.DataFrame) -> bytes:
    """`{"uuid", "$insert_id", "field", "value"}` per repair; `value` is the JSON as sent."""
    kinds = {"uuid": Kind.STRING, "$insert_id": Kind.STRING, "field": Kind.STRING, "value": None}
    return gzip_bytes(jsonl_bytes(encode_lines(repairs, kinds)))


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd", statistics=False)
    return buffer.getvalue()
