"""The `export` contender: the project's export path, `export_events_hour`, called as a
function on the bench hour (no Dagster), with its own stage timings."""

from __future__ import annotations

import time
from datetime import datetime

from bench.worker_io import Timed, container, peak_rss, source


def export(config: dict) -> dict:
    """The hour from the stand-in through `writer.export_events_hour` to Azurite."""
    from amplitude_assets.destination import writer
    from amplitude_assets.layout import EventsLayout

    hour = datetime.fromisoformat(config["hour"])
    client = container(config)
    layout = EventsLayout("", config["project_id"])
    timings: dict[str, float] = {}
    started = time.perf_counter()
    chunks = Timed(iter(source(config).iter_lines(hour)), timings, "source")
    manifest, result = writer.export_events_hour(
        client, layout, chunks, hour, keep=None, source="export_api",
        max_rows_per_file=config["max_rows_per_file"], timings=timings,
    )
    counts = result.counts.as_dict()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds, "stages": timings, "events_in": counts["source_rows"], "rows_out": manifest.rows,
        "parts": len(manifest.parts), "bytes_in": chunks.bytes, "bytes_out": sum(p.bytes for p in manifest.parts),
        "peak_rss": peak_rss(), "counts": counts,
    }
