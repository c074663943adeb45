"""The package as a user installs and loads it: metadata, README references, warnings on load."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


HEADINGS = {line.lstrip("#").strip() for line in README.splitlines() if re.match(r"#{1,6} ", line)}


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


def test_readme_sections_named_by_the_project_files_exist():
    named = []
    files = [ROOT / "pyproject.toml", ROOT / "Makefile", ROOT / "Dockerfile",
             *ROOT.glob("amplitude_assets/**/*.py"), *ROOT.glob("scripts/*.py"), *ROOT.glob("bench/*.py")]
    for path in files:
        for section in re.findall(r"README(?:'s)? \"([^\"]+)\" section", path.read_text()):
            named.append((path.name, section))
    assert [(f, s) for f, s in named if s not in HEADINGS] == []


def test_loading_the_definitions_shows_no_dagster_beta_or_preview_warning():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMPLITUDE_", "AZURE_"))}
    env["PYTHONPATH"] = str(ROOT)
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
