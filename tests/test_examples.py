"""Every file in examples/ is run: as a script, and in-process on each backend."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import anyio
import pytest

#: Every test here spawns child processes (`-m "not processes"` skips them).
pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

EXPECTED = {
    "first_service.py": ["echoed: hello", "last words: server closing", "refused:"],
    "composition.py": ["database: connected", "cache: 128 slots ready", "database: disconnected"],
    "aggregation.py": [
        "pool started once",
        "orders: stopped because None",
        "users still holds it: STARTED",
        "users: stopped because ConnectionError",
    ],
    "spontaneous_stop.py": ["the dashboard stopped on its own"],
    "background_tasks.py": ["first ticket: 100", "background tasks alive: 0"],
    "race_testing.py": [
        "race found in BuggyCounter:",
        "raised TypeError",
        "increment()",
        "no race found in Counter after 1000 programs",
    ],
    "sandboxed.py": [
        "[notes] wrote today.txt",
        "write outside: refused",
        "change a mode outside: refused",
        "connect: refused",
        "look a name up: refused",
        "run a program: refused",
        "[notes] closing the notebook (reason: None)",
        "stopped: exit code 0, the note says 'buy milk'",
        "escape.txt exists: False",
    ],
    "socket_activation.py": [
        "socket given: False",
        "heard: hello from the greeter",
        "greeter: STOPPED",
    ],
    "embedded_redis.py": ["hello from an embedded server", "after the block: STOPPED, pid None"],
    "observe.py": [
        "cycle 1: READY -> STARTING",
        "STARTED -> STOPPING because TimeoutError('the upstream did not answer')",
        "stopped after cycle 1",
    ],
}
# Run by tests/cli/test_cli.py through `startable run`.
RUN_BY_CLI = {"hello.py"}
# Their main() is synchronous (it runs event loops of its own).
SYNC_MAIN = {"race_testing.py"}


def test_the_race_testing_how_to_shows_what_the_example_prints() -> None:
    """The docs quote the example's whole output: a change to the checker that
    changes it must change the docs too."""
    text = (ROOT / "docs" / "how-to" / "race-testing.md").read_text()
    start = text.index("```text\nrace found in BuggyCounter:") + len("```text\n")
    quoted = text[start : text.index("```", start)]
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "race_testing.py")],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    assert result.stdout == quoted


def test_every_example_is_covered() -> None:
    on_disk = {path.name for path in EXAMPLES.glob("*.py")}
    assert on_disk == set(EXPECTED) | RUN_BY_CLI


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_as_a_script(name: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=300,  # a bound against hangs, not a speed test: the machine may be loaded
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for expected in EXPECTED[name]:
        assert expected in result.stdout, result.stdout


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name[:-3]}", EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(set(EXPECTED) - SYNC_MAIN))
async def test_example_main_on_each_backend(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = load(name)
    with anyio.fail_after(60):  # a bound against hangs only
        await module.main()
    out = capsys.readouterr().out
    for expected in EXPECTED[name]:
        assert expected in out
