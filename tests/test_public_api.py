"""The public face: exports, module names, and the import layering."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import startable
import startable.cli
from startable.program import Phase

ROOT = Path(__file__).resolve().parent.parent
# __main__.py is the `python -m startable` entry point, never imported by `import startable`.
CORE_MODULES = sorted(p for p in (ROOT / "startable").glob("*.py") if p.name != "__main__.py")
UPPER_LAYERS = ("cli", "testing", "cluster")


PUBLIC_MODULES = ("startable", "startable.program", "startable.testing", "startable.cluster")


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_a_tuple_of_existing_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert isinstance(exported, tuple)
    assert len(set(exported)) == len(exported)
    for attribute in exported:
        assert hasattr(module, attribute), attribute
    public = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and not isinstance(v, ModuleType) and n != "annotations"
    }
    assert public == set(exported)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_objects_report_the_public_module(name: str) -> None:
    module = importlib.import_module(name)
    for attribute in module.__all__:
        obj = getattr(module, attribute)
        where = getattr(obj, "__module__", name)
        if callable(obj) and not isinstance(obj, (type(startable.Hook), type(Phase))):
            assert where == name, (attribute, where)


def test_fixed_names_from_the_issue() -> None:
    assert [s.name for s in startable.State] == [
        "READY",
        "STARTING",
        "STARTED",
        "STOPPING",
        "STOPPED",
    ]
    assert issubclass(startable.StateError, startable.StartableError)
    for error in (
        startable.StateError,
        startable.DefinitionError,
        startable.NoOwnerError,
        startable.AbortedError,
        startable.StoppedError,
    ):
        assert issubclass(error, startable.StartableError)
        assert error.__doc__


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            prefix = "." * node.level + (node.module or "")
            names.append(prefix)
            names.extend(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def test_core_modules_never_import_upper_layers() -> None:
    assert CORE_MODULES
    for path in CORE_MODULES:
        for name in _imports(path):
            parts = name.replace("startable.", ".").lstrip(".").split(".")
            assert parts[0] not in UPPER_LAYERS, (path.name, name)


@pytest.mark.processes
def test_importing_the_core_alone_loads_nothing_above_it() -> None:
    code = (
        "import sys, startable\n"
        "mods = sorted(m for m in sys.modules if m.startswith('startable'))\n"
        "heavy = sorted(m for m in ('rich', 'hypothesis', 'redis', 'coredis', 'psutil') "
        "if m in sys.modules)\n"
        "print(mods); print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    modules_line, heavy_line = result.stdout.splitlines()
    modules = eval(modules_line)
    assert all(m == "startable" or m.startswith("startable._") for m in modules), modules
    assert eval(heavy_line) == []


def test_cli_exports() -> None:
    assert startable.cli.__all__ == ("load_target", "main")


@pytest.mark.processes
def test_benchmarks_run() -> None:
    """Each bench/ script runs end to end (figures from --quick mean nothing)."""
    root = Path(__file__).resolve().parent.parent
    for script in sorted((root / "bench").glob("[!_]*.py")):  # _report.py is shared code
        result = subprocess.run(
            [sys.executable, str(script), "--quick"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, (script.name, result.stderr[-4000:])
        assert "best of" in result.stdout


@pytest.mark.processes
def test_the_pytest_plugin_imports_no_part_of_startable() -> None:
    """pytest loads it in every project where startable is installed."""
    code = (
        "import sys, startable_pytest_plugin; "
        "print(sorted(m for m in sys.modules if 'startable' in m))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "['startable_pytest_plugin']"


# Faults the race checker injects stand for *user* errors (a raising raw start,
# a stop reason a user passes), so they must not look like startable's own;
# `Hung` never leaves the checker (it becomes a DEADLINE violation).
USER_ERROR_STAND_INS = {"InjectedFault", "HookFault", "Reason", "Hung"}


def test_every_error_startable_raises_derives_from_startable_error() -> None:
    import pkgutil

    strays = []
    for info in pkgutil.walk_packages(startable.__path__, "startable."):
        # __main__ modules and the entry points of child processes run when imported.
        if info.name.endswith("__main__") or info.name in (
            "startable.cluster._child",
            "startable.cluster._zygote",
        ):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
                and not issubclass(value, startable.StartableError)
                and name not in USER_ERROR_STAND_INS
            ):
                strays.append(f"{info.name}.{name}")
    assert strays == []


# The one private module the upper layers may import: `_util` publishes names
# under their public module (as trio's subpackages share trio._util). It is a
# leaf, not lifecycle machinery: `test_the_shared_helpers_are_a_leaf` keeps it so.
STILL_PRIVATE = {"_util"}


def _absolute_imports(path: Path) -> list[str]:
    """Every module (or module.name) *path* imports, relative imports resolved."""
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.extend(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_upper_layers_use_the_core_only_through_its_public_face() -> None:
    core = {path.stem for path in CORE_MODULES if path.stem.startswith("_")} - {"__init__"}
    found: dict[str, set[str]] = {}
    for layer in UPPER_LAYERS:
        for path in sorted((ROOT / "startable" / layer).rglob("*.py")):
            for name in _absolute_imports(path):
                parts = name.split(".")
                if len(parts) > 1 and parts[0] == "startable" and parts[1] in core:
                    found.setdefault(parts[1], set()).add(path.name)
    assert set(found) <= STILL_PRIVATE, {m: found[m] for m in set(found) - STILL_PRIVATE}
    assert found, "the scan found nothing: it is broken"


def test_the_shared_helpers_are_a_leaf() -> None:
    for name in _absolute_imports(ROOT / "startable" / "_util.py"):
        assert not name.startswith("startable"), name
