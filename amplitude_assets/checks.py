"""Per-hour asset checks. They read what is in the container, not the in-memory frame.

events:     schema (blocking), unique, complete (blocking)
merged_ids: schema (blocking), unique

Each asset's checks are one step (`multi_asset_check`) that reads each hour once:
one listing and the marker serve `complete`, and one streamed read of the parts serves
`schema` and `unique`. The parts are downloaded and decompressed in bounded batches
(BATCH_BYTES of text) while DuckDB scans the batch before, so the working set does not
grow with the hour; `unique` keeps only compact keys across the hour (a uuid's 128 bits,
a 128-bit hash of an `($insert_id, device_id)` pair, and each key's line position).

A batch is first scanned for a yes/no per line (keys in order, JSON types, patterns):
that is three DuckDB JSON functions per line. Only the lines that fail are looked at
again, to say exactly what is wrong with them.

Every check has `partitions_def`, so it runs for the hours of its run only and never
loads the asset through the IO manager. In a range run Dagster records a partitioned
check's result once, without a partition; so each hour's own result is also logged as an
`AssetCheckEvaluation` with `partition` set, and the step's result summarizes the range.
"""


import bisect
import collections
import io
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import dagster as dg
import polars as pl
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient
from isal import igzip

from amplitude_assets import duck
from amplitude_assets.destination.credentials import AzureStorage
from amplitude_assets.destination.blobs import md5_hex
from amplitude_assets.layout import EventsLayout, MergedIdsLayout
from amplitude_assets.lines import prefetch
from amplitude_assets.partitions import RANGE_START, accounted, manifest_hour, parse_hour, reconciles
from amplitude_assets.validation import EVENT_RULES, LineRules, json_path, scan_sql
from amplitude_assets.schema import (
    JSON_TYPES,
    MERGED_ID_FIELDS,
    UUID_PATTERN,
    VALUE_PATTERNS,
    Kind,
)

EXTRAS_NOTE = " (extra keys must be the same, in the same order, on every line of the hour as on its first)"
MAX_REPORTED = 20  # problems listed in a failed evaluation's metadata (all are counted)
BATCH_BYTES = 32 << 20  # decompressed text scanned at a time

# DuckDB's json_type names and string patterns per contract type come from schema.py,
# which the writer follows too.
_JSON_TYPES = JSON_TYPES
_TYPE_WORDS = {
    Kind.TIMESTAMP: "a timestamp string YYYY-MM-DD HH:MM:SS.ffffff or null",
    Kind.INT: "an integer or null",
    Kind.FLOAT: "a number or null",
    Kind.BOOL: "true, false or null",
    Kind.UUID: "a lowercase 8-4-4-4-12 uuid or null",
    Kind.STRING: "a string or null",
    Kind.DICT: "an object ({} when empty)",
    Kind.ARRAY_OR_STRING: "an array, a string or null",
    Kind.NUMBER: "a number or null",
}
_PATTERNS = VALUE_PATTERNS


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


@dataclass
class Found:
    """The first MAX_REPORTED problems of one kind, and how many there are in all."""

    problems: list[dict] = field(default_factory=list)
    count: int = 0

    def add(self, other: "Found") -> None:
        self.problems.extend(other.problems[: MAX_REPORTED - len(self.problems)])
        self.count += other.count


def _combine(found: list[Found], facts: dict) -> Outcome:
    problems = [p for f in found for p in f.problems]
    return Outcome(passed=not problems, problems=problems[:MAX_REPORTED],
                   problem_count=sum(f.count for f in found), facts=facts)


def _short(value: object, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "…"


# -- reading the container, a batch at a time ------------------------------------------------


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


class BlobReader(io.RawIOBase):
    """A blob download as a file object: read as it arrives, a few megabytes at a time."""

    def __init__(self, downloader) -> None:
        self.downloader = downloader

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.downloader.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@dataclass
class Batch:
    """Consecutive lines of one file: `lines` are lines `first_line`, `first_line + 1`, ..."""

    file: str
    first_line: int
    lines: pl.Series


def file_batches(client: ContainerClient, name: str, problems: list[dict],
                 batch_bytes: int = BATCH_BYTES) -> Iterator[Batch]:
    """The lines of one gzip blob, streamed and decompressed `batch_bytes` at a time.

    A file that is not gzip of UTF-8 lines, or whose last line lacks its newline, adds a
    problem to `problems`; the lines before the damage are still checked.
    """
    line = 1
    rest = b""
    try:
        stream = BlobReader(client.download_blob(name, max_concurrency=1))
        with igzip.IGzipFile(fileobj=stream, mode="rb") as gz:
            while block := gz.read(batch_bytes):
                if rest:
                    block, rest = rest + block, b""
                cut = block.rfind(b"\n") + 1
                rest = block[cut:]
                if cut:
                    lines = _lines(block[:cut] if rest else block)
                    del block
                    yield Batch(name, line, lines)
                    line += len(lines)
    except ResourceNotFoundError:
        problems.append({"file": name, "problem": "listed, but gone before it could be read"})
        return
    except (OSError, EOFError, ValueError, pl.exceptions.ComputeError) as exc:
        problems.append({"file": name, "problem": f"not readable gzip UTF-8 JSON lines: {exc}"})
        return
    if rest:
        problems.append({"file": name, "line": line, "problem": "the last line does not end in a newline"})
        try:
            yield Batch(name, line, _lines(rest + b"\n"))
        except pl.exceptions.ComputeError as exc:
            problems.append({"file": name, "problem": f"not readable gzip UTF-8 JSON lines: {exc}"})


def _lines(text: bytes) -> pl.Series:
    """Newline-terminated UTF-8 lines as a string column (raises on invalid UTF-8)."""
    return pl.read_lines(io.BytesIO(text)).to_series().rename("text")


class Positions:
    """Maps a line's position in the hour (0, 1, ...) back to its file and line number."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.batches: list[tuple[str, int]] = []
        self.total = 0

    def add(self, batch: Batch) -> int:
        """Record a batch; returns the hour position of its first line."""
        start = self.total
        self.starts.append(start)
        self.batches.append((batch.file, batch.first_line))
        self.total += len(batch.lines)
        return start

    def locate(self, position: int) -> tuple[str, int]:
        i = bisect.bisect_right(self.starts, position) - 1
        name, first = self.batches[i]
        return name, first + position - self.starts[i]


# -- what a line must be ---------------------------------------------------------------------


def json_columns(con, lines: pl.DataFrame, types: list[str], strings: list[str]) -> pl.DataFrame:
    """Per line: its JSON kind, its keys in order, the JSON type of each of `types`, the text of `strings`.

    DuckDB's JSON functions work per line, so every line keeps its own keys and types
    (polars would infer one schema for all lines). Used on the few lines that failed the scan.
    """
    con.register("detail", lines.select("text").with_row_index("_i").to_arrow(compat_level=pl.CompatLevel.newest()))
    # Invalid lines become an empty object, so no JSON function sees them.
    columns = [
        "CASE WHEN valid THEN json_type(j) END AS kind",
        "CASE WHEN valid AND json_type(j) = 'OBJECT' THEN json_keys(j) END AS keys",
    ]
    if types:
        paths = ", ".join(json_path(k) for k in types)
        columns.append(f"CASE WHEN valid AND json_type(j) = 'OBJECT' THEN json_type(j, [{paths}]) END AS types")
    if strings:
        paths = ", ".join(json_path(k) for k in strings)
        columns.append(f"CASE WHEN valid AND json_type(j) = 'OBJECT' THEN json_extract_string(j, [{paths}]) END AS strings")
    checked = "SELECT _i, valid, CASE WHEN valid THEN text ELSE '{}' END AS j FROM (SELECT _i, text, json_valid(text) AS valid FROM detail)"
    found = con.sql(f"SELECT {', '.join(columns)} FROM ({checked}) ORDER BY _i").pl()
    con.unregister("detail")
    found = found.select(
        "kind", "keys",
        *(pl.col("types").list.get(i).alias(f"t:{k}") for i, k in enumerate(types)),
        *(pl.col("strings").list.get(i).alias(f"s:{k}") for i, k in enumerate(strings)),
    )
    return pl.concat([lines, found], how="horizontal")


# -- what is wrong with a line that failed the scan ----------------------------------------------


def _structure_problems(scanned: pl.DataFrame) -> tuple[pl.DataFrame, Found]:
    """Lines that are not JSON objects; returns the object lines and the problems."""
    bad = scanned.filter(pl.col("kind").is_null() | (pl.col("kind") != "OBJECT"))
    problems = [
        {"file": r["file"], "line": r["line"], "value": _short(r["text"]),
         "problem": "not valid JSON" if r["kind"] is None else "not a JSON object"}
        for r in bad.head(MAX_REPORTED).iter_rows(named=True)
    ]
    return scanned.filter(pl.col("kind") == "OBJECT"), Found(problems, bad.height)


OLD_ORDER_NOTE = ("keys in the order an earlier release wrote (the 49 fields in the seed's order, then the "
                  "extra keys), not in code-point order: re-export this hour to upgrade it; its values are not damaged")


def _key_problems(objects: pl.DataFrame, expected: list[str], extras: set[str], head: tuple[str, ...] = ()) -> Found:
    """Keys in the expected order. A line in the order an earlier release wrote (`head`, then
    the extras) is named as such: an hour to re-export, not damage."""
    if objects.height == 0:
        return Found()
    bad = objects.filter(pl.col("keys").list.join("\x1f") != "\x1f".join(expected))
    problems = []
    for r in bad.head(MAX_REPORTED).iter_rows(named=True):
        keys = list(r["keys"])
        if head and keys[: len(head)] == list(head) and sorted(keys) == expected:
            problems.append({"file": r["file"], "line": r["line"], "field": keys[0],
                             "value": _short(keys[:3]), "problem": OLD_ORDER_NOTE})
            continue
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
        if kind in _PATTERNS:
            wrong = wrong | ((jtype == "VARCHAR") & ~pl.col(f"s:{name}").str.contains(_PATTERNS[kind]))
        checks.append(wrong.fill_null(False).alias(name))
    flags = objects.select("file", "line", "text", *checks)
    long = (
        flags.unpivot(index=["file", "line", "text"], variable_name="field", value_name="wrong")
        .filter(pl.col("wrong"))
        .sort("file", "line", maintain_order=True)
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


def _fixed_problems(objects: pl.DataFrame, name: str, value: str) -> Found:
    wrong = objects.filter(pl.col(f"s:{name}").ne_missing(value))
    problems = [{"file": r["file"], "line": r["line"], "field": name, "value": r[f"s:{name}"],
                 "problem": f"must be {value}"} for r in wrong.head(MAX_REPORTED).iter_rows(named=True)]
    return Found(problems, wrong.height)


# -- unique keys across the hour --------------------------------------------------------------


def _key_label(key: tuple[str, ...]) -> str:
    return key[0] if len(key) == 1 else "(" + ", ".join(key) + ")"


def compact_keys(frame: pl.DataFrame, key: tuple[str, ...], start: int) -> pl.DataFrame:
    """A batch's keys as two 64-bit halves and the line's hour position; rows with a null part left out.

    A canonical uuid is its own 128 bits; anything else is a 128-bit hash of its exact text
    (a uuid lowercased first), so two different keys collide with odds of about 2^-128.
    """
    present = pl.all_horizontal([pl.col(n).is_not_null() for n in key])
    if key == ("uuid",):
        text = pl.col("uuid").str.to_lowercase()
    elif len(key) == 1:
        text = pl.col(key[0])
    else:  # each part's length first, so ("ab", "c") and ("a", "bc") differ
        text = pl.concat_str([e for n in key for e in (pl.col(n).str.len_bytes().cast(pl.String), pl.lit(":"), pl.col(n))])
    keyed = frame.select(text.alias("text"), pl.int_range(start, start + frame.height, dtype=pl.UInt32).alias("pos"),
                         present.alias("present")).filter("present")
    hashed = (pl.col("text").hash(seed=1), pl.col("text").hash(seed=2))
    if key == ("uuid",):
        digits = pl.col("text").str.replace_all("-", "", literal=True)
        canonical = pl.col("text").str.contains(UUID_PATTERN)
        high = pl.when(canonical).then(digits.str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64, strict=False))
        low = pl.when(canonical).then(digits.str.slice(16, 16).str.to_integer(base=16, dtype=pl.UInt64, strict=False))
        hashed = (high.otherwise(hashed[0]), low.otherwise(hashed[1]))
    return keyed.select(hashed[0].alias("high"), hashed[1].alias("low"), "pos")


@dataclass
class Repeats:
    """A key's repeats across the hour: how many, and (position, first position) of the first few."""

    count: int
    first: list[tuple[int, int]]


def find_repeats(keys: list[pl.DataFrame]) -> Repeats:
    """Repeats of a key over the hour's compact keys (in hour order): the first row wins.

    Only keys whose first half repeats can repeat whole, so the 128-bit comparison runs
    on those few; the hour's keys are looked at as the batches left them, not copied.
    """
    if not keys:
        return Repeats(0, [])
    frame = pl.concat(keys, rechunk=False)
    candidates = frame.filter(pl.col("high").is_duplicated())
    if candidates.height == 0:
        return Repeats(0, [])
    first = pl.struct("high", "low").is_first_distinct()
    repeated = candidates.filter(~first)
    if repeated.height == 0:
        return Repeats(0, [])
    shown = repeated.head(MAX_REPORTED).join(
        candidates.filter(first), on=["high", "low"], how="left", suffix="_first", maintain_order="left"
    )
    return Repeats(repeated.height, list(zip(shown["pos"].to_list(), shown["pos_first"].to_list())))


def fetch_lines(client: ContainerClient, wanted: dict[str, set[int]]) -> dict[tuple[str, int], str]:
    """The text of a few lines, by file and line number (read again: only when keys repeat)."""
    found: dict[tuple[str, int], str] = {}
    for name, numbers in wanted.items():
        last = max(numbers)
        for batch in file_batches(client, name, []):
            for number in numbers:
                if batch.first_line <= number < batch.first_line + len(batch.lines):
                    found[(name, number)] = batch.lines[number - batch.first_line]
            if batch.first_line + len(batch.lines) > last:
                break
    return found


def _key_value(text: str | None, key: tuple[str, ...]) -> str:
    try:
        row = json.loads(text)
        parts = [row.get(n) for n in key]
    except (TypeError, ValueError, AttributeError):
        return "?"
    parts = [p if isinstance(p, str) else json.dumps(p, ensure_ascii=False) for p in parts]
    return ", ".join(p.lower() if key == ("uuid",) else p for p in parts)


# -- one read of an hour -------------------------------------------------------------------


@dataclass
class LinesScan:
    """What one read of an hour's files found: per check, the problems, and the facts."""

    schema: list[Found]
    unique: list[Found]
    facts: dict
    largest_batch: int  # lines in the largest batch handled: the working set's bound


def scan_files(client: ContainerClient, names: list[str], rules: LineRules, *, schema: bool = True,
               unique: bool = True, batch_bytes: int = BATCH_BYTES) -> LinesScan:
    """Read the files once, a batch at a time, for the schema and the unique checks.

    One thread downloads and decompresses the next batch; the batches before it are
    scanned side by side, one DuckDB thread each (a batch is smaller than the row group
    DuckDB splits work by, so one query would use one core); results are taken in order.
    """
    read_problems: list[dict] = []
    structure, keys_found, types_found, fixed_found = Found(), Found(), Found(), {n: Found() for n, _ in rules.fixed}
    keys: dict[tuple[str, ...], list[pl.DataFrame]] = {key: [] for key in rules.unique}
    key_fields = list(dict.fromkeys(n for key in rules.unique for n in key))
    positions = Positions()
    expected: list[str] | None = None
    extras: set[str] = set()
    largest = 0
    workers = duck.limits()["threads"]
    local = threading.local()
    connections: list = []

    def connection():
        if not hasattr(local, "con"):
            local.con = duck.connect(threads=1, share=workers)
            connections.append(local.con)
        return local.con

    def scan(batch: Batch, sql: str | None) -> pl.DataFrame:
        if sql is None:  # no JSON object in the hour yet: every line is looked at closely
            return pl.DataFrame({"ok": [False] * len(batch.lines),
                                 **{n: pl.Series([None] * len(batch.lines), dtype=pl.String) for n in key_fields}})
        con = connection()
        con.register("lines", pl.DataFrame({"text": batch.lines}).with_row_index("_i")
                     .to_arrow(compat_level=pl.CompatLevel.newest()))
        try:
            return con.sql(sql).pl()
        finally:
            con.unregister("lines")

    def first_keys(batch: Batch) -> list[str] | None:
        con = connection()
        con.register("lines", pl.DataFrame({"text": batch.lines}).with_row_index("_i").to_arrow())
        try:
            first = con.sql("SELECT k FROM (SELECT _i, try(json_keys(text)) AS k, try(json_type(text)) AS t "
                            "FROM lines) WHERE t = 'OBJECT' ORDER BY _i LIMIT 1").fetchall()
        finally:
            con.unregister("lines")
        return list(first[0][0]) if first else None

    def take(batch: Batch, start: int, scanned: pl.DataFrame) -> None:
        if schema and not scanned["ok"].all():
            bad = scanned["ok"].not_().arg_true()
            lines = pl.DataFrame({
                "file": pl.Series([batch.file] * len(bad), dtype=pl.String),
                "line": (bad.cast(pl.Int64) + batch.first_line).alias("line"),
                "text": batch.lines.gather(bad),
            })
            details = json_columns(connection(), lines, [n for n, _ in rules.fields], rules.string_fields)
            objects, found = _structure_problems(details)
            structure.add(found)
            keys_found.add(_key_problems(objects, expected or rules.expected_keys(None), extras,
                                         rules.head if rules.in_code_point_order else ()))
            types_found.add(_type_problems(objects, rules.fields, rules.nullable))
            for name, value in rules.fixed:
                fixed_found[name].add(_fixed_problems(objects, name, value))
        if unique:
            for key in rules.unique:
                keys[key].append(compact_keys(scanned, key, start))

    sql: str | None = None
    pending: collections.deque = collections.deque()
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="amplitude-check") as pool:
            for batch in prefetch(iter_batches(client, names, read_problems, batch_bytes)):
                start = positions.add(batch)
                largest = max(largest, len(batch.lines))
                if expected is None and (first := first_keys(batch)) is not None:
                    expected = rules.expected_keys(first)
                    extras = set(expected) - set(rules.head)
                    sql = scan_sql(rules, expected)
                pending.append((batch, start, pool.submit(scan, batch, sql)))
                del batch
                while len(pending) >= workers:
                    done, at, future = pending.popleft()
                    take(done, at, future.result())
            while pending:
                done, at, future = pending.popleft()
                take(done, at, future.result())
    finally:
        for con in connections:
            con.close()
    facts = {"files_checked": len(names), "lines_checked": positions.total}
    read_found = Found(read_problems[:MAX_REPORTED], len(read_problems))
    unique_found = [Found(read_problems[:MAX_REPORTED], len(read_problems))]
    if unique:
        repeats = {}
        for key in rules.unique:
            repeats[key] = find_repeats(keys[key])
            keys[key].clear()
        wanted: dict[str, set[int]] = {}
        for r in repeats.values():
            for pair in r.first:
                for position in pair:
                    name, number = positions.locate(position)
                    wanted.setdefault(name, set()).add(number)
        texts = fetch_lines(client, wanted) if wanted else {}
        for key, r in repeats.items():
            problems = []
            for position, first in r.first:
                (name, number), (first_name, first_number) = positions.locate(position), positions.locate(first)
                problems.append({"file": name, "line": number, "field": _key_label(key),
                                 "value": _short(_key_value(texts.get((name, number)), key)),
                                 "problem": f"repeats {first_name} line {first_number}"})
            unique_found.append(Found(problems, r.count))
    return LinesScan(
        schema=[read_found, structure, keys_found, types_found, *fixed_found.values()],
        unique=unique_found, facts=facts, largest_batch=largest,
    )


def iter_batches(client: ContainerClient, names: list[str], problems: list[dict], batch_bytes: int) -> Iterator[Batch]:
    for name in names:
        yield from file_batches(client, name, problems, batch_bytes)


# -- the marker ----------------------------------------------------------------------------


def complete_outcome(layout: EventsLayout, hour: datetime, listed: dict[str, dict], body: bytes | None) -> Outcome:
    """The marker's manifest matches the parts listed (names, sizes, Content-MD5) and reconciles."""
    marker = layout.marker(hour)
    facts = {"marker": marker, "parts_listed": len(listed)}
    if body is None:
        return _outcome([{"file": marker, "problem": "the marker is missing: the hour is not (or no longer) exported"}], facts)
    try:
        manifest = json.loads(body)
        parts = {p["name"]: p for p in manifest["parts"]}
        counts = manifest["counts"]
        numbers = sorted(layout.part_number(layout.folder + n, hour) for n in parts)
    except (ValueError, KeyError, TypeError) as exc:
        return _outcome([{"file": marker, "problem": f"the manifest is not readable: {type(exc).__name__}: {exc}"}], facts)
    problems: list[dict] = []
    expected_hour = manifest_hour(hour)
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
    if None in numbers or numbers != list(range(len(numbers))):
        problems.append({"file": marker, "field": "parts", "value": _short(sorted(parts)),
                         "problem": "part names must be this hour's, numbered from 0 with no gaps"})
    rows = sum(int(p.get("rows", 0)) for p in parts.values())
    if manifest.get("rows") != rows:
        problems.append({"file": marker, "field": "rows", "value": manifest.get("rows"),
                         "problem": f"differs from the sum of the parts' rows, {rows}"})
    if counts.get("exported") != rows:
        problems.append({"file": marker, "field": "counts.exported", "value": counts.get("exported"),
                         "problem": f"differs from the parts' rows, {rows}"})
    if not reconciles(counts):
        problems.append({"file": marker, "field": "counts", "value": _short(counts),
                         "problem": f"does not reconcile: source_rows {counts.get('source_rows')} != "
                                    f"exported + duplicates + filtered + rejected = {accounted(counts)}"})
    facts.update({"parts_in_manifest": len(parts), "rows": rows, **{f"count_{k}": v for k, v in counts.items()}})
    return _outcome(problems, facts)


# -- the checks ------------------------------------------------------------------------------

CHANGED_NOTE = ("is not the part whose lines were validated when it was written: {why}. Re-export the hour, "
                "or read it back (python -m amplitude_assets deep-check) to see what it holds")
READ_BACK_CONFIG = {"ops": {"events_checks": {"config": {"read_back": True}}}}


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
    return {"schema": _outcome(problems, facts), "unique": _outcome(problems, facts)}


def _manifest(body: bytes | None) -> dict | None:
    try:
        manifest = json.loads(body) if body is not None else None
    except ValueError:
        return None
    return manifest if isinstance(manifest, dict) else None


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
        outcomes["schema"] = _combine(scan.schema, scan.facts)
        outcomes["unique"] = _combine(scan.unique, scan.facts)
    return {name: outcomes[name] for name in selected}


def evaluate_hours(
    context: dg.AssetCheckExecutionContext,
    asset: str,
    specs: list[dg.AssetCheckSpec],
    storage: AzureStorage,
    run: Callable[[datetime, set[str]], dict[str, Outcome]],
) -> Iterator[dg.AssetCheckResult]:
    """Run the selected checks for every hour of the step; one evaluation per check and hour, and a summary."""
    asset_key = dg.AssetKey(asset)
    selected = {k.name for k in context.selected_asset_check_keys if k.asset_key == asset_key}
    specs = [s for s in specs if s.name in selected]
    keys = list(context.partition_keys)
    outcomes: dict[str, dict[str, Outcome]] = {}
    for key in keys:
        try:
            outcomes[key] = run(parse_hour(key), selected)
        except Exception as exc:  # the container could not be read: that hour fails, saying why
            message = storage.redact(f"{type(exc).__name__}: {exc}")
            failed = _outcome([{"problem": f"could not read the container: {message}"}], {})
            outcomes[key] = {name: failed for name in selected}
        for spec in specs:
            outcome = outcomes[key][spec.name]
            (context.log.info if outcome.passed else context.log.error)(f"{asset} {spec.name} {key}: {outcome.description}")
    # A run of one partition records the results below with their partition; a range run
    # (even of one hour, as the sensor sends) records them without one, so it also logs
    # each hour's own evaluation.
    if len(keys) == 1 and RANGE_START not in context.run.tags:
        for spec in specs:
            outcome = outcomes[keys[0]][spec.name]
            yield dg.AssetCheckResult(asset_key=asset_key, check_name=spec.name, passed=outcome.passed,
                                      metadata=outcome.metadata(), description=outcome.description)
        return
    for key in keys:
        for spec in specs:
            outcome = outcomes[key][spec.name]
            context.op_execution_context.log_event(dg.AssetCheckEvaluation(
                asset_key=asset_key, check_name=spec.name, passed=outcome.passed, metadata=outcome.metadata(),
                description=outcome.description, blocking=spec.blocking, partition=key,
            ))
    for spec in specs:
        failed = [k for k in keys if not outcomes[k][spec.name].passed]
        yield dg.AssetCheckResult(
            asset_key=asset_key, check_name=spec.name, passed=not failed,
            description=f"{len(keys) - len(failed)} of {len(keys)} hours passed"
            + (f"; failed: {', '.join(failed[:10])}" if failed else ""),
            metadata={"hours_checked": len(keys), "hours_failed": dg.MetadataValue.json(failed),
                      "first_hour": keys[0], "last_hour": keys[-1]},
        )


class CheckConfig(dg.Config):
    """`read_back`: read every part back and check its lines, instead of relying on the
    validation the export recorded (the deep check: `python -m amplitude_assets deep-check`)."""

    read_back: bool = False


def hourly_checks(
    name: str,
    description: str,
    asset: str,
    partitions: dg.PartitionsDefinition,
    checks: list[tuple[str, bool, str]],
    container: str,
    run: Callable[[ContainerClient, datetime, set[str], bool], dict[str, Outcome]],
) -> dg.AssetChecksDefinition:
    """One multi-asset check over `checks` (name, blocking, description), any subset of them selectable:
    `run(client, hour, selected)` evaluates an hour of the asset read from `container`, for every hour of the step."""
    specs = [dg.AssetCheckSpec(check, asset=asset, blocking=blocking, partitions_def=partitions, description=text)
             for check, blocking, text in checks]

    @dg.multi_asset_check(specs=specs, name=name, can_subset=True, description=description)
    def multi_check(context: dg.AssetCheckExecutionContext, storage: AzureStorage, config: CheckConfig):
        client = storage.container(container)
        yield from evaluate_hours(context, asset, specs, storage,
                                  lambda hour, selected: run(client, hour, selected, config.read_back))

    return multi_check


def build_events_checks(settings, partitions: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    layout = EventsLayout(settings.events_prefix, settings.project_id)
    checks = [
        ("schema", True, "Every line of the hour's parts parses, has the 49 fields and the hour's extra keys in "
                         "code-point order, the same on every line, and the contract's JSON types. Validated "
                         "when the parts were written; the check makes sure the parts present are those."),
        ("unique", False, "No uuid and no ($insert_id, device_id) repeats across the hour's parts."),
        ("complete", True, "The marker's manifest matches the parts in the container (names, sizes, Content-MD5, "
                           "no stray parts) and its counts reconcile."),
    ]

    def run(client: ContainerClient, hour: datetime, selected: set[str], read_back: bool) -> dict[str, Outcome]:
        return events_hour_outcomes(client, layout, hour, selected, read_back=read_back)

    return [hourly_checks("events_checks", "One read of each hour serves the schema, unique and complete checks.",
                          "events", partitions, checks, settings.events_container, run)]


def build_merged_ids_checks(settings, partitions: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    layout = MergedIdsLayout(settings.merged_ids_prefix, settings.merged_ids_scope)
    rules = LineRules(head=MERGED_ID_FIELDS, fields=tuple((name, Kind.INT) for name in MERGED_ID_FIELDS),
                      allow_extras=False, nullable=False, fixed=(("scope", str(int(settings.merged_ids_scope))),),
                      unique=(("amplitude_id",),))
    checks = [
        ("schema", True, "Every line parses, has scope, merge_time, merge_server_time, amplitude_id, "
                         "merged_amplitude_id in order, all integers (never null), and the configured scope."),
        ("unique", False, "No amplitude_id is merged away twice in the hour."),
    ]

    def run(client: ContainerClient, hour: datetime, selected: set[str], read_back: bool) -> dict[str, Outcome]:
        name = layout.file(hour)
        names = [name] if name in list_blobs(client, name) else []  # the file exists only when the hour has merges
        scan = scan_files(client, names, rules, schema="schema" in selected, unique="unique" in selected)
        outcomes = {"schema": _combine(scan.schema, scan.facts), "unique": _combine(scan.unique, scan.facts)}
        return {n: outcomes[n] for n in selected}

    return [hourly_checks("merged_ids_checks",
                          "One read of each hour's merged-IDs file serves the schema and unique checks.",
                          "merged_ids", partitions, checks, settings.merged_ids_container, run)]
