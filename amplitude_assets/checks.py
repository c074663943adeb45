"""Per-hour asset checks. They read what is in the container, not the in-memory frame.

events:     schema (blocking), unique, complete (blocking)
merged_ids: schema (blocking), unique

Every check has `partitions_def`, so it runs for the hours of its run only and never
loads the asset through the IO manager. In a range run Dagster records a partitioned
check's result once, without a partition; so each hour's own result is also logged as an
`AssetCheckEvaluation` with `partition` set, and the step's result summarizes the range.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import dagster as dg
import duckdb
import polars as pl
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient
from isal import igzip

from amplitude_assets.destination.credentials import AzureStorage
from amplitude_assets.destination.layout import EventsLayout, MergedIdsLayout
from amplitude_assets.destination.writer import md5_hex
from amplitude_assets.schema import (
    EVENT_FIELD_NAMES,
    EVENT_FIELDS,
    MERGED_ID_FIELDS,
    TIMESTAMP_PATTERN,
    UUID_PATTERN,
    Kind,
)
from amplitude_assets.settings import Settings, parse_hour

EXTRAS_NOTE = " (extra keys must be the same, in the same order, on every line of the hour as on its first)"
MAX_REPORTED = 20  # problems listed in a failed evaluation's metadata (all are counted)

# DuckDB's json_type names, per contract type; None is SQL NULL (the key is absent).
_JSON_TYPES: dict[Kind, tuple[str, ...]] = {
    Kind.TIMESTAMP: ("VARCHAR", "NULL"),
    Kind.INT: ("BIGINT", "UBIGINT", "NULL"),
    Kind.FLOAT: ("DOUBLE", "BIGINT", "UBIGINT", "NULL"),
    Kind.BOOL: ("BOOLEAN", "NULL"),
    Kind.UUID: ("VARCHAR", "NULL"),
    Kind.STRING: ("VARCHAR", "NULL"),
    Kind.DICT: ("OBJECT",),
}
_TYPE_WORDS = {
    Kind.TIMESTAMP: "a timestamp string YYYY-MM-DD HH:MM:SS.ffffff or null",
    Kind.INT: "an integer or null",
    Kind.FLOAT: "a number or null",
    Kind.BOOL: "true, false or null",
    Kind.UUID: "a lowercase 8-4-4-4-12 uuid or null",
    Kind.STRING: "a string or null",
    Kind.DICT: "an object ({} when empty)",
}


@dataclass
class Outcome:
    """One hour's result: passed, and what is wrong (file, line, field, value) when not."""

    passed: bool
    problems: list[dict] = field(default_factory=list)
    problem_count: int = 0
    facts: dict = field(default_factory=dict)

    @property
    def description(self) -> str:
        if self.passed:
            return "passed"
        return describe(self.problems[0]) + (
            f" (and {self.problem_count - 1} more)" if self.problem_count > 1 else ""
        )

    def metadata(self) -> dict:
        meta = dict(self.facts)
        if not self.passed:
            meta["problem_count"] = self.problem_count
            meta["first_problem"] = describe(self.problems[0])
            meta["problems"] = dg.MetadataValue.json(self.problems[:MAX_REPORTED])
        return meta


def describe(problem: dict) -> str:
    where = problem.get("file") or "(hour)"
    if problem.get("line") is not None:
        where += f" line {problem['line']}"
    if problem.get("field") is not None:
        where += f", field {problem['field']}"
    text = f"{where}: {problem['problem']}"
    if "value" in problem:
        text += f" (value {problem['value']})"
    return text


def _outcome(problems: list[dict], facts: dict) -> Outcome:
    return Outcome(passed=not problems, problems=problems[:MAX_REPORTED], problem_count=len(problems), facts=facts)


def _combine(found: list["Found"], facts: dict) -> Outcome:
    problems = [p for f in found for p in f.problems]
    return Outcome(passed=not problems, problems=problems[:MAX_REPORTED],
                   problem_count=sum(f.count for f in found), facts=facts)


def _short(value: object, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "…"


# -- reading the container ---------------------------------------------------------------


def list_blobs(client: ContainerClient, prefix: str) -> dict[str, dict]:
    """name -> {size, md5 (hex or None)} of the blobs under `prefix`; empty when there is no container."""
    try:
        return {
            b.name: {
                "size": b.size,
                "md5": md5_hex(b.content_settings.content_md5),
            }
            for b in client.list_blobs(name_starts_with=prefix)
        }
    except ResourceNotFoundError:
        return {}


def read_blob(client: ContainerClient, name: str) -> bytes | None:
    try:
        return client.download_blob(name).readall()
    except ResourceNotFoundError:
        return None


def read_lines(files: list[tuple[str, bytes]]) -> tuple[pl.DataFrame, list[dict]]:
    """The JSON lines of gzip files as a frame (file, line, text); and what is wrong with the files."""
    frames, problems = [], []
    for name, data in files:
        try:
            text = igzip.decompress(data).decode("utf-8")
        except (OSError, EOFError, ValueError) as exc:
            problems.append({"file": name, "problem": f"not readable gzip UTF-8 JSON lines: {exc}"})
            continue
        if not text:
            continue
        if not text.endswith("\n"):
            problems.append({"file": name, "line": text.count("\n") + 1, "problem": "the last line does not end in a newline"})
        else:
            text = text[:-1]
        lines = pl.Series("text", text.split("\n"), dtype=pl.String)
        frames.append(pl.DataFrame({
            "file": pl.Series([name] * len(lines), dtype=pl.String),
            "line": pl.int_range(1, len(lines) + 1, eager=True, dtype=pl.Int64),
            "text": lines,
        }))
    if not frames:
        return pl.DataFrame(schema={"file": pl.String, "line": pl.Int64, "text": pl.String}), problems
    return pl.concat(frames), problems


def _path(key: str) -> str:
    quoted = '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "'" + quoted.replace("'", "''") + "'"


def json_columns(lines: pl.DataFrame, types: list[str], strings: list[str]) -> pl.DataFrame:
    """Per line: its JSON kind, its keys in order, the JSON type of each of `types`, the text of `strings`.

    DuckDB's JSON functions work per line, so every line keeps its own keys and types
    (polars would infer one schema for all lines).
    """
    con = duckdb.connect()
    try:
        con.register("lines", lines.select("text").with_row_index("_i").to_arrow(compat_level=pl.CompatLevel.newest()))
        # The list forms parse each line once for all paths.
        # Invalid lines become an empty object, so no JSON function sees them.
        columns = [
            "CASE WHEN valid THEN json_type(j) END AS kind",
            "CASE WHEN valid AND json_type(j) = 'OBJECT' THEN json_keys(j) END AS keys",
        ]
        if types:
            paths = ", ".join(_path(k) for k in types)
            columns.append(f"CASE WHEN valid AND json_type(j) = 'OBJECT' THEN json_type(j, [{paths}]) END AS types")
        if strings:
            paths = ", ".join(_path(k) for k in strings)
            columns.append(f"CASE WHEN valid AND json_type(j) = 'OBJECT' THEN json_extract_string(j, [{paths}]) END AS strings")
        checked = "SELECT _i, valid, CASE WHEN valid THEN text ELSE '{}' END AS j FROM (SELECT _i, text, json_valid(text) AS valid FROM lines)"
        found = con.sql(f"SELECT {', '.join(columns)} FROM ({checked}) ORDER BY _i").pl()
    finally:
        con.close()
    found = found.select(
        "kind", "keys",
        *(pl.col("types").list.get(i).alias(f"t:{k}") for i, k in enumerate(types)),
        *(pl.col("strings").list.get(i).alias(f"s:{k}") for i, k in enumerate(strings)),
    )
    return pl.concat([lines, found], how="horizontal")


# -- the line checks ----------------------------------------------------------------------


@dataclass
class Found:
    """The first MAX_REPORTED problems of one kind, and how many there are in all."""

    problems: list[dict]
    count: int


def _structure_problems(scanned: pl.DataFrame) -> tuple[pl.DataFrame, Found]:
    """Lines that are not JSON objects; returns the object lines and the problems."""
    bad = scanned.filter(pl.col("kind").is_null() | (pl.col("kind") != "OBJECT"))
    problems = [
        {"file": r["file"], "line": r["line"], "value": _short(r["text"]),
         "problem": "not valid JSON" if r["kind"] is None else "not a JSON object"}
        for r in bad.head(MAX_REPORTED).iter_rows(named=True)
    ]
    return scanned.filter(pl.col("kind") == "OBJECT"), Found(problems, bad.height)


def _key_problems(objects: pl.DataFrame, expected_head: tuple[str, ...], allow_extras: bool) -> Found:
    """Keys in the contract's order, then the same extra keys in the same order on every line."""
    if objects.height == 0:
        return Found([], 0)
    first = objects["keys"][0].to_list()
    extras = first[len(expected_head):] if allow_extras and first[: len(expected_head)] == list(expected_head) else []
    expected = [*expected_head, *extras]
    joined = "\x1f".join(expected)
    bad = objects.filter(pl.col("keys").list.join("\x1f") != joined)
    problems = []
    for r in bad.head(MAX_REPORTED).iter_rows(named=True):
        keys = list(r["keys"])
        position = next((i for i, (a, b) in enumerate(zip(keys, expected)) if a != b), min(len(keys), len(expected)))
        if position < len(expected) and expected[position] not in keys:
            what, name = f"key {expected[position]!r} is missing", expected[position]
        elif position < len(keys) and keys[position] not in expected:
            what, name = f"unexpected key {keys[position]!r}", keys[position]
        else:
            name = keys[position] if position < len(keys) else expected[position]
            what = f"keys out of order at position {position + 1}: expected {expected[position]!r}" if position < len(expected) else "extra keys at the end"
        problems.append({"file": r["file"], "line": r["line"], "field": name,
                         "value": _short(keys[position:position + 3]),
                         "problem": what + (EXTRAS_NOTE if name in extras else "")})
    return Found(problems, bad.height)


def _type_problems(objects: pl.DataFrame, fields: tuple[tuple[str, Kind], ...], nullable: bool = True) -> Found:
    """Each field's JSON type; timestamp and uuid strings also by pattern."""
    checks = []
    for name, kind in fields:
        jtype = pl.col(f"t:{name}")
        allowed = [t for t in _JSON_TYPES[kind] if nullable or t != "NULL"]
        wrong = ~jtype.is_in(allowed)  # an absent key is a key problem, not a type one
        if kind in (Kind.TIMESTAMP, Kind.UUID):
            pattern = TIMESTAMP_PATTERN if kind is Kind.TIMESTAMP else UUID_PATTERN
            wrong = wrong | ((jtype == "VARCHAR") & ~pl.col(f"s:{name}").str.contains(pattern))
        checks.append(wrong.fill_null(False).alias(name))
    flags = objects.select("file", "line", "text", *checks)
    long = (
        flags.unpivot(index=["file", "line", "text"], variable_name="field", value_name="wrong")
        .filter(pl.col("wrong"))
        .sort("file", "line")
    )
    kinds = dict(fields)
    problems = []
    for r in long.head(MAX_REPORTED).iter_rows(named=True):
        value = json.loads(r["text"]).get(r["field"])  # as JSON text: "12" (a string) is not 12
        problems.append({"file": r["file"], "line": r["line"], "field": r["field"],
                         "value": _short(json.dumps(value, ensure_ascii=False)),
                         "problem": f"must be {_type_words(kinds[r['field']], nullable)}"})
    return Found(problems, long.height)


def _type_words(kind: Kind, nullable: bool) -> str:
    words = _TYPE_WORDS[kind]
    return words if nullable else words.removesuffix(" or null")


def schema_outcome(files: list[tuple[str, bytes]], head: tuple[str, ...], fields: tuple[tuple[str, Kind], ...],
                   allow_extras: bool, nullable: bool = True, fixed: dict[str, str] | None = None) -> Outcome:
    """Every line parses, has the keys in order (then the hour's extras) and the contract's JSON types.

    `fixed` names fields whose every value must be the given JSON text (the merged IDs' scope).
    """
    fixed = fixed or {}
    lines, problems = read_lines(files)
    strings = [n for n, k in fields if k in (Kind.TIMESTAMP, Kind.UUID) or n in fixed]
    scanned = json_columns(lines, [n for n, _ in fields], strings)
    objects, structure = _structure_problems(scanned)
    found = [Found(problems, len(problems)), structure, _key_problems(objects, head, allow_extras),
             _type_problems(objects, fields, nullable), *(_fixed_problems(objects, n, v) for n, v in fixed.items())]
    return _combine(found, {"files_checked": len(files), "lines_checked": lines.height})


def _fixed_problems(objects: pl.DataFrame, name: str, value: str) -> Found:
    wrong = objects.filter(pl.col(f"s:{name}") != value)
    problems = [{"file": r["file"], "line": r["line"], "field": name, "value": r[f"s:{name}"],
                 "problem": f"must be {value}"} for r in wrong.head(MAX_REPORTED).iter_rows(named=True)]
    return Found(problems, wrong.height)


def unique_outcome(files: list[tuple[str, bytes]], keys: list[tuple[str, ...]]) -> Outcome:
    """No key (one or more fields, all non-null) repeats across the hour's files."""
    lines, problems = read_lines(files)
    names = sorted({n for key in keys for n in key})
    scanned = json_columns(lines, [], names)
    found = [Found(problems, len(problems))]
    for key in keys:
        cols = [pl.col(f"s:{n}") for n in key]
        values = pl.concat_str([c.str.to_lowercase() if key == ("uuid",) else c for c in cols], separator="\x1f")
        present = pl.all_horizontal([c.is_not_null() for c in cols])
        keyed = scanned.filter(present).with_columns(values.alias("_key"))
        first = keyed.group_by("_key", maintain_order=True).agg(pl.col("file").first().alias("first_file"),
                                                              pl.col("line").first().alias("first_line"))
        repeats = keyed.filter(~pl.col("_key").is_first_distinct()).join(first, on="_key", how="left")
        label = key[0] if len(key) == 1 else "(" + ", ".join(key) + ")"
        repeated = []
        for r in repeats.head(MAX_REPORTED).iter_rows(named=True):
            repeated.append({"file": r["file"], "line": r["line"], "field": label,
                             "value": _short(r["_key"].replace("\x1f", ", ")),
                             "problem": f"repeats {r['first_file']} line {r['first_line']}"})
        found.append(Found(repeated, repeats.height))
    return _combine(found, {"files_checked": len(files), "lines_checked": lines.height})


# -- the marker ----------------------------------------------------------------------------


def complete_outcome(client: ContainerClient, layout: EventsLayout, hour: datetime) -> Outcome:
    """The marker's manifest matches the parts present (names, sizes, Content-MD5) and reconciles."""
    marker = layout.marker(hour)
    listed = {n: v for n, v in list_blobs(client, layout.parts_prefix(hour)).items()
              if layout.part_number(n, hour) is not None}
    facts = {"marker": marker, "parts_listed": len(listed)}
    body = read_blob(client, marker)
    if body is None:
        return _outcome([{"file": marker, "problem": "the marker is missing: the hour is not (or no longer) exported"}], facts)
    try:
        manifest = json.loads(body)
        parts = {p["name"]: p for p in manifest["parts"]}
        counts = manifest["counts"]
    except (ValueError, KeyError, TypeError) as exc:
        return _outcome([{"file": marker, "problem": f"the manifest is not readable: {type(exc).__name__}: {exc}"}], facts)
    problems: list[dict] = []
    expected_hour = hour.strftime("%Y-%m-%dT%H:00:00Z")
    if manifest.get("hour") != expected_hour:
        problems.append({"file": marker, "field": "hour", "value": _short(manifest.get("hour")),
                         "problem": f"the manifest is for another hour (expected {expected_hour})"})
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
    numbers = sorted(layout.part_number(layout.folder + n, hour) for n in parts)
    if numbers != list(range(len(numbers))):
        problems.append({"file": marker, "field": "parts", "value": _short(numbers),
                         "problem": "part numbers must start at 0 and have no gaps"})
    rows = sum(int(p.get("rows", 0)) for p in parts.values())
    if manifest.get("rows") != rows:
        problems.append({"file": marker, "field": "rows", "value": manifest.get("rows"),
                         "problem": f"differs from the sum of the parts' rows, {rows}"})
    if counts.get("exported") != rows:
        problems.append({"file": marker, "field": "counts.exported", "value": counts.get("exported"),
                         "problem": f"differs from the parts' rows, {rows}"})
    accounted = sum(int(counts.get(k, 0)) for k in ("exported", "duplicates", "filtered", "rejected"))
    if counts.get("source_rows") != accounted:
        problems.append({"file": marker, "field": "counts", "value": _short(counts),
                         "problem": f"does not reconcile: source_rows {counts.get('source_rows')} != "
                                    f"exported + duplicates + filtered + rejected = {accounted}"})
    facts.update({"parts_in_manifest": len(parts), "rows": rows, **{f"count_{k}": v for k, v in counts.items()}})
    return _outcome(problems, facts)


# -- the checks ------------------------------------------------------------------------------


def hour_files(client: ContainerClient, names: list[str]) -> list[tuple[str, bytes]]:
    files = []
    for name in names:
        data = read_blob(client, name)
        if data is not None:
            files.append((name, data))
    return files


def events_parts(client: ContainerClient, layout: EventsLayout, hour: datetime) -> list[tuple[str, bytes]]:
    """The hour's parts present in the container, in part order."""
    names = [n for n in list_blobs(client, layout.parts_prefix(hour)) if layout.part_number(n, hour) is not None]
    return hour_files(client, sorted(names, key=lambda n: layout.part_number(n, hour)))


def _target(context: dg.AssetCheckExecutionContext, asset_key: dg.AssetKey, key: str):
    """The hour's latest materialization, so the UI knows which one the evaluation is about."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[key]), limit=1
    ).records
    if not records:
        return None
    return AssetCheckEvaluationTargetMaterializationData(
        run_id=records[0].event_log_entry.run_id, storage_id=records[0].storage_id, timestamp=records[0].timestamp
    )


def evaluate_hours(
    context: dg.AssetCheckExecutionContext,
    asset: str,
    name: str,
    blocking: bool,
    storage: AzureStorage,
    run: Callable[[datetime], Outcome],
) -> dg.AssetCheckResult:
    """Run one check for every hour of the step; one evaluation per hour, and a summary result."""
    keys = list(context.partition_keys)
    outcomes: dict[str, Outcome] = {}
    for key in keys:
        try:
            outcomes[key] = run(parse_hour(key))
        except Exception as exc:  # the container could not be read: that hour fails, saying why
            message = storage.redact(f"{type(exc).__name__}: {exc}")
            outcomes[key] = _outcome([{"problem": f"could not read the container: {message}"}], {})
        outcome = outcomes[key]
        (context.log.info if outcome.passed else context.log.error)(f"{asset} {name} {key}: {outcome.description}")
    if len(keys) == 1:
        outcome = outcomes[keys[0]]
        return dg.AssetCheckResult(passed=outcome.passed, metadata=outcome.metadata(), description=outcome.description)
    asset_key = dg.AssetKey(asset)
    for key, outcome in outcomes.items():
        context.op_execution_context.log_event(dg.AssetCheckEvaluation(
            asset_key=asset_key, check_name=name, passed=outcome.passed, metadata=outcome.metadata(),
            description=outcome.description, blocking=blocking, partition=key,
            target_materialization_data=_target(context, asset_key, key),
        ))
    failed = [k for k, o in outcomes.items() if not o.passed]
    return dg.AssetCheckResult(
        passed=not failed,
        description=f"{len(keys) - len(failed)} of {len(keys)} hours passed"
        + (f"; failed: {', '.join(failed[:10])}" if failed else ""),
        metadata={"hours_checked": len(keys), "hours_failed": dg.MetadataValue.json(failed),
                  "first_hour": keys[0], "last_hour": keys[-1]},
    )


def build_events_checks(settings: Settings, partitions: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    layout = EventsLayout(settings.events_prefix, settings.project_id)
    container = settings.events_container

    @dg.asset_check(asset="events", name="schema", partitions_def=partitions, blocking=True,
                    description="Every line of the hour's parts parses, has the 49 keys in order (then the "
                                "same extra keys on every line) and the contract's JSON types.")
    def events_schema(context: dg.AssetCheckExecutionContext, storage: AzureStorage) -> dg.AssetCheckResult:
        client = storage.container(container)
        return evaluate_hours(context, "events", "schema", True, storage, lambda hour: schema_outcome(
            events_parts(client, layout, hour), EVENT_FIELD_NAMES, EVENT_FIELDS, allow_extras=True))

    @dg.asset_check(asset="events", name="unique", partitions_def=partitions,
                    description="No uuid and no ($insert_id, device_id) repeats across the hour's parts.")
    def events_unique(context: dg.AssetCheckExecutionContext, storage: AzureStorage) -> dg.AssetCheckResult:
        client = storage.container(container)
        return evaluate_hours(context, "events", "unique", False, storage, lambda hour: unique_outcome(
            events_parts(client, layout, hour), [("uuid",), ("$insert_id", "device_id")]))

    @dg.asset_check(asset="events", name="complete", partitions_def=partitions, blocking=True,
                    description="The marker's manifest matches the parts in the container (names, sizes, "
                                "Content-MD5, no stray parts) and its counts reconcile.")
    def events_complete(context: dg.AssetCheckExecutionContext, storage: AzureStorage) -> dg.AssetCheckResult:
        client = storage.container(container)
        return evaluate_hours(context, "events", "complete", True, storage,
                              lambda hour: complete_outcome(client, layout, hour))

    return [events_schema, events_unique, events_complete]


def merged_ids_files(client: ContainerClient, layout: MergedIdsLayout, hour: datetime) -> list[tuple[str, bytes]]:
    """The hour's merged-IDs file, when the hour has merges."""
    return hour_files(client, [layout.file(hour)])


def build_merged_ids_checks(settings: Settings, partitions: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    layout = MergedIdsLayout(settings.merged_ids_prefix, settings.merged_ids_scope)
    container = settings.merged_ids_container
    fields = tuple((name, Kind.INT) for name in MERGED_ID_FIELDS)
    scope = int(settings.merged_ids_scope)

    @dg.asset_check(asset="merged_ids", name="schema", partitions_def=partitions, blocking=True,
                    description="Every line parses, has scope, merge_time, merge_server_time, amplitude_id, "
                                "merged_amplitude_id in order, all integers (never null), and the configured scope.")
    def merged_ids_schema(context: dg.AssetCheckExecutionContext, storage: AzureStorage) -> dg.AssetCheckResult:
        client = storage.container(container)

        def run(hour: datetime) -> Outcome:
            files = merged_ids_files(client, layout, hour)
            return schema_outcome(files, MERGED_ID_FIELDS, fields, allow_extras=False, nullable=False,
                                  fixed={"scope": str(scope)})

        return evaluate_hours(context, "merged_ids", "schema", True, storage, run)

    @dg.asset_check(asset="merged_ids", name="unique", partitions_def=partitions,
                    description="No amplitude_id is merged away twice in the hour.")
    def merged_ids_unique(context: dg.AssetCheckExecutionContext, storage: AzureStorage) -> dg.AssetCheckResult:
        client = storage.container(container)
        return evaluate_hours(context, "merged_ids", "unique", False, storage, lambda hour: unique_outcome(
            merged_ids_files(client, layout, hour), [("amplitude_id",)]))

    return [merged_ids_schema, merged_ids_unique]
