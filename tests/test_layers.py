"""The import graph: layers import downward only, no module circle, the docs' map is current."""

from __future__ import annotations

import ast
import graphlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "startable"
MAP = ROOT / "docs" / "explanation" / "layers.md"

#: The layers, lowest first, as docs/explanation/layers.md lists them; a
#: module may import from its own layer and the ones before it.
LAYERS = (
    "core",
    "testing",
    "cluster._errors",
    "cluster._ipc",
    "cluster._sandbox",
    "cluster._data",
    "cluster._process",
    "cluster._redis",
    "cluster._system",
    "cluster",
    "cli",
)
#: `_errors` and `_names` are one layer (the lowest of the cluster).
SAME_LAYER = {
    "cluster._names": "cluster._errors",
    "cluster._child": "cluster._process",
    "cluster._zygote": "cluster._process",
}
#: The one import circle allowed: the core's deferred import (inside a function).
ALLOWED_CIRCLES = [{"startable._markers", "startable._startable"}]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    module_name(path): path
    for path in sorted(PACKAGE.rglob("*.py"))
    if path.name != "__main__.py"  # `python -m` entry points: never imported
}


def runtime_imports(path: Path, *, deferred: bool = True) -> set[str]:
    """The package's modules `path` imports when it runs (not those under TYPE_CHECKING);
    with `deferred` False, only those it imports when it is imported (not in functions)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for statement in child.orelse:
                    visit(statement)
            elif isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = package[: len(package) - child.level + 1] if child.level else []
                module = ".".join([*base, *([child.module] if child.module else [])])
                for alias in child.names:
                    full = f"{module}.{alias.name}"
                    found.add(full if full in MODULES else module)
            elif deferred or not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child)

    visit(ast.parse(path.read_text()))
    return {imported for imported in found if imported in MODULES} - {name}


GRAPH = {name: runtime_imports(path) for name, path in MODULES.items()}


def layer_of(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts or parts[0] not in ("testing", "cluster", "cli"):
        return "core"
    if parts[0] == "cluster" and len(parts) > 1:
        layer = f"cluster.{parts[1]}"
        return SAME_LAYER.get(layer, layer)
    return parts[0]


def test_every_module_is_in_a_known_layer() -> None:
    assert {layer_of(module) for module in MODULES} == set(LAYERS)


def test_layers_import_downward_only() -> None:
    upward = [
        f"{module} imports {imported}"
        for module, imports in GRAPH.items()
        for imported in imports
        if LAYERS.index(layer_of(imported)) > LAYERS.index(layer_of(module))
    ]
    assert upward == []


def test_no_import_circle_but_the_cores_deferred_one() -> None:
    graph = {module: set(imports) for module, imports in GRAPH.items()}
    circles: list[set[str]] = []
    while True:
        try:
            tuple(graphlib.TopologicalSorter(graph).static_order())
            break
        except graphlib.CycleError as exc:
            circle = exc.args[1]
            circles.append(set(circle))
            graph[circle[-2]].discard(circle[-1])  # break it, and look for another
    assert circles == ALLOWED_CIRCLES


def test_the_cores_allowed_circle_is_deferred() -> None:
    """`_markers` reads `_startable` only inside a function, never at import."""
    markers = MODULES["startable._markers"]
    assert "startable._startable" in GRAPH["startable._markers"]
    assert "startable._startable" not in runtime_imports(markers, deferred=False)


def test_the_map_in_the_docs_lists_every_module() -> None:
    listed = set(re.findall(r"^\| `(startable/[\w/]+\.py)` \|", MAP.read_text(), re.MULTILINE))
    present = {
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    }
    assert listed - present == set(), "the map names modules that are gone"
    assert present - listed == set(), "modules missing from docs/explanation/layers.md"


@pytest.mark.processes
@pytest.mark.parametrize(
    ("prefix", "why"),
    [
        ("startable.cluster._system", "the orchestration layer is the manager's"),
        ("startable.cluster._sandbox", "the sandbox loads only when permissions are given"),
    ],
)
def test_a_child_process_loads_only_what_it_runs(prefix: str, why: str) -> None:
    code = (
        "import sys, startable.cluster._process.remote; "
        f"print(sorted(m for m in sys.modules if m.startswith({prefix!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", why
