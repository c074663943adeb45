"""The tables `make bench` prints (and keeps in bench/results/latest.json): the export
path, the baseline and the floor at BENCH_EVENTS with Dagster's overhead (`table`), and
the user's command beside the floor and the plain naive exporter, with its steps,
processes and targets (`user_table`; the targets themselves are in bench/targets.py)."""

from __future__ import annotations

from bench.targets import TARGETS, mib, ratios


def _contender_rows(results: dict) -> list[str]:
    """export, baseline and floor: one line each, then their stages and CPU."""
    rows = []
    base = results.get("baseline")
    floor = results.get("floor")
    head = f"{'contender':<10} {'events':>10} {'wall s':>8} {'events/s':>10} {'MB/s in':>8} {'peak RSS':>10} {'vs baseline':>12} {'vs floor':>9}"
    rows.append(head)
    rows.append("-" * len(head))
    for name in ("export", "baseline", "floor"):
        r = results.get(name)
        if not r:
            continue
        rate = r["events_in"] / r["seconds"]
        mbps = r["bytes_in"] / r["seconds"] / 1e6
        vs_base = f"{rate / (base['events_in'] / base['seconds']):.1f}x" if base else "-"
        vs_floor = f"{100 * rate / (floor['events_in'] / floor['seconds']):.0f}%" if floor else "-"
        rows.append(
            f"{name:<10} {r['events_in']:>10,} {r['seconds']:>8.1f} {rate:>10,.0f} {mbps:>8.0f} "
            f"{mib(r['peak_rss']):>10} {vs_base:>12} {vs_floor:>9}"
        )
    for name in ("export", "baseline", "floor"):
        r = results.get(name)
        if not r:
            continue
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in r["stages"].items())
        rows.append(f"  {name} stages: {stages}")
        if r.get("cpu_seconds"):
            rows.append(f"  {name}: {r['cpu_seconds']:.0f} CPU s in {r['process_seconds']:.0f} s of its process "
                        f"({r['cpu_seconds'] / r['process_seconds']:.1f} cores busy on average)")
        if r.get("service_cpu_seconds"):
            rows.append(f"  {name}: Azurite and the stand-in used {r['service_cpu_seconds']:.1f} CPU s during it")
    return rows


def _dagster_rows(dag: dict) -> list[str]:
    b, p = dag["batched"], dag["per_hour"]
    return [
        "",
        f"Dagster, {b['hours']} hours of {b['events_per_hour']} events:",
        f"  batched  {b['runs']:>4} runs  {b['seconds']:>7.1f} s  {b['per_hour_seconds']:.2f} s/hour",
        f"  per hour {p['runs']:>4} runs  {p['seconds']:>7.1f} s  {p['per_hour_seconds']:.2f} s/hour",
    ]


def table(results: dict, events: int) -> str:
    rows = _contender_rows(results)
    dag = results.get("dagster")
    if dag:
        rows += _dagster_rows(dag)
    return "\n".join(rows)


def _s(value) -> str:
    return f"{value:.1f}" if value else "-"


def _x(value) -> str:
    return f"{value:.2f}x" if value else "-"


def _intro(user: dict) -> list[str]:
    if not user["runs"]:
        return []
    return [
        f"The user's command: {user['runs'][0]['command']} (with its checks),",
        "beside the floor (download, gunzip, json_valid per line, igzip level 1, upload the parts) and the plain",
        "naive exporter (json.loads, dedup by uuid, json.dumps sorted and compact, gzip level 6, one upload a part).",
        "Wall seconds of whole processes; `floor work` is the floor's own work, without its interpreter start.",
    ]


def _time_rows(table_rows: list[dict]) -> list[str]:
    """Wall seconds and ratios at each size, then the targets under the ratios."""
    head = (f"{'events':>10} {'user s':>8} {'events s':>9} {'checks s':>9} {'floor s':>8} {'floor work':>11} "
            f"{'naive s':>8} {'user/floor':>11} {'step/floor':>11} {'naive/user':>11}")
    rows = [head, "-" * len(head)]
    for r in table_rows:
        rows.append(
            f"{r['events']:>10,} {_s(r['user_seconds']):>8} {_s(r['events_step_seconds']):>9} {_s(r['checks_step_seconds']):>9} "
            f"{_s(r['floor_process_seconds']):>8} {_s(r['floor_seconds']):>11} {_s(r['naive_seconds']):>8} "
            f"{_x(r['user / floor']):>11} {_x(r['events step / floor']):>11} {_x(r['naive / user']):>11}"
        )
    rows.append(f"{'targets':>10} {'':>8} {'':>9} {'':>9} {'':>8} {'':>11} {'':>8} "
                f"{'<= ' + str(TARGETS['user / floor']) + 'x':>11} {'<= ' + str(TARGETS['events step / floor']) + 'x':>11} "
                f"{'>= ' + str(TARGETS['naive / user']) + 'x':>11}")
    return rows


def _peak_rows(table_rows: list[dict]) -> list[str]:
    rows = [f"{'events':>10} {'peak RSS: user (largest process)':>34} {'floor':>10} {'naive':>10}   (target: each <= 2.5 GiB)"]
    for r in table_rows:
        rows.append(f"{r['events']:>10,} {mib(r['user_peak_rss']) if r['user_peak_rss'] else '-':>34} "
                    f"{mib(r['floor_peak_rss']) if r['floor_peak_rss'] else '-':>10} "
                    f"{mib(r['naive_peak_rss']) if r['naive_peak_rss'] else '-':>10}")
    return rows


def _by_size_rows(results: dict) -> list[str]:
    """The floor's and the naive exporter's lines, parts and stages at each size."""
    rows = []
    for kind in ("floor", "naive"):
        for size, r in results.get(f"{kind}_by_size", {}).items():
            stages = ", ".join(f"{k} {v:.1f}s" for k, v in r["stages"].items())
            rows.append(f"  {kind} at {int(size):,}: {r['events_in']:,} lines in, {r['rows_out']:,} out, {r['parts']} parts, "
                        f"{r['bytes_out'] / 1e6:,.0f} MB out; {stages}; {r['cpu_seconds']:.0f} CPU s")
    return rows


def _run_rows(r: dict) -> list[str]:
    """One run of the user's command: its steps, checks, processes and the merged IDs after it."""
    rows = ["", f"{r['events']:,} events, steps (wall from the run's event log):"]
    for key, step in r["steps"].items():
        rows.append(f"  {key:<40} {step.get('seconds', 0):>8.1f} s  {step.get('outcome', 'unfinished'):<8} pid {step['pid']}")
    checks = ", ".join(f"{c['check']} {'passed' if c['passed'] else 'FAILED'}" for c in r["checks"])
    rows.append(f"  checks: {checks or 'none ran'}")
    rows.append(f"{r['events']:,} events, processes (peak RSS each, sampled every 50 ms):")
    groups: dict[str, list[dict]] = {}
    for proc in r["processes"]:
        groups.setdefault(proc["label"] + (" (service)" if proc["service"] else ""), []).append(proc)
    for name, procs in groups.items():
        peak = max(p["peak_rss"] for p in procs)
        cpu = sum(p["cpu_seconds"] for p in procs)
        where = f"pid {procs[0]['pid']}" if len(procs) == 1 else f"{len(procs)} processes, the largest shown"
        rows.append(f"  {name:<42} {mib(peak):>10} {cpu:>8.1f} CPU s  {where}")
    merged = r.get("merged_ids")
    if merged:
        steps = ", ".join(f"{k} {v.get('seconds', 0):.1f} s" for k, v in merged["steps"].items())
        rows.append(f"then --select merged_ids: {merged['process_seconds']:.1f} s ({steps}), "
                    f"largest process peak {mib(merged['peak_rss'])}")
    return rows


def _target_rows(targets: list[dict]) -> list[str]:
    if not targets:
        return []
    rows = ["", "targets:"]
    for t in targets:
        rows.append(f"  {t['target']:<58} {t['want']:>14}  {'met' if t['met'] else 'MISSED':<6} {t['figure']}")
    return rows


def user_table(results: dict, targets: list[dict]) -> str:
    user = results["user"]
    table_rows = ratios(results)
    rows = _intro(user) + _time_rows(table_rows) + [""] + _peak_rows(table_rows) + _by_size_rows(results)
    for r in user["runs"]:
        rows += _run_rows(r)
    rows += _target_rows(targets)
    return "\n".join(rows)
