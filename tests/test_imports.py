"""Imports go one way: sources -> shaping (transform) -> encoding and writing (destination) -> Dagster wiring.

Read from the source text (ast), so a cycle shows here even where Python would tolerate it
(an import inside a function). Imports under `if TYPE_CHECKING:` are for annotations only
and are not counted.

And Dagster's and the Azure SDK's private names are used in one module only,
`amplitude_assets/private_apis.py` (see "private attributes" below).
"""

import ast
import builtins
import importlib
import inspect
import re
import typing
from pathlib import Path

import dagster as dg
from dagster._annotations import is_public  # what Dagster marks @public; a test may read it

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
    assert _reaching("amplitude_assets.first_wins", ("amplitude_assets.destination",)) == []
    assert _reaching("amplitude_assets.hour_outputs", ("amplitude_assets.destination",)) == []


def test_destination_never_reaches_sources():
    assert _reaching("amplitude_assets.destination", ("amplitude_assets.sources",)) == []


# The one module that reaches into Dagster's and the Azure SDK's private names.
ADAPTER = f"{PACKAGE}.private_apis"


# -- private attributes ------------------------------------------------------------------
#
# Dagster's and the Azure SDK's private names are reached in one module, the adapter; the
# rest of the package calls its functions. Outside the adapter:
#   1. no import of a private module or name of another package (`from dagster._core ...`);
#   2. `obj._name` only for a `_name` the same module defines (its own helpers and fields),
#      and no class of the package defines or sets a private name of a Dagster or Azure base
#      class (an override of `_raw_credential`, `self._blob_client = ...`);
#   3. on a parameter annotated as a Dagster context (`context: dg.OutputContext`), only the
#      names Dagster marks `@public` (`context.step_context` is not one), or one of
#      UNMARKED_PUBLIC; on an unannotated `context`, names public on some Dagster context;
#   4. on a parameter annotated with a Dagster type, and along attribute chains from it, no
#      attribute whose type is a Dagster class that `dagster` does not export
#      (`instance.get_backfills()` gives `PartitionBackfill`s).

# Context members Dagster documents but does not mark `@public` (in the pinned dagster).
UNMARKED_PUBLIC = {
    ("SensorEvaluationContext", "log"),  # the sensor's logger, in Dagster's sensor guide
    ("AssetCheckExecutionContext", "op_execution_context"),  # documented; gives a public OpExecutionContext
    ("AssetCheckExecutionContext", "run"),  # documented; gives a public DagsterRun
    ("AssetExecutionContext", "run"),  # what Dagster's deprecation of `run_id` says to use instead
}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _trees() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), filename=str(p)) for p in sorted(ROOT.rglob("*.py"))}


def _defined(node: ast.AST) -> set[str]:
    """The private names a module (or class) defines: functions, classes, fields, `self._x = ...`."""
    names = set()
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            names.add(n.id)
        elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) and isinstance(n.value, ast.Name) \
                and n.value.id in ("self", "cls"):
            names.add(n.attr)
    return {n for n in names if _private(n)}


def _foreign_private_names(cls: type) -> set[str]:
    """The private names of `cls`'s bases from other packages: their members and `self._x` fields."""
    names: set[str] = set()
    for base in cls.__mro__:
        if base is object or base.__module__.split(".")[0] == PACKAGE:
            continue
        names |= {n for n in vars(base) if _private(n)}
        try:
            names |= _defined(ast.parse(inspect.getsource(base)))
        except (OSError, TypeError, SyntaxError):
            pass
    return names


def _annotation_types(annotation, namespace: dict) -> list:
    """The classes an annotation names, resolved in `namespace`; a name that does not resolve
    (imported for type checking only) stays a string."""
    if annotation is None:
        return []
    if isinstance(annotation, typing.ForwardRef):
        annotation = annotation.__forward_arg__
    if isinstance(annotation, str):
        try:
            return _annotation_types(eval(annotation, dict(namespace)), namespace)  # noqa: S307 - an annotation
        except Exception:  # noqa: BLE001 - a name imported for type checking only
            try:
                tree = ast.parse(annotation, mode="eval")
            except SyntaxError:
                return []
            names = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name)]
            return [t for n in names for t in (_annotation_types(namespace[n], namespace) if n in namespace else [n])]
    found = [annotation] if isinstance(annotation, type) else []
    for arg in typing.get_args(annotation):
        found += _annotation_types(arg, namespace)
    return found


def _member(cls: type, name: str):
    """The function behind `cls.name` (a property's getter, a method), or None."""
    for klass in cls.__mro__:
        if name in vars(klass):
            value = vars(klass)[name]
            value = getattr(value, "fget", None) or getattr(value, "func", None) or value
            return getattr(value, "__func__", value)
    return None


def _return_types(cls: type, name: str) -> list:
    function = _member(cls, name)
    annotations = getattr(function, "__annotations__", None)
    if not isinstance(annotations, dict):
        return []
    return _annotation_types(annotations.get("return"), getattr(function, "__globals__", {}))


def _private_dagster_types(cls: type, name: str) -> set[str]:
    """The classes `cls.name` gives that are Dagster's but not exported by `dagster`."""
    private = set()
    for value in _return_types(cls, name):
        if isinstance(value, str):  # unresolved: imported for type checking only (from Dagster's modules)
            if not (hasattr(dg, value) or hasattr(builtins, value) or hasattr(typing, value)):
                private.add(value)
        elif value.__module__.split(".")[0] == "dagster" and getattr(dg, value.__name__, None) is not value:
            private.add(value.__name__)
    return private


def _dagster_class(annotation) -> type | None:
    """`dg.X` / `dagster.X` (or its string) as the class, when `dagster` exports it."""
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return None
    if isinstance(annotation, ast.Attribute) and isinstance(annotation.value, ast.Name) \
            and annotation.value.id in ("dg", "dagster"):
        value = getattr(dg, annotation.attr, None)
        return value if isinstance(value, type) else None
    return None


def _returned_class(cls: type, name: str) -> type | None:
    """The public Dagster class `cls.name` gives, to follow a chain (`context.instance.get_runs`)."""
    types = [t for t in _return_types(cls, name) if t is not type(None)]
    if len(types) == 1 and isinstance(types[0], type) and getattr(dg, types[0].__name__, None) is types[0]:
        return types[0]
    return None


class AnyContext:
    """Stands for an unannotated `context`: a name must be public on one of Dagster's contexts."""


CONTEXTS = [c for n in dir(dg) if n.endswith("Context") and isinstance(c := getattr(dg, n), type)]


def _public_on(cls: type, name: str) -> bool:
    return is_public(_member(cls, name) or getattr(cls, name, None)) or (cls.__name__, name) in UNMARKED_PUBLIC


def _typed_uses(tree: ast.Module) -> list[tuple[ast.Attribute, type]]:
    """(attribute, the Dagster class of its object) for uses on annotated parameters and chains from them."""
    uses = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        arguments = function.args
        parameters = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
        typed = {a.arg: cls for a in parameters if (cls := _dagster_class(a.annotation)) is not None}
        # An unannotated `context` is taken for one of Dagster's contexts.
        typed.update({a.arg: AnyContext for a in parameters if a.arg == "context" and a.annotation is None})
        if not typed:
            continue

        def type_of(node: ast.AST) -> type | None:
            if isinstance(node, ast.Name):
                return typed.get(node.id)
            if isinstance(node, ast.Call):
                node = node.func
            if isinstance(node, ast.Attribute):
                owner = type_of(node.value)
                return _returned_class(owner, node.attr) if owner and owner is not AnyContext else None
            return None

        for node in ast.walk(function):
            if isinstance(node, ast.Attribute) and (owner := type_of(node.value)) is not None:
                uses.append((node, owner))
    return uses


def private_uses() -> list[str]:
    """Every private use of another package's name outside the adapter, as `module:line: what`."""
    found = set()
    for module, tree in _trees().items():
        if module == ADAPTER:
            continue
        own = _defined(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] != PACKAGE:
                for alias in node.names:
                    if any(_private(p) for p in f"{node.module}.{alias.name}".split(".")):
                        found.add(f"{module}:{node.lineno}: imports {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] != PACKAGE and any(_private(p) for p in alias.name.split(".")):
                        found.add(f"{module}:{node.lineno}: imports {alias.name}")
            elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
                found.add(f"{module}:{node.lineno}: .{node.attr}, not this module's")
        classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
        if classes:
            loaded = importlib.import_module(module)
            for node in classes:
                cls = getattr(loaded, node.name, None)
                if isinstance(cls, type):
                    for name in sorted(_defined(node) & _foreign_private_names(cls)):
                        found.add(f"{module}:{node.lineno}: {node.name} overrides or sets {name} of a base class")
        for node, owner in _typed_uses(tree):
            name = owner.__name__
            if node.attr.startswith("_"):
                continue  # rule 2
            if owner is AnyContext:
                if not any(_public_on(context, node.attr) for context in CONTEXTS):
                    found.add(f"{module}:{node.lineno}: context.{node.attr} is not marked @public on any Dagster context")
                continue
            if name.endswith("Context") and not _public_on(owner, node.attr):
                found.add(f"{module}:{node.lineno}: {name}.{node.attr} is not marked @public")
            for private in sorted(_private_dagster_types(owner, node.attr)):
                found.add(f"{module}:{node.lineno}: {name}.{node.attr} gives Dagster's private {private}")
    return sorted(found)


def test_private_names_only_in_the_adapter():
    assert private_uses() == []


def _adapter_functions() -> dict[str, ast.FunctionDef]:
    tree = _trees()[ADAPTER]
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and not _private(n.name)}


def test_every_adapter_function_is_used():
    used = set()
    for module, tree in _trees().items():
        if module == ADAPTER:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "private_apis":
                used.add(node.attr)
            elif isinstance(node, ast.ImportFrom) and node.module == ADAPTER:
                used.update(alias.name for alias in node.names)
    assert sorted(set(_adapter_functions()) - used) == []


def _pins() -> dict[str, str]:
    text = (ROOT.parent / "pyproject.toml").read_text()
    return {name.lower(): version for name, version in re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', text)}


def test_every_adapter_function_says_what_and_why_against_the_pinned_release():
    pins = _pins()
    problems = []
    for name, function in _adapter_functions().items():
        doc = ast.get_docstring(function) or ""
        for part in ("Reaches into:", "No public API", "Checked against:"):
            if part not in doc:
                problems.append(f"{name}: no {part!r}")
        checked = re.search(r"Checked against: (.*?)\.?$", doc, re.MULTILINE)
        releases = re.findall(r"([a-z][a-z0-9-]*) (\d[\w.]*\d)", checked.group(1) if checked else "")
        if checked and not releases:
            problems.append(f"{name}: 'Checked against:' names no release")
        for package, version in releases:
            if pins.get(package) != version:
                problems.append(f"{name}: checked against {package} {version}, pinned {pins.get(package)}")
    assert problems == []
