"""What a check found: one hour's `Outcome`, the `Found` problems of one kind, and how a problem reads.

A problem is a dict with the file, the line, the field and the value when they are known,
and what is wrong. Every problem is counted; only the first MAX_REPORTED are kept, so a
badly damaged hour does not fill the run's metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import dagster as dg

MAX_REPORTED = 20  # problems listed in a failed evaluation's metadata (all are counted)


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


def outcome_of(problems: list[dict], facts: dict) -> Outcome:
    """An hour's outcome from all of its problems (the first MAX_REPORTED kept)."""
    return Outcome(passed=not problems, problems=problems[:MAX_REPORTED], problem_count=len(problems), facts=facts)


@dataclass
class Found:
    """The first MAX_REPORTED problems of one kind, and how many there are in all."""

    problems: list[dict] = field(default_factory=list)
    count: int = 0

    def add(self, other: Found) -> None:
        self.problems.extend(other.problems[: MAX_REPORTED - len(self.problems)])
        self.count += other.count


def combine(found: list[Found], facts: dict) -> Outcome:
    """An hour's outcome from the problems of each kind, in the order of `found`."""
    problems = [p for f in found for p in f.problems]
    return Outcome(passed=not problems, problems=problems[:MAX_REPORTED],
                   problem_count=sum(f.count for f in found), facts=facts)


def short(value: object, limit: int = 200) -> str:
    """A value as a problem shows it: its text (JSON unless a string), cut at `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "…"
