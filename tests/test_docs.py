"""The README and docs/ against the repository: links, `make` targets and `python -m` commands.

A page that the code contradicts is a bug. These tests catch the contradictions a reader
meets first: a relative link or #anchor that leads nowhere, a `make` target the Makefile
does not have, a `python -m` module that does not exist, or a subcommand of
`python -m amplitude_assets` that the command line does not define.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
ATX_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)\s*$")
CODE_SPAN = re.compile(r"(`+)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.S)  # never across a blank line
# [text](target "title") and ![alt](target); the text may hold one level of brackets.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)
HTML_ANCHOR = re.compile(r"""<[a-z]+\b[^>]*?\b(?:id|name)\s*=\s*["']([^"']+)["']""", re.I)
ABSOLUTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)
PYTHON = re.compile(r"(?:^|/)python(?:3(?:\.\d+)?)?$")
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", "{", "}"}
PREFIXES = {"$", "env", "sudo", "time", "exec"}  # words before the command itself
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


# --- reading a page -------------------------------------------------------------------------

def split_page(text: str) -> tuple[str, list[str]]:
    """The page's prose (fenced code blocks blanked, so line numbers stay) and its code blocks."""
    prose, blocks, block, fence = [], [], [], None
    for line in text.splitlines():
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)
            block = []
            prose.append("")
        elif fence is not None:
            closed = FENCE.match(line)
            if closed and closed.group(1)[0] == fence[0] and len(closed.group(1)) >= len(fence) \
                    and not line.strip()[len(closed.group(1)):].strip():
                blocks.append("\n".join(block))
                fence = None
            else:
                block.append(line)
            prose.append("")
        else:
            prose.append(line)
    if fence is not None:
        blocks.append("\n".join(block))
    return "\n".join(prose), blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lowercased, punctuation but - and _
    dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every #anchor a page offers: its headings (GitHub numbers repeats -1, -2, ...) and HTML ids."""
    prose, _ = split_page(text)
    lines = prose.splitlines()
    found: set[str] = set()
    seen: dict[str, int] = {}
    for i, line in enumerate(lines):
        heading = ATX_HEADING.match(line)
        if heading:
            title = heading.group(1)
        elif (i + 1 < len(lines) and line.strip() and not line.lstrip().startswith(("|", "-", "*", ">"))
              and SETEXT_UNDERLINE.match(lines[i + 1]) and (i == 0 or not lines[i - 1].strip())):
            title = line
        else:
            continue
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    found.update(HTML_ANCHOR.findall(prose))
    return found


def links(text: str) -> list[str]:
    """The targets of the page's links and images, outside code."""
    prose, _ = split_page(text)
    prose = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), prose)
    return INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose) + HTML_LINK.findall(prose)


def code(text: str) -> list[str]:
    """The page's code: each code span's text, and each line of each code block (continued
    lines joined)."""
    prose, blocks = split_page(text)
    pieces = [m.group(2) for m in CODE_SPAN.finditer(prose)]
    for block in blocks:
        pieces.extend(block.replace("\\\n", " ").splitlines())
    return pieces


def commands(piece: str) -> list[list[str]]:
    """The shell commands in a piece of code, as words: split at ; && || | and parentheses,
    comments dropped, leading VAR=value assignments and prompts skipped."""
    try:
        lexer = shlex.shlex(piece, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words = list(lexer)
    except ValueError:  # an unbalanced quote: prose in a span, not a command
        words = piece.split()
    found, current = [], []
    for word in [*words, ";"]:
        if word in SEPARATORS or (word and set(word) <= set("();<>|&")):
            while current and (current[0] in PREFIXES or ASSIGNMENT.match(current[0])):
                current.pop(0)
            if current:
                found.append(current)
            current = []
        else:
            current.append(word)
    return found


# --- what the repository has ----------------------------------------------------------------

def make_targets(makefile: str) -> set[str]:
    """The Makefile's explicit targets (no pattern rules, no variables, no special targets)."""
    targets = set()
    for line in makefile.splitlines():
        rule = re.match(r"^([^\t#:=][^:=]*?)\s*::?(?!=)", line)
        if rule:
            targets.update(t for t in rule.group(1).split() if "%" not in t and "$" not in t and not t.startswith("."))
    return targets


def cli_subcommands(main_py: str) -> set[str]:
    """The verbs `python -m amplitude_assets` accepts: every `add_parser("verb", aliases=[...])`."""
    verbs = set()
    for node in ast.walk(ast.parse(main_py)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_parser":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                verbs.add(node.args[0].value)
            for keyword in node.keywords:
                if keyword.arg == "aliases" and isinstance(keyword.value, (ast.List, ast.Tuple)):
                    verbs.update(e.value for e in keyword.value.elts if isinstance(e, ast.Constant))
    return verbs


def runnable_module(module: str, root: Path = ROOT) -> bool:
    """Whether `python -m module` can run from the repository root: a module or a package
    with a __main__ in the repository, or one the environment can import."""
    if not re.fullmatch(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*", module):
        return False
    path = root.joinpath(*module.split("."))
    if path.with_suffix(".py").is_file():
        return True
    if path.is_dir():
        return (path / "__main__.py").is_file()
    try:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations is not None:
            spec = importlib.util.find_spec(f"{module}.__main__")
    except (ImportError, ValueError):
        return False
    return spec is not None


MAKE_TARGETS = make_targets((ROOT / "Makefile").read_text())
SUBCOMMANDS = cli_subcommands((ROOT / "amplitude_assets" / "__main__.py").read_text())


# --- the checks, each returning the problems it found ---------------------------------------

def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """Relative links whose file is missing, or whose #anchor is not a heading of that file."""
    problems = []
    for target in links(page.read_text()):
        if ABSOLUTE.match(target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.is_relative_to(root.resolve()):
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text()):
            problems.append(f"{target}: no heading #{anchor} in {resolved.relative_to(root.resolve())}")
    return problems


def make_invocations(text: str) -> list[list[str]]:
    """Each `make` command in the page's code, as its list of targets."""
    found = []
    for piece in code(text):
        for words in commands(piece):
            if words[0] == "make":
                found.append([w for w in words[1:] if not w.startswith("-") and not ASSIGNMENT.match(w)])
    return found


def python_modules(text: str) -> list[tuple[str, list[str]]]:
    """Each `python -m module args...` in the page's code, as (module, args)."""
    found = []
    for piece in code(text):
        for words in commands(piece):
            if not PYTHON.search(words[0]):
                continue
            options = words[1:]
            while options and options[0].startswith("-") and not options[0].startswith(("-m", "-c")):
                options = options[2:] if options[0] in ("-W", "-X") else options[1:]
            if len(options) >= 2 and options[0] == "-m":
                found.append((options[1], options[2:]))
            elif options and options[0].startswith("-m") and len(options[0]) > 2:  # python -mmodule
                found.append((options[0][2:], options[1:]))
    return found


def unknown_make_targets(text: str, targets: set[str] = MAKE_TARGETS) -> list[str]:
    return [f"make {t}" for invocation in make_invocations(text) for t in invocation if t not in targets]


def unknown_python_modules(text: str, subcommands: set[str] = SUBCOMMANDS, root: Path = ROOT) -> list[str]:
    problems = []
    for module, args in python_modules(text):
        if not runnable_module(module, root):
            problems.append(f"python -m {module}: no such module")
        elif module == "amplitude_assets":
            verbs = [a for a in args if not a.startswith("-")]
            if verbs and verbs[0] not in subcommands:
                problems.append(f"python -m amplitude_assets {verbs[0]}: no such subcommand")
            elif not verbs and not {"-h", "--help"} & set(args):
                problems.append("python -m amplitude_assets: names no subcommand")
    return problems


# --- the tests ------------------------------------------------------------------------------

IDS = [str(p.relative_to(ROOT)) for p in PAGES]


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_relative_links_and_anchors_resolve(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_make_targets_named_are_in_the_makefile(page):
    assert unknown_make_targets(page.read_text()) == []


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_python_modules_and_subcommands_named_exist(page):
    assert unknown_python_modules(page.read_text()) == []


def test_the_pages_give_the_checks_something_to_check():
    """A parser that found nothing would pass every test above; the docs do link, and name
    make targets, modules and subcommands."""
    texts = [p.read_text() for p in PAGES]
    assert (ROOT / "docs").is_dir() and len(PAGES) > 1
    assert any(not ABSOLUTE.match(t) and "#" in t for text in texts for t in links(text))
    named_targets = {t for text in texts for i in make_invocations(text) for t in i}
    assert {"demo", "test"} <= named_targets <= MAKE_TARGETS
    assert {"demo", "test", "bench"} <= MAKE_TARGETS
    modules = {m: args for text in texts for m, args in python_modules(text)}
    assert "amplitude_assets" in modules and "pytest" in modules
    assert {"backfill", "check-destination", "test-alert"} <= SUBCOMMANDS


# The checkers on pages written to fail them: each problem is reported.

def test_a_missing_file_or_heading_is_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## A `code` heading: yes\n\nSetext\n------\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Title\n\n"
        "[ok](docs/other.md) [ok](docs/other.md#other-page) [ok](docs/other.md#a-code-heading-yes)\n"
        "[ok](docs/other.md#setext) [ok](#title) ![img](docs/other.md) [web](https://example.com/x#y)\n"
        "[gone](docs/missing.md) [bad anchor](docs/other.md#nope) [bad self](#nope) ![gone](img.png)\n"
        "[up](../outside.md) `[in code](docs/missing.md)`\n\n"
        "```\n[in a block](docs/missing.md)\n# not a heading\n```\n"
        "[block heading](#not-a-heading)\n"
    )
    assert broken_links(page, tmp_path) == [
        "docs/missing.md: no such file",
        "docs/other.md#nope: no heading #nope in docs/other.md",
        "#nope: no heading #nope in README.md",
        "img.png: no such file",
        "../outside.md: outside the repository",
        "#not-a-heading: no heading #not-a-heading in README.md",
    ]


def test_repeated_headings_get_numbered_anchors():
    assert {"setup", "setup-1", "why-16-faster", "hour--is-not-ready"} <= anchors(
        "# Setup\n\n## Setup\n\n## Why 1.6× faster?\n\n## \"hour … is not ready\"\n")


def test_an_unknown_make_target_is_reported():
    text = (
        "Run `make demo`, `DEMO_UI_PORT=3001 make demo`, `make -j2 test` or `make nope`.\n\n"
        "```bash\nmake bench   # make bogus in a comment\ncd x && make missing\n```\n"
        "Make sure nothing else counts: `make` alone, and prose make believe.\n"
    )
    assert unknown_make_targets(text, {"demo", "test", "bench"}) == ["make nope", "make missing"]


def test_an_unknown_module_or_subcommand_is_reported(tmp_path):
    (tmp_path / "docpkg").mkdir()
    (tmp_path / "docpkg" / "__init__.py").write_text("")
    (tmp_path / "docpkg" / "tool.py").write_text("")
    (tmp_path / "amplitude_assets").mkdir()
    (tmp_path / "amplitude_assets" / "__main__.py").write_text("")
    text = (
        "`python -m docpkg.tool`, `.venv/bin/python -W default -m pytest -m e2e`, `python -m json.tool`,\n"
        "`python -m amplitude_assets\n  backfill --start x`, `python -m amplitude_assets --help`.\n\n"
        "```sh\nX=1 python3 -m docpkg.nothing   # a comment\npython -m docpkg\n"
        "set -a && .venv/bin/python -m amplitude_assets frobnicate --now\npython -m amplitude_assets\n```\n"
    )
    assert unknown_python_modules(text, {"backfill"}, tmp_path) == [
        "python -m docpkg.nothing: no such module",
        "python -m docpkg: no such module",
        "python -m amplitude_assets frobnicate: no such subcommand",
        "python -m amplitude_assets: names no subcommand",
    ]


def test_subcommands_are_read_from_the_parser_definitions():
    source = (
        "def main():\n    verbs = parser.add_subparsers()\n    verbs.add_parser('one', help='x')\n"
        "    verbs.add_parser(\"two\", aliases=['deux'])\n"
    )
    assert cli_subcommands(source) == {"one", "two", "deux"}
