"""bench/results/latest.json: what a `make bench` run measured, with the command that
reproduces it, the machine it ran on, its input, its settings and the printed table."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import psutil

from bench import data
from bench.settings import RESULTS


def machine() -> dict:
    model = ""
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    import polars as pl

    return {
        "cpu": model or platform.processor(), "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(), "python": platform.python_version(), "polars": pl.__version__,
    }


def write_latest(results: dict, report: str, *, events: int | None, seed: int, archive: Path | None,
                 archives: dict[int, Path], load_at_start: tuple[float, float, float]) -> Path:
    """Writes the run to bench/results/latest.json and returns its path; `events` is None
    when no contender ran at BENCH_EVENTS."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in sorted(os.environ.items()) if k.startswith("BENCH_")}
    command = " ".join([*(f"{k}={v}" for k, v in settings.items()), "make bench"])
    latest = {
        "command": command,
        "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {**machine(), "load_average_at_start": load_at_start},
        "input": {"events": events, "seed": seed,
                  "zip_bytes": archive.stat().st_size if archive else None, "hour": data.HOUR.isoformat(),
                  "by_size": {str(n): archives[n].stat().st_size for n in sorted(archives)}},
        "settings": settings,
        "results": results,
        "table": report,
    }
    path = RESULTS / "latest.json"
    path.write_text(json.dumps(latest, indent=1) + "\n")
    return path
