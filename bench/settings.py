"""What a `make bench` run is asked to do, read from the BENCH_* environment variables (the
list is in bench/run.py's docstring), and the constants every part of the run shares."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
API_KEY, SECRET_KEY = "bench-key", "bench-secret"
MAX_ROWS_PER_FILE = 500_000
ALL = "user,floor,naive,export,baseline,dagster"


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, "").replace("_", "") or default)


def sizes(name: str, default: str) -> list[int]:
    return [int(n.replace("_", "")) for n in (os.environ.get(name) or default).split(",") if n.strip()]


@dataclass(frozen=True)
class Settings:
    """The run's settings. `run_sizes` are the hours the user's command, the floor and the
    plain naive exporter share; `first` the contenders run at `events` before them."""

    events: int
    seed: int
    baseline_events: int
    only: frozenset[str]
    dagster_events: int
    dagster_hours: int
    user_sizes: list[int]
    naive_sizes: list[int]
    run_sizes: list[int]
    first: list[str]

    @classmethod
    def from_env(cls) -> Settings:
        events = env_int("BENCH_EVENTS", 1_000_000)
        only = frozenset(filter(None, os.environ.get("BENCH_ONLY", ALL).split(",")))
        user_sizes = sizes("BENCH_USER_EVENTS", "2000000,5000000")
        naive_sizes = sizes("BENCH_NAIVE_EVENTS", ",".join(map(str, user_sizes))) if "naive" in only else []
        # The user's command, the floor and the plain naive exporter, side by side on the same hour.
        run_sizes = sorted(set(user_sizes if only & {"user", "floor"} else []) | set(naive_sizes))
        first = [kind for kind in ("export", "baseline") if kind in only]
        if first and "floor" in only and events not in run_sizes:
            first.append("floor")  # so that the export and the baseline have a floor at their size
        return cls(
            events=events, seed=env_int("BENCH_SEED", 0),
            baseline_events=env_int("BENCH_BASELINE_EVENTS", min(events, 1_000_000)), only=only,
            dagster_events=env_int("BENCH_DAGSTER_EVENTS_PER_HOUR", 1000),
            dagster_hours=env_int("BENCH_DAGSTER_HOURS", 168),
            user_sizes=user_sizes, naive_sizes=naive_sizes, run_sizes=run_sizes, first=first,
        )
