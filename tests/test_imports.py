"""Imports go one way: sources -> shaping (transform) -> encoding and writing (destination) -> Dagster wiring.

Read from the source text (ast), so a cycle shows here even where Python would tolerate it
(an import inside a function). Imports under `if TYPE_CHECKING:` are for annotations only
and are not counted.
"""

import ast
from pathlib import Path

PACKAGE = "amplitude_assets"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(path: Path) -> set[str]:
    """Every module the file imports, anywhere in it, as dotted names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking_only(node)
               for child in node.body for n in ast.walk(child)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = module_name(path).split(".")
                base = base[: len(base) - node.level + (path.name == "__init__.py")]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            # `from amplitude_assets import duck` imports the module amplitude_assets.duck
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        edges[name] = {m for m in imported(path) if m in modules and m != name and m != PACKAGE}
    return edges


def all_imports() -> dict[str, set[str]]:
    return {module_name(p): imported(p) for p in ROOT.rglob("*.py")}


def test_the_graph_is_read():
    edges = graph()
    assert "amplitude_assets.destination.writer" in edges["amplitude_assets.destination.io_manager"]
    assert "amplitude_assets.partitions" in edges["amplitude_assets.settings"]
    assert "amplitude_assets.duck" in edges["amplitude_assets.transform"]  # `from amplitude_assets import duck`


def test_no_cycle_among_the_package_modules():
    edges = graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []


def _reaching(prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph().items()
        if module == prefix or module.startswith(prefix + ".")
        for target in targets
        if any(target == f or target.startswith(f + ".") for f in forbidden)
    )


def test_sources_never_reach_shaping_or_destination():
    assert _reaching("amplitude_assets.sources",
                     ("amplitude_assets.destination", "amplitude_assets.transform", "amplitude_assets.shaping")) == []


def test_shaping_never_reaches_destination():
    assert _reaching("amplitude_assets.transform", ("amplitude_assets.destination",)) == []
    assert _reaching("amplitude_assets.shaping", ("amplitude_assets.destination",)) == []


def test_destination_never_reaches_sources():
    assert _reaching("amplitude_assets.destination", ("amplitude_assets.sources",)) == []


# The one module that reaches into Dagster's and the Azure SDK's private names.
ADAPTER = f"{PACKAGE}.private_apis"


def test_no_private_dagster_module():
    private = sorted(
        f"{module} imports {target}"
        for module, targets in all_imports().items()
        for target in targets
        if target.split(".")[0].startswith("dagster") and any(part.startswith("_") for part in target.split(".")[1:])
        and module != ADAPTER
    )
    assert private == []
