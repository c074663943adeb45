"""The issue's targets for the user's command, and the ratios they are read from: at each
size, the user's command and its steps beside the floor and the plain naive exporter."""

from __future__ import annotations

GIB = 2**30


TARGETS = {
    "user / floor": 2.5,  # the user's command, whole processes: at most
    "naive / user": 2.5,  # the plain naive exporter against the user's command: at least
    "events step / floor": 1.5,  # at most
    "peak RSS": 2.5 * GIB,  # every process, at the largest size: at most
    "run / events step": 1.4,  # at most
    "peak apart": 0.25,  # largest process, smallest size against largest: at most
}


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def ratios(results: dict) -> list[dict]:
    """At each size: the user's command, its steps, the floor and the plain naive exporter, side by side."""
    runs = {str(r["events"]): r for r in results.get("user", {}).get("runs", [])}
    floors, naives = results.get("floor_by_size", {}), results.get("naive_by_size", {})
    out = []
    for size in sorted(set(runs) | set(floors) | set(naives), key=int):
        run, floor, naive = runs.get(size), floors.get(size), naives.get(size)
        step = run and run["events_step_seconds"]
        row = {
            "events": int(size), "user_seconds": run and run["process_seconds"], "events_step_seconds": step,
            "checks_step_seconds": run and run["steps"].get("events_checks", {}).get("seconds"),
            "floor_process_seconds": floor and floor["process_seconds"], "floor_seconds": floor and floor["seconds"],
            "naive_seconds": naive and naive["process_seconds"],
            "user_peak_rss": run and run["peak_rss"], "floor_peak_rss": floor and floor["peak_rss"],
            "naive_peak_rss": naive and naive["peak_rss"],
        }
        row["user / floor"] = run and floor and run["process_seconds"] / floor["process_seconds"]
        row["events step / floor"] = step and floor and step / floor["seconds"]
        row["naive / user"] = run and naive and naive["process_seconds"] / run["process_seconds"]
        out.append(row)
    return out


def _worst(rows: list[dict], key: str, want: str, limit: float, at_most: bool, figure) -> list[dict]:
    """The target `key` at its worst size (none if no size has the figure)."""
    sized = [r for r in rows if r[key]]
    if not sized:
        return []
    r = (max if at_most else min)(sized, key=lambda r: r[key])
    return [{"target": f"{key} (the worst size)", "want": want, "figure": figure(r), "value": r[key],
             "met": r[key] <= limit if at_most else r[key] >= limit}]


def _ratio_targets(rows: list[dict]) -> list[dict]:
    """user / floor, naive / user and events step / floor, each at its worst size."""
    targets = []
    limit = TARGETS["user / floor"]
    targets += _worst(rows, "user / floor", f"<= {limit}x", limit, True, lambda r: (
        f"{r['user / floor']:.2f}x at {r['events']:,} (user {r['user_seconds']:.1f} s, floor {r['floor_process_seconds']:.1f} s)"))
    limit = TARGETS["naive / user"]
    targets += _worst(rows, "naive / user", f">= {limit}x", limit, False, lambda r: (
        f"{r['naive / user']:.2f}x at {r['events']:,} (naive {r['naive_seconds']:.1f} s, user {r['user_seconds']:.1f} s)"))
    limit = TARGETS["events step / floor"]
    targets += _worst(rows, "events step / floor", f"<= {limit}x", limit, True, lambda r: (
        f"{r['events step / floor']:.2f}x at {r['events']:,} (step {r['events_step_seconds']:.1f} s, "
        f"floor's work {r['floor_seconds']:.1f} s)"))
    return targets


def _peak_target(results: dict) -> list[dict]:
    """The largest process of the user's command, the floor and the naive exporter, at the largest size."""
    user = results["user"]
    largest = max((r["events"] for r in user["runs"]), default=None)
    if largest is None:
        return []
    run = next(r for r in user["runs"] if r["events"] == largest)
    procs = [(p["label"], p["peak_rss"]) for p in run["processes"] if not p["service"]]
    for kind in ("floor", "naive"):
        other = results.get(f"{kind}_by_size", {}).get(str(largest))
        if other:
            procs.append((kind, other["peak_rss"]))
    label, peak = max(procs, key=lambda p: p[1])
    return [{
        "target": f"peak RSS of every process at {largest:,} events", "want": "<= 2.5 GiB",
        "figure": f"{peak / GIB:.2f} GiB ({label})", "value": peak, "met": peak <= TARGETS["peak RSS"],
    }]


def _run_targets(sized: list[dict]) -> list[dict]:
    """The run's wall against its events step (the worst size), and the peak at the largest
    size against the smallest; `sized` are the user's runs, smallest first."""
    targets = []
    timed = [r for r in sized if r["run_seconds"] and r["events_step_seconds"]]
    if timed:
        r = max(timed, key=lambda r: r["run_seconds"] / r["events_step_seconds"])
        ratio = r["run_seconds"] / r["events_step_seconds"]
        targets.append({
            "target": "run wall / events step (the worst size)", "want": f"<= {TARGETS['run / events step']}",
            "figure": f"{ratio:.2f} at {r['events']:,} events (run {r['run_seconds']:.1f} s, "
                      f"events step {r['events_step_seconds']:.1f} s)",
            "value": ratio, "met": ratio <= TARGETS["run / events step"],
        })
    if len(sized) >= 2:
        small, big = sized[0], sized[-1]
        apart = abs(big["peak_rss"] - small["peak_rss"]) / small["peak_rss"]
        targets.append({
            "target": f"{big['events']:,} peak vs {small['events']:,} peak (largest process of each run)",
            "want": "<= 25% apart",
            "figure": f"{100 * apart:.0f}% ({mib(big['peak_rss'])} vs {mib(small['peak_rss'])})",
            "value": apart, "met": apart <= TARGETS["peak apart"],
        })
    return targets


def user_targets(results: dict) -> list[dict]:
    """The issue's targets, each with its figure (the worst size) and whether it is met."""
    user = results["user"]
    runs = {r["events"]: r for r in user["runs"]}
    sized = [runs[n] for n in sorted(user["sizes"]) if n in runs]
    return _ratio_targets(ratios(results)) + _peak_target(results) + _run_targets(sized)
