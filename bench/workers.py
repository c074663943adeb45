"""The contenders, each run in its own process so its peak RSS is its own.

    python -m bench.workers KIND CONFIG_JSON

KIND is one of, each in a module of its own:
- `export` (bench/export.py): the project's export path, called as a function (no Dagster);
- `baseline` (bench/baseline.py): the same job done the straightforward way, spec and all
  (json.loads and json.dumps per row, normalizing every field, stdlib gzip level 6);
- `floor` (bench/floor.py): the least any exporter of the hour must do (download, gunzip,
  one JSON validation pass per line, igzip level 1, upload the parts), streaming;
- `naive` (bench/naive.py): the plain naive exporter (json.loads, dedup by uuid, json.dumps
  with sorted keys, stdlib gzip level 6, one upload per part);
- `dagster` (bench/dagster_week.py): a week of small hours through Dagster.
What they share is in bench/worker_io.py and bench/gzip_parts.py.
The last line printed is a JSON object with the figures.
"""

from __future__ import annotations

import json
import sys

from bench.baseline import baseline
from bench.dagster_week import dagster
from bench.export import export
from bench.floor import FLOOR_BLOCK, FLOOR_READ, floor
from bench.naive import naive
from bench.worker_io import Timed

KINDS = {"export": export, "baseline": baseline, "floor": floor, "naive": naive, "dagster": dagster}

__all__ = ["FLOOR_BLOCK", "FLOOR_READ", "KINDS", "Timed", "baseline", "dagster", "export", "floor", "main", "naive"]


def main(argv: list[str]) -> None:
    """Runs the contender `argv[1]` on the config `argv[2]` and prints its figures as JSON."""
    kind, raw = argv[1], argv[2]
    figures = KINDS[kind](json.loads(raw))
    print(json.dumps(figures))


if __name__ == "__main__":
    main(sys.argv)
