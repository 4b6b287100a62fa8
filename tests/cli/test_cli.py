"""``startable run`` in a real child process, driven by real signals."""

from __future__ import annotations

import math
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.text import TextReceiveStream

import startable

from .. import cli_targets

ROOT = Path(__file__).resolve().parents[2]
TARGETS = "tests/cli_targets.py"

#: Every test here spawns child processes (`-m "not processes"` skips them).
pytestmark = [pytest.mark.anyio, pytest.mark.processes]


class Cli:
    """A running ``startable run`` process and the stderr it printed so far."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        assert process.stderr is not None
        self._lines = TextReceiveStream(process.stderr)
        self.output = ""

    async def wait_for(self, marker: str) -> None:
        while marker not in self.output:
            self.output += await self._lines.receive()

    async def finish(self) -> int:
        async for chunk in self._lines:
            self.output += chunk
        return await self.process.wait()


async def run_cli(*args: str) -> Cli:
    process = await anyio.open_process(
        [sys.executable, "-m", "startable", "run", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    return Cli(process)


async def cli_exit(cli: Cli) -> int:
    try:
        return await cli.finish()
    finally:
        if cli.process.returncode is None:
            cli.process.kill()
            await cli.process.wait()


async def exit_after(cli: Cli, *steps: tuple[str, int]) -> int:
    """Send each signal once its marker is printed; then the exit code."""
    try:
        for marker, signum in steps:
            await cli.wait_for(marker)
            cli.process.send_signal(signum)
    finally:
        code = await cli_exit(cli)
    return code


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_quick_start_service_stops_cleanly_on_signal(signum: int) -> None:
    with anyio.fail_after(30):
        cli = await run_cli("examples/hello.py:Heartbeat")
        code = await exit_after(cli, ("STARTED", signum))
    assert code == 0, cli.output
    for state in ("STARTING", "STARTED", "STOPPING", "STOPPED"):
        assert state in cli.output
    assert signal.Signals(signum).name in cli.output


async def test_second_sigint_forces_a_hanging_stop() -> None:
    with anyio.fail_after(30):
        cli = await run_cli(f"{TARGETS}:HangingStop")
        code = await exit_after(
            cli, ("STARTED", signal.SIGINT), ("press Ctrl-C again", signal.SIGINT)
        )
    assert code == 130, cli.output
    assert "forcing" in cli.output
    assert "STOPPED" in cli.output


async def test_stop_timeout_forces_and_fails() -> None:
    with anyio.fail_after(30):
        cli = await run_cli(f"{TARGETS}:HangingStop", "--stop-timeout", "0.2")
        code = await exit_after(cli, ("STARTED", signal.SIGTERM))
    assert code == 1, cli.output
    assert "took more than 0.2s" in cli.output


async def test_start_timeout_abandons_the_start() -> None:
    with anyio.fail_after(30):
        code = await cli_exit(await run_cli(f"{TARGETS}:HangingStart", "--start-timeout", "0.2"))
    assert code == 1


async def test_a_signal_during_the_start_abandons_it_and_stops_cleanly() -> None:
    with anyio.fail_after(30):
        cli = await run_cli(f"{TARGETS}:HangingStart")
        code = await exit_after(cli, ("STARTING", signal.SIGINT))
    assert code == 0, cli.output
    assert "SIGINT received: stopping HangingStart" in cli.output
    assert "STOPPED" in cli.output


async def test_failing_start_exits_1_with_the_error() -> None:
    with anyio.fail_after(30):
        cli = await run_cli(f"{TARGETS}:FailingStart")
        code = await cli_exit(cli)
    assert code == 1
    assert "port 80 is taken" in cli.output


async def test_crash_after_start_exits_1_with_the_reason() -> None:
    with anyio.fail_after(30):
        cli = await run_cli(f"{TARGETS}:Crashes", "--backend", "asyncio")
        code = await cli_exit(cli)
    assert code == 1
    assert "lost the upstream connection" in cli.output


async def test_a_signal_during_the_stop_after_a_crash_does_not_undo_it() -> None:
    with anyio.fail_after(30):
        cli = await run_cli(f"{TARGETS}:CrashesAndStopsSlowly")
        code = await exit_after(cli, ("cleaning up", signal.SIGTERM))
    assert code == 1, cli.output
    assert "stopped on its own" in cli.output
    assert "lost the upstream connection" in cli.output


async def test_job_that_finishes_on_its_own_exits_0() -> None:
    with anyio.fail_after(30):
        cli = await run_cli(f"{TARGETS}:FinishesOnItsOwn")
        code = await cli_exit(cli)
    assert code == 0, cli.output


async def test_factory_and_module_syntax() -> None:
    with anyio.fail_after(30):
        cli = await run_cli("tests.cli_targets:make_quick")
        code = await exit_after(cli, ("STARTED", signal.SIGINT))
    assert code == 0, cli.output


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon", "expected MODULE:ATTR"),
        ("tests.cli_targets:Missing", "has no attribute 'Missing'"),
        ("no_such_module_xyz:App", "cannot import 'no_such_module_xyz'"),
        ("missing/file.py:App", "no such file"),
        (f"{TARGETS}:not_startable", "neither an object with a lifecycle nor a factory"),
        (f"{TARGETS}:Cli", "has no attribute"),
    ],
)
async def test_bad_targets_exit_2_with_a_clear_message(target: str, message: str) -> None:
    with anyio.fail_after(30):
        cli = await run_cli(target)
        code = await cli_exit(cli)
    assert code == 2
    assert message in cli.output


async def startable_command(*args: str) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(30):
        return await anyio.run_process(
            [sys.executable, "-m", "startable", *args], cwd=ROOT, check=False
        )


# The command runs its own event loop; the test's backend only waits for it.
trio_only = pytest.mark.parametrize("anyio_backend", ["trio"])


@trio_only
@pytest.mark.parametrize("option", ["--start-timeout", "--stop-timeout"])
@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf", "-inf", "1e400", "soon"])
async def test_a_timeout_that_is_not_a_positive_finite_number_is_a_usage_error(
    option: str, value: str
) -> None:
    done = await startable_command("run", f"{TARGETS}:Quick", f"{option}={value}")
    assert done.returncode == 2, done
    message = done.stderr.decode().splitlines()[-1]
    assert message.startswith(f"startable run: error: argument {option}: "), message
    assert repr(value) in message
    assert "Traceback" not in done.stderr.decode()


@trio_only
async def test_version() -> None:
    done = await startable_command("--version")
    assert done.returncode == 0
    assert done.stdout.decode().startswith(f"startable {startable.__version__} (Python 3.")


# -- what the log says -------------------------------------------------------------------


async def test_every_move_is_logged_the_children_at_debug() -> None:
    with anyio.fail_after(30):
        cli = await run_cli(f"{TARGETS}:Parent", "--log-level", "debug")
        code = await exit_after(cli, ("Parent: STARTING → STARTED", signal.SIGINT))
    assert code == 0, cli.output
    moves = [
        line.split(" startable: ")[0].split()[-1] + " " + line.split(" startable: ")[1]
        for line in cli.output.splitlines()
        if " startable: " in line and "→" in line
    ]
    assert moves == [
        "INFO Parent: READY → STARTING",
        "DEBUG Named 'first': READY → STARTING",
        "DEBUG Named 'first': STARTING → STARTED",
        "DEBUG Named 'second': READY → STARTING",
        "DEBUG Named 'second': STARTING → STARTED",
        "INFO Parent: STARTING → STARTED",
        "INFO Parent: STARTED → STOPPING",
        "DEBUG Named 'second': STARTED → STOPPING",
        "DEBUG Named 'second': STOPPING → STOPPED",
        "DEBUG Named 'first': STARTED → STOPPING",
        "DEBUG Named 'first': STOPPING → STOPPED",
        "INFO Parent: STOPPING → STOPPED",
    ]


async def test_at_info_only_the_root_moves_are_logged() -> None:
    with anyio.fail_after(30):
        cli = await run_cli(f"{TARGETS}:Parent")
        code = await exit_after(cli, ("Parent: STARTING → STARTED", signal.SIGINT))
    assert code == 0, cli.output
    assert "Parent: STOPPING → STOPPED" in cli.output
    assert "Named" not in cli.output


async def test_an_abandoned_start_says_it_was_a_signal() -> None:
    with anyio.fail_after(30):
        cli = await run_cli(f"{TARGETS}:HangingStart")
        code = await exit_after(cli, ("STARTING", signal.SIGTERM))
    assert code == 0, cli.output
    assert "HangingStart: STARTING → STOPPING (start abandoned: SIGTERM received)" in cli.output
    assert "HangingStart: STOPPING → STOPPED (start abandoned: SIGTERM received)" in cli.output


async def test_an_abandoned_start_says_it_was_the_timeout() -> None:
    with anyio.fail_after(30):
        cli = await run_cli(f"{TARGETS}:HangingStart", "--start-timeout", "0.2")
        code = await cli_exit(cli)
    assert code == 1, cli.output
    expected = (
        "HangingStart: STARTING → STOPPING (start abandoned: the start timeout of 0.2s passed)"
    )
    assert expected in cli.output
    assert "Cancelled" not in cli.output


@trio_only
async def test_run_from_python_sets_up_the_same_logging() -> None:
    with anyio.fail_after(30):
        process = await anyio.open_process(
            [sys.executable, "-c", "from tests.cli_targets import run_from_python as r; r()"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        cli = Cli(process)
        code = await exit_after(cli, ("Parent: STARTING → STARTED", signal.SIGINT))
    assert code == 0, cli.output
    assert re.search(r"^\S+ \S+ INFO    startable: Parent: READY → STARTING$", cli.output, re.M)
    assert re.search(
        r"^\S+ \S+ DEBUG   startable: Named 'first': READY → STARTING$", cli.output, re.M
    )
    assert "SIGINT received: stopping Parent" in cli.output


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"start_timeout": -5}, "start_timeout must be a positive, finite number, not -5"),
        ({"stop_timeout": math.nan}, "stop_timeout must be a positive, finite number, not nan"),
        ({"stop_timeout": math.inf}, "stop_timeout must be a positive, finite number, not inf"),
        ({"log_level": "LOUD"}, "unknown log level 'LOUD'"),
    ],
)
def test_run_refuses_bad_options_before_starting(options: dict[str, Any], error: str) -> None:
    service = cli_targets.FinishesOnItsOwn()  # if it ran, it would end by itself
    with pytest.raises(ValueError, match=re.escape(error)):
        startable.run(service, **options)
    assert startable.of(service).state is startable.State.READY


# -- a target that is a file ---------------------------------------------------------

SHADOWING = """
import json
import logging

import startable


class Service:
    @startable.as_raw_start
    async def _start(self) -> None:
        logging.getLogger("target").info("dumped %s", json.dumps({"ok": True}))
"""


async def test_a_file_named_like_another_module_does_not_shadow_it(tmp_path: Path) -> None:
    (tmp_path / "odd:dir").mkdir()
    target = tmp_path / "odd:dir" / "json.py"  # a colon in the path, and the name of a module
    target.write_text(SHADOWING)
    with anyio.fail_after(30):
        cli = await run_cli(f"{target}:Service")
        code = await exit_after(cli, ("Service: STARTING → STARTED", signal.SIGINT))
    assert code == 0, cli.output
    assert 'dumped {"ok": true}' in cli.output
