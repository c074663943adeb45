"""The package as a user installs and loads it: metadata, README references, warnings on load."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import environment

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _headings(markdown: str) -> set[str]:
    """The Markdown headings, outside fenced code blocks (a `# comment` in a shell example is not one)."""
    headings, fenced = set(), False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            headings.add(line.lstrip("#").strip())
    return headings


HEADINGS = _headings(README)

# How a project file sends its reader to a section of the README or of a docs page:
# `(README, "Configuration")`, `(docs/deployment.md, "Sizing a run's pod")`, or
# `the README's "Configuration" section`.
SECTION_REFERENCE = re.compile(r"(README|docs/[\w-]+\.md)(?:'s)?,? \"([^\"]+)\"")


def _document(name: str) -> str:
    path = ROOT / ("README.md" if name == "README" else name)
    return path.read_text() if path.exists() else ""
# The files a user reads beside the README: the package, its scripts, the build and the deployment files.
PROJECT_FILES = ("pyproject.toml", "Makefile", "Dockerfile", "amplitude_assets/**/*.py", "scripts/*.py", "bench/*.py",
                 "deploy/**/*.yaml")


def test_the_license_is_an_spdx_string_that_the_required_setuptools_reads():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    # setuptools reads a license string as SPDX (PEP 639) from 77 on; a table form is deprecated.
    requires = project["build-system"]["requires"]
    setuptools = [r for r in requires if r.replace(" ", "").startswith("setuptools")]
    assert setuptools == ["setuptools>=77"]


def test_readme_links_to_its_own_sections_resolve():
    anchors = re.findall(r"\]\(#([^)]+)\)", README)
    assert anchors, "the README links to its own sections"
    slugs = {_slug(h) for h in HEADINGS}
    assert [a for a in anchors if a not in slugs] == []


def test_references_and_headings_are_read_as_written():
    assert SECTION_REFERENCE.findall('limits (README, "Sizing a run\'s pod").') == [("README", "Sizing a run's pod")]
    assert SECTION_REFERENCE.findall('see the README\'s "Configuration" section') == [("README", "Configuration")]
    assert SECTION_REFERENCE.findall('(docs/format.md, "Field types")') == [("docs/format.md", "Field types")]
    markdown = "# Title\n## Two words\n```bash\n# a shell comment\n```\n### After the block\n"
    assert _headings(markdown) == {"Title", "Two words", "After the block"}


def test_sections_named_by_the_project_files_exist():
    named = sorted(
        (str(path.relative_to(ROOT)), document, section)
        for pattern in PROJECT_FILES
        for path in ROOT.glob(pattern)
        for document, section in SECTION_REFERENCE.findall(path.read_text())
    )
    # The package and the deployment files point at sections of the README and the docs: a scan
    # that finds no reference has stopped reading them, and would pass whatever the docs say.
    assert named, f"no section reference found in {PROJECT_FILES}"
    assert [(path, document, section) for path, document, section in named
            if section not in _headings(_document(document))] == []


def test_loading_the_definitions_shows_no_dagster_beta_or_preview_warning():
    env = environment(PYTHONPATH=str(ROOT))
    loaded = subprocess.run(
        [sys.executable, "-W", "default", "-c",
         "import warnings, amplitude_assets.definitions; warnings.warn('a warning of another kind')"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert "BetaWarning" not in loaded.stderr
    assert "PreviewWarning" not in loaded.stderr
    # The filter is scoped to those two categories: other warnings still show.
    assert "UserWarning: a warning of another kind" in loaded.stderr
