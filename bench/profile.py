"""Where an export's CPU goes: each stage of `export_events_hour`, on one chunk, measured alone.

    .venv/bin/python -m bench.profile          # first chunk of the cached 1,000,000-event hour

The export runs its stages in overlapping threads, and polars and DuckDB run their own
worker threads, so a sampling profiler of the Python threads misses most of the work.
This runs the same functions on one chunk of the benchmark's input (the size the export
cuts: CHUNK_LINES or CHUNK_BYTES), one stage at a time, and reports the process CPU
seconds of each (the median of three runs), then what that comes to per million events.
Azurite's share is not here: `make bench` reports it beside the export.
"""

from __future__ import annotations

import hashlib
import io
import statistics
import sys
import tempfile
import time
import zipfile

from isal import igzip

from amplitude_assets import shaping
from amplitude_assets.destination import writer

from amplitude_assets import line_form, transform, validation
from amplitude_assets.transform import normalize_with_repairs, read_lines, reject_outside_hour
from amplitude_assets.transform.in_form import split_in_form
from bench import data


def _measure(stage, repeat: int = 3) -> tuple[float, float, object]:
    cpu, wall, result = [], [], None
    for _ in range(repeat):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = stage()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return statistics.median(cpu), statistics.median(wall), result


def main() -> None:
    path = data.cached_zip(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
    with zipfile.ZipFile(path) as archive:
        entry = archive.read(archive.infolist()[0])
    rows: list[tuple[str, float, float, int]] = []  # name, CPU s, wall s, events it covered
    basis = [0]

    def stage(name: str, run):
        cpu, wall, result = _measure(run)
        rows.append((name, cpu, wall, basis[0]))
        return result

    text = igzip.decompress(entry)
    basis[0] = text.count(b"\n")
    stage("gunzip (source; the whole ZIP entry)", lambda: igzip.decompress(entry))
    cut = text.rfind(b"\n", 0, shaping.CHUNK_BYTES) + 1 if len(text) > shaping.CHUNK_BYTES else len(text)
    chunk = text[:cut]
    lines = stage("split lines", lambda: read_lines([chunk]))
    if len(lines) > shaping.CHUNK_LINES:
        lines = lines.head(shaping.CHUNK_LINES)
    basis[0] = len(lines)
    rows[-1] = (*rows[-1][:3], len(lines))
    fields = shaping.ShapedHour([], data.HOUR, keep=None).in_form_fields
    found, others = stage("lines in the form (one expression; DuckDB reads their few fields)",
                          lambda: split_in_form(lines, fields))
    parsed, _, extras = stage(f"parse the other {len(others) / len(lines):.1%} in full (DuckDB)",
                              lambda: shaping._parsed_at(lines, others, all_dicts=False))
    in_hour, _ = stage("reject outside the hour", lambda: reject_outside_hour(parsed, data.HOUR))
    form_in_hour, _ = stage("reject outside the hour (lines in the form)", lambda: reject_outside_hour(found.frame, data.HOUR))
    normalized, _ = stage("normalize the others", lambda: normalize_with_repairs(in_hour, extras))
    canon = stage("which of the others are in the form", lambda: line_form.canonical_rows(in_hour, normalized))
    others_shaped = normalized.with_columns(in_hour[transform.POS], in_hour[transform.LINE], in_hour[transform.EXTRA], canon)
    workdir = tempfile.mkdtemp(prefix="amplitude-profile-")
    hour_keys = shaping.first_appearance(parsed, extras, found)

    def join():
        ledger = shaping.HourLedger(workdir, None)
        ledger.present.update(hour_keys)
        return ledger.with_in_form(others_shaped, form_in_hour, found.extras, fields, hour_keys)

    shaped = stage("join the lines in the form to them, encode the others", join)
    keys = shaped.select("uuid", "$insert_id", "device_id")
    stage("dedup (first of a chunk, nothing seen)", lambda: shaping.FirstWins()(keys))
    canon = writer.as_sent(shaped)
    encoded = stage(f"exported lines ({1 - canon.mean():.1%} encoded)",
                    lambda: line_form.event_lines(shaped, hour_keys).to_frame())
    stage("validate the encoded lines", lambda: validation.Validation().add(canon, encoded, hour_keys))

    def csv() -> bytes:
        buffer = io.BytesIO()
        writer.write_jsonl(encoded, buffer)
        return buffer.getvalue()

    body = stage("write part text", csv)
    compressed = stage(f"gzip (igzip level {writer.GZIP_LEVEL})", lambda: writer.gzip_bytes(body))
    stage("Content-MD5", lambda: hashlib.md5(compressed).digest())

    per_million = [cpu / events * 1e6 for _, cpu, _, events in rows]
    total = sum(per_million)
    print(f"one chunk: {len(lines):,} events, {len(chunk) / 1e6:.0f} MB of JSON; median of 3 runs\n")
    print(f"{'stage':48} {'CPU s':>7} {'wall s':>7} {'CPU s / 1M events':>18} {'share':>6}")
    for (name, cpu, wall, _), cost in zip(rows, per_million):
        print(f"{name:48} {cpu:7.3f} {wall:7.3f} {cost:18.1f} {cost / total:6.0%}")
    print(f"{'total':48} {'':7} {'':7} {total:18.1f}")


if __name__ == "__main__":
    main()
