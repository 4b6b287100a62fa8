"""`command` services under a real `startable up`: the example cluster of programs,
seen through status, logs and log files; and the programs die with `up`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import anyio
import pytest

from ..specs import free_port
from ..waiting import poll
from .test_control import startable, status
from .test_up import ROOT, gone, trio_only, up

pytestmark = [pytest.mark.anyio, pytest.mark.processes]
EXAMPLE = ROOT / "examples" / "commands"


def example(tmp_path: Path) -> Path:
    """The example, copied, on a port of its own, running this test's Python."""
    port = free_port()
    for name in ("commands.toml", "worker.py"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    path = tmp_path / "commands.toml"
    text = path.read_text().replace("8765", str(port))
    path.write_text(text.replace('"python', f'"{sys.executable}'))
    return path


def test_the_example_names_python_so_that_it_runs_from_the_virtual_environment() -> None:
    # (The copy above runs this test's interpreter instead, wherever it is.)
    assert '"python -m http.server' in (EXAMPLE / "commands.toml").read_text()


@trio_only
async def test_the_example_runs_and_is_seen_through_status_logs_and_log_files(
    tmp_path: Path,
) -> None:
    path = example(tmp_path)
    control = tmp_path / "control.sock"
    with anyio.fail_after(120):
        code, out, err = await startable("check", str(path))
        assert code == 0, err
        assert "ready when READY=1 on $NOTIFY_SOCKET" in out
        assert "health 127.0.0.1:" in out
        async with up(path, "--control", str(control)) as cli:
            await cli.wait_for("STARTED (Ctrl-C to stop)")
            rows = await status(control)
            assert {name: row["state"] for name, row in rows.items()} == {
                "web": "STARTED",
                "worker": "STARTED",
                "ticker": "STARTED",
            }
            assert rows["web"]["health"] in ("starting", "healthy")
            pids = {name: int(str(row["pid"])) for name, row in rows.items()}
            # Its output, captured: in the buffer, and in the log file.
            code, out, err = await startable("logs", "--control", str(control), "worker")
            assert code == 0, err
            assert "worker | fetched http://127.0.0.1:" in out
            log = tmp_path / "logs" / "worker.log"
            assert "stdout fetched http://127.0.0.1:" in log.read_text()
            assert (os.stat(log).st_mode & 0o777) == 0o600
            # A restart of web takes worker (its dependent) down and back, by its stop signal.
            code, _, err = await startable("restart", "--control", str(control), "web")
            assert code == 0, err
            after = await status(control)
            assert after["web"]["pid"] != pids["web"] and after["worker"]["pid"] != pids["worker"]
            assert after["ticker"]["pid"] == pids["ticker"]
            assert not any(row["last_error"] for row in after.values())
            # up is killed outright: its programs die with it (none outlives its owner).
            cli.process.send_signal(signal.SIGKILL)
            await cli.process.wait()
            now = [int(str(row["pid"])) for row in after.values()]
            with anyio.fail_after(20):
                await poll(lambda: all(gone(pid) for pid in now))


@trio_only
async def test_status_json_shows_a_command_that_fails_its_health_check(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "sick.toml"
    path.write_text(
        '[cluster]\nname = "sick"\n'
        "[services.lonely]\n"
        f"command = \"{sys.executable} -c 'import time; print(1, flush=True); time.sleep(60)'\"\n"
        f"health = {{ port = {port}, interval = 0.2, retries = 2 }}\n"
        'restart = { mode = "never" }\n'
    )
    control = tmp_path / "control.sock"
    with anyio.fail_after(120):
        async with up(path, "--control", str(control)) as cli:
            await cli.wait_for("STARTED (Ctrl-C to stop)")

            async def stopped() -> dict[str, object]:
                while True:
                    code, out, err = await startable("status", "--control", str(control), "--json")
                    assert code == 0, err
                    row = json.loads(out)["services"][0]
                    if row["state"] == "STOPPED":
                        return dict(row)
                    await anyio.sleep(0.1)  # a poll of another process, bounded above

            row = await stopped()
            assert row["ended"] == "failed"
            assert "HealthCheckFailed: lonely: its health check failed 2 times in a row" in str(
                row["last_error"]
            )
            code, out, _ = await startable("status", "--control", str(control))
            assert code == 0 and "HealthCheckFailed" in out
