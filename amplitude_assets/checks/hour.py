"""One hour's checks: `complete` from the marker and a listing; `schema` and `unique` from the
validation the marker records, or from one read of the parts.

An hour whose marker records how its lines were validated when written (`writer.Validation`)
needs only its parts to be those parts; an hour from an earlier release, or a read-back
(the deep check), has every line read again (`scan.scan_files`).
"""

from __future__ import annotations

import json
from datetime import datetime

from azure.storage.blob import ContainerClient

from amplitude_assets.checks.blobs import BATCH_BYTES, list_blobs, read_blob
from amplitude_assets.checks.outcome import Outcome, combine, outcome_of, short
from amplitude_assets.checks.scan import scan_files
from amplitude_assets.layout import EventsLayout, MergedIdsLayout
from amplitude_assets.partitions import accounted, manifest_hour, reconciles
from amplitude_assets.validation import EVENT_RULES, LineRules

CHANGED_NOTE = ("is not the part whose lines were validated when it was written: {why}. Re-export the hour, "
                "or read it back (python -m amplitude_assets deep-check) to see what it holds")


# -- the marker ----------------------------------------------------------------------------


def complete_outcome(layout: EventsLayout, hour: datetime, listed: dict[str, dict], body: bytes | None) -> Outcome:
    """The marker's manifest matches the parts listed (names, sizes, Content-MD5) and reconciles."""
    marker = layout.marker(hour)
    facts = {"marker": marker, "parts_listed": len(listed)}
    if body is None:
        return outcome_of([{"file": marker, "problem": "the marker is missing: the hour is not (or no longer) exported"}], facts)
    try:
        manifest = json.loads(body)
        parts = {p["name"]: p for p in manifest["parts"]}
        counts = manifest["counts"]
        numbers = sorted(layout.part_number(layout.folder + n, hour) for n in parts)
    except (ValueError, KeyError, TypeError) as exc:
        return outcome_of([{"file": marker, "problem": f"the manifest is not readable: {type(exc).__name__}: {exc}"}], facts)
    problems: list[dict] = []
    expected_hour = manifest_hour(hour)
    if manifest.get("hour") != expected_hour:
        problems.append({"file": marker, "field": "hour", "value": short(manifest.get("hour")),
                         "problem": f"the manifest is for another hour (expected {expected_hour})"})
    problems += _part_problems(layout, listed, parts)
    if None in numbers or numbers != list(range(len(numbers))):
        problems.append({"file": marker, "field": "parts", "value": short(sorted(parts)),
                         "problem": "part names must be this hour's, numbered from 0 with no gaps"})
    rows = sum(int(p.get("rows", 0)) for p in parts.values())
    problems += _count_problems(marker, manifest, counts, rows)
    facts.update({"parts_in_manifest": len(parts), "rows": rows, **{f"count_{k}": v for k, v in counts.items()}})
    return outcome_of(problems, facts)


def _part_problems(layout: EventsLayout, listed: dict[str, dict], parts: dict[str, dict]) -> list[dict]:
    """Parts missing from the container, stray parts, and parts whose size or Content-MD5 is not the manifest's."""
    problems: list[dict] = []
    listed_names = {n.rsplit("/", 1)[-1]: n for n in listed}
    for name in sorted(set(parts) - set(listed_names)):
        problems.append({"file": layout.folder + name, "problem": "listed in the manifest but missing from the container"})
    for name in sorted(set(listed_names) - set(parts)):
        problems.append({"file": listed_names[name], "problem": "a stray part: present in the container but not in the manifest"})
    for name in sorted(set(parts) & set(listed_names)):
        blob, entry = listed[listed_names[name]], parts[name]
        if blob["size"] != entry.get("bytes"):
            problems.append({"file": listed_names[name], "field": "bytes", "value": blob["size"],
                             "problem": f"size differs from the manifest's {entry.get('bytes')}"})
        if blob["md5"] != entry.get("md5"):
            problems.append({"file": listed_names[name], "field": "md5", "value": blob["md5"],
                             "problem": f"Content-MD5 differs from the manifest's {entry.get('md5')}"})
    return problems


def _count_problems(marker: str, manifest: dict, counts: dict, rows: int) -> list[dict]:
    """The manifest's rows and counts against the parts' `rows`, and the reconcile formula."""
    problems: list[dict] = []
    if manifest.get("rows") != rows:
        problems.append({"file": marker, "field": "rows", "value": manifest.get("rows"),
                         "problem": f"differs from the sum of the parts' rows, {rows}"})
    if counts.get("exported") != rows:
        problems.append({"file": marker, "field": "counts.exported", "value": counts.get("exported"),
                         "problem": f"differs from the parts' rows, {rows}"})
    if not reconciles(counts):
        problems.append({"file": marker, "field": "counts", "value": short(counts),
                         "problem": f"does not reconcile: source_rows {counts.get('source_rows')} != "
                                    f"exported + duplicates + filtered + rejected = {accounted(counts)}"})
    return problems


def validated_outcomes(layout: EventsLayout, hour: datetime, listed: dict[str, dict],
                       manifest: dict) -> dict[str, Outcome]:
    """`schema` and `unique` from what the writing step established (`writer.Validation`).

    The exporter validated the exact text of every line it wrote and removed every
    repeated key before writing; Azure verified each block's MD5 as it arrived. What is
    left to establish is that the parts present are those parts: each listed part's size
    and Content-MD5 are the manifest's, and no part is there that the manifest lacks.
    """
    validated = manifest["validated"]
    parts = {p["name"]: p for p in manifest.get("parts", [])}
    listed_names = {n.rsplit("/", 1)[-1]: n for n in listed}
    problems: list[dict] = []
    for name in sorted(set(parts) | set(listed_names)):
        entry, blob = parts.get(name), listed.get(listed_names.get(name, ""))
        if entry is None:
            why = "it is not in the marker's manifest"
        elif blob is None:
            why = "it is missing from the container"
        elif blob["md5"] != entry.get("md5") or blob["size"] != entry.get("bytes"):
            why = (f"its Content-MD5 {blob['md5']} and size {blob['size']} are not the manifest's "
                   f"{entry.get('md5')} and {entry.get('bytes')}")
        else:
            continue
        problems.append({"file": listed_names.get(name, layout.folder + name), "problem": CHANGED_NOTE.format(why=why)})
    facts = {"files_checked": len(listed), "lines_checked": validated.get("lines", 0),
             "validated_when_written": True, "lines_as_sent": validated.get("as_sent", 0),
             "lines_encoded": validated.get("encoded", 0)}
    return {"schema": outcome_of(problems, facts), "unique": outcome_of(problems, facts)}


def _manifest(body: bytes | None) -> dict | None:
    try:
        manifest = json.loads(body) if body is not None else None
    except ValueError:
        return None
    return manifest if isinstance(manifest, dict) else None


# -- an hour of each asset -------------------------------------------------------------------


def events_hour_outcomes(client: ContainerClient, layout: EventsLayout, hour: datetime,
                         selected: set[str], batch_bytes: int = BATCH_BYTES, read_back: bool = False) -> dict[str, Outcome]:
    """The selected events checks of one hour, from one listing and the marker; and, for an
    hour whose marker has no validation record (an earlier release's) or with `read_back`,
    one read of the parts."""
    listed = {n: v for n, v in list_blobs(client, layout.parts_prefix(hour)).items()
              if layout.part_number(n, hour) is not None}
    outcomes: dict[str, Outcome] = {}
    body = read_blob(client, layout.marker(hour))
    if "complete" in selected:
        outcomes["complete"] = complete_outcome(layout, hour, listed, body)
    manifest = _manifest(body)
    if selected & {"schema", "unique"} and not read_back and manifest and isinstance(manifest.get("validated"), dict):
        outcomes.update(validated_outcomes(layout, hour, listed, manifest))
    elif selected & {"schema", "unique"}:
        names = sorted(listed, key=lambda n: layout.part_number(n, hour))
        scan = scan_files(client, names, EVENT_RULES, schema="schema" in selected, unique="unique" in selected,
                          batch_bytes=batch_bytes)
        outcomes["schema"] = combine(scan.schema, scan.facts)
        outcomes["unique"] = combine(scan.unique, scan.facts)
    return {name: outcomes[name] for name in selected}


def merged_ids_hour_outcomes(client: ContainerClient, layout: MergedIdsLayout, rules: LineRules, hour: datetime,
                             selected: set[str]) -> dict[str, Outcome]:
    """The selected merged-IDs checks of one hour, from one read of its file."""
    name = layout.file(hour)
    names = [name] if name in list_blobs(client, name) else []  # the file exists only when the hour has merges
    scan = scan_files(client, names, rules, schema="schema" in selected, unique="unique" in selected)
    outcomes = {"schema": combine(scan.schema, scan.facts), "unique": combine(scan.unique, scan.facts)}
    return {n: outcomes[n] for n in selected}
