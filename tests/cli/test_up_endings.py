"""How `startable up` ends, in a real child process: a Ctrl-C during a slow start, a stop
that needed SIGKILL, a service that dies for good."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest

from .test_up import cluster_file, service, trio_only, up

#: Every test here spawns child processes (`-m "not processes"` skips them).
pytestmark = [pytest.mark.anyio, pytest.mark.processes]


@trio_only
async def test_ctrl_c_during_a_slow_start_abandons_it_in_the_child_at_once(tmp_path: Path) -> None:
    # The close rung is far longer than the bound below: the child must abandon its start
    # when asked, not be waited for and then signalled.
    slow = service("slow", "SlowStart", extra="timeouts = { close = 600, ready = 600 }")
    path = cluster_file(tmp_path, slow)
    with anyio.fail_after(30):
        async with up(path) as cli:
            await cli.wait_for("slow | starting, slowly")
            cli.process.send_signal(signal.SIGINT)
            code = await cli.finish()
    assert code == 0, (cli.out, cli.err)
    lines = cli.out.splitlines()
    said = next(line for line in lines if line.startswith("slow | raw stop: "))
    assert said.startswith("slow | raw stop: AbortedError: the start of")
    assert said.endswith("was abandoned: the controller asked it to stop")
    assert "slow: STOPPED (ended by SIGTERM)" not in lines


@trio_only
async def test_a_stop_that_needed_sigkill_is_shown_and_exits_1(tmp_path: Path) -> None:
    stubborn = service("stubborn", "IgnoresTerm", extra="timeouts = { close = 0.5, term = 0.5 }")
    path = cluster_file(tmp_path, stubborn)
    with anyio.fail_after(60):
        async with up(path) as cli:
            await cli.wait_for("stubborn: STARTED")
            cli.process.send_signal(signal.SIGINT)
            code = await cli.finish()
    assert code == 1, (cli.out, cli.err)
    assert "stubborn: STOPPED (ended by SIGKILL)" in cli.out.splitlines()
    assert cli.err.splitlines() == [
        "stopping demo failed:",
        "  while stopping service 'stubborn':",
        "  ForcedStop: stubborn did not end within 0.5s of SIGTERM: SIGKILL"
        " (its service was STOPPING then)",
    ]


@trio_only
async def test_a_service_that_dies_for_good_makes_the_exit_code_say_so(tmp_path: Path) -> None:
    never = 'restart = { mode = "never" }'
    path = cluster_file(tmp_path, service("db", "Talker"), service("job", "Crashes", extra=never))
    with anyio.fail_after(60):
        async with up(path) as cli:
            await cli.wait_for("job: STOPPED")
            cli.process.send_signal(signal.SIGINT)
            code = await cli.finish()
    assert code == 1, (cli.out, cli.err)
    assert "a service had failed: ServiceExited: job failed (RemoteExited(" in cli.err


@trio_only
async def test_on_service_exit_stop_ends_everything(tmp_path: Path) -> None:
    never = 'restart = { mode = "never" }'
    path = cluster_file(
        tmp_path,
        service("db", "Talker"),
        service("job", "Crashes", extra=never),
        cluster='on_service_exit = "stop"',
    )
    with anyio.fail_after(60):
        async with up(path) as cli:
            code = await cli.finish()  # no signal: it ends by itself
    assert code == 1, (cli.out, cli.err)
    assert "demo stopped on its own: ServiceExited: job failed" in cli.err
    assert "db  | goodbye" in cli.out.splitlines()
