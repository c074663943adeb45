"""How big the merged-ID identity state gets, and what an hour costs, over a synthetic month.

    .venv/bin/python -m bench.identity_month                 # 720 hours at 2000 events/hour
    .venv/bin/python -m bench.identity_month --hours 168 --events-per-hour 5000

Every hour goes through the real path without Azure: the synthetic source, `ShapedHour`
(the identity columns `events` writes, as Parquet), then what a single-hour `merged_ids` run does:
read the state of the hour before (the day's snapshot and the hourly deltas since, as
Parquet bytes), derive the merges, store this hour's state (a delta, or a snapshot after
hour 23). Reading the source and shaping events is not counted: that is `events`' cost.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from datetime import datetime, timedelta, timezone

import polars as pl

from amplitude_assets.destination.writer import encode_records, parquet_bytes
from amplitude_assets.identity import IdentityState, decode_state, derive_merges, encode_state, stored_kind
from amplitude_assets.sources.synthetic import SyntheticSource
from amplitude_assets.shaping import ShapedHour

START = datetime(2024, 3, 1, tzinfo=timezone.utc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, default=720)
    parser.add_argument("--events-per-hour", type=int, default=2000)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    source = SyntheticSource("187520", args.events_per_hour, 0)
    stored: dict[int, bytes] = {}  # hour number -> the state blob merged_ids writes for it
    costs, merges, identity_rows = [], 0, 0
    checkpoints = {24, 24 * 7, 24 * 14, args.hours}
    report = []
    started_all = time.perf_counter()
    for k in range(args.hours):
        hour = START + timedelta(hours=k)
        shaped = ShapedHour(source.iter_lines(hour), hour, keep=None)
        for _ in shaped:  # the exported rows are `events`' business; the identities come at the end
            pass
        identities = pl.read_parquet(io.BytesIO(shaped.identities))  # as merged_ids reads it

        # As a single-hour run does it (the sensor's hourly run): read the state of the hour
        # before (its day's snapshot and the deltas since), derive, store this hour's state.
        started = time.perf_counter()
        chain = []
        at = k - 1
        while at >= 0:
            chain.append(pl.read_parquet(io.BytesIO(stored[at])))
            if stored_kind(chain[-1]) == "snapshot":
                break
            at -= 1
        before = decode_state(chain[::-1]) if chain else IdentityState.empty()
        rows, state = derive_merges(identities, before, -1)
        snapshot = k == 0 or hour.hour == 23
        stored[k] = parquet_bytes(encode_state(state, None if snapshot else before))
        encode_records(rows)
        costs.append(time.perf_counter() - started)

        merges += rows.height
        identity_rows += identities.height
        if k + 1 in checkpoints:
            report.append({
                "hours": k + 1,
                "snapshot_bytes": len(parquet_bytes(encode_state(state, None))),
                "state_rows": state.sizes(),
                "stored_bytes_so_far": sum(len(b) for b in stored.values()),
                "merges_so_far": merges,
                "ms_per_hour_last_24": round(1000 * statistics.mean(costs[-24:]), 1),
            })
    deltas = [len(b) for k, b in stored.items() if stored_kind(pl.read_parquet(io.BytesIO(b))) == "delta"]
    summary = {
        "hours": args.hours,
        "events_per_hour": args.events_per_hour,
        "identity_rows": identity_rows,
        "merges": merges,
        "delta_bytes_mean": round(statistics.mean(deltas)) if deltas else 0,
        "stored_bytes": sum(len(b) for b in stored.values()),
        "ms_per_hour_mean": round(1000 * statistics.mean(costs), 1),
        "ms_per_hour_p95": round(1000 * sorted(costs)[int(0.95 * (len(costs) - 1))], 1),
        "wall_seconds_including_source": round(time.perf_counter() - started_all, 1),
        "checkpoints": report,
    }
    print(f"{'hours':>6} {'snapshot KiB':>12} {'original':>9} {'identified':>11} {'anonymous':>10} "
          f"{'merged':>7} {'stored MiB':>11} {'merges':>7} {'ms/hour':>8}")
    for r in report:
        s = r["state_rows"]
        print(f"{r['hours']:>6} {r['snapshot_bytes'] / 1024:>12.1f} {s['original']:>9} {s['identified']:>11} "
              f"{s['anonymous']:>10} {s['merged']:>7} {r['stored_bytes_so_far'] / 2**20:>11.2f} "
              f"{r['merges_so_far']:>7} {r['ms_per_hour_last_24']:>8}")
    print(f"{merges} merges from {identity_rows} identity rows; hourly deltas {summary['delta_bytes_mean'] / 1024:.1f} KiB "
          f"on average; per hour (read the state chain, derive, store the state, encode rows): "
          f"mean {summary['ms_per_hour_mean']} ms, p95 {summary['ms_per_hour_p95']} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
