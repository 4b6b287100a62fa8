"""The control socket of a real `startable up`, and the commands that use it:
status, logs, start, stop, restart, down; hostile input on the socket."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.abc
import pytest

from startable.cli._control import Command, Done, Status, connect, default_path

from .test_up import ROOT, cluster_file, service, trio_only, up

pytestmark = [pytest.mark.anyio, pytest.mark.processes]


async def startable(*arguments: str) -> tuple[int, str, str]:
    """Run the `startable` command; its exit code, stdout and stderr."""
    result = await anyio.run_process(
        [sys.executable, "-m", "startable", *arguments], cwd=ROOT, check=False
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def background(*arguments: str) -> anyio.abc.Process:
    """The `startable` command, running on (its stdout piped)."""
    return await anyio.open_process([sys.executable, "-m", "startable", *arguments], cwd=ROOT)


async def read_until(process: anyio.abc.Process, done: Callable[[str], bool]) -> str:
    """What `process` writes on stdout, until `done` says it is enough."""
    assert process.stdout is not None
    seen = ""
    while not done(seen):
        seen += (await process.stdout.receive()).decode()
    return seen


async def status(control: Path) -> dict[str, dict[str, object]]:
    code, out, err = await startable("status", "--control", str(control), "--json")
    assert code == 0, err
    return {row["name"]: row for row in json.loads(out)["services"] if row["replica"] < 0}


async def as_nobody_connect(path: Path) -> str:
    code = (
        "import os, socket\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n"
        f"    socket.socket(socket.AF_UNIX).connect({str(path)!r}); print('connected')\n"
        "except PermissionError:\n"
        "    print('refused')\n"
    )
    result = await anyio.run_process([sys.executable, "-c", code], check=False)
    return result.stdout.decode().strip()


def shop(tmp_path: Path) -> Path:
    return cluster_file(
        tmp_path,
        service("db", "Talker"),
        service("web", "Talker", "db"),
        service("lone", "Talker"),
    )


@trio_only
async def test_status_logs_and_restart_of_a_running_cluster(tmp_path: Path) -> None:
    control = tmp_path / "control.sock"
    with anyio.fail_after(120):
        async with up(shop(tmp_path), "--control", str(control)) as cli:
            await cli.wait_for("STARTED (Ctrl-C to stop)")
            mode = stat.S_IMODE(os.stat(control).st_mode)
            assert mode == 0o600, oct(mode)
            rows = await status(control)
            assert list(rows) == ["db", "web", "lone"]  # the file's order (lone starts before web)
            assert [rows[name]["state"] for name in ("db", "web", "lone")] == ["STARTED"] * 3
            before = {name: rows[name]["pid"] for name in rows}
            # The table, for people.
            code, out, _ = await startable("status", "--control", str(control))
            assert code == 0 and "demo: STARTED" in out and "web" in out
            # Recent output, with the prefixes of `up` (stdout and stderr are two pipes:
            # which line was read first is not known).
            code, out, _ = await startable("logs", "--control", str(control), "db", "-n", "5")
            assert code == 0
            assert sorted(out.splitlines()) == ["db | a line on stderr", "db | hello from db"]
            # A restart of db takes web (its dependent) down and back; lone is left alone.
            code, out, err = await startable("restart", "--control", str(control), "db")
            assert code == 0, err
            assert out == "restart: done (db)\n"
            after = await status(control)
            assert after["db"]["pid"] != before["db"] and after["web"]["pid"] != before["web"]
            assert after["lone"]["pid"] == before["lone"]
            assert all(row["state"] == "STARTED" for row in after.values())
            # Stopped, a service says how it ended; started, it is back.
            code, _, err = await startable("stop", "--control", str(control), "web")
            assert code == 0, err
            assert (await status(control))["web"]["ended"] == "clean"
            code, _, err = await startable("start", "--control", str(control), "web")
            assert code == 0, err
            assert (await status(control))["web"]["state"] == "STARTED"
            # Stopped by the cascade of a stop asked for, a dependent did not fail either.
            code, _, err = await startable("stop", "--control", str(control), "db")
            assert code == 0, err
            rows = await status(control)
            assert [rows[name]["ended"] for name in ("db", "web")] == ["clean", "clean"]
            code, _, err = await startable("start", "--control", str(control), "db")
            assert code == 0, err
            rows = await status(control)
            assert [rows[name]["state"] for name in ("db", "web")] == ["STARTED", "STARTED"]
            # A service that is not there is refused, naming it; the cluster runs on.
            code, _, err = await startable("stop", "--control", str(control), "nope")
            assert code == 1 and "there is no service named 'nope' in demo" in err
            # down: the same stop as Ctrl-C, and the socket goes with the cluster.
            code, out, err = await startable("down", "--control", str(control))
            assert (code, out) == (0, "stopped\n"), err
            assert await cli.finish() == 0
            assert not control.exists()
    assert cli.out.index("web: STOPPED") < cli.out.index("db: STOPPED")


@trio_only
async def test_the_cluster_file_finds_its_socket_and_a_second_up_is_refused(
    tmp_path: Path,
) -> None:
    path = shop(tmp_path)
    control = Path(default_path("demo", str(path)))
    with anyio.fail_after(120):
        async with up(path) as cli:
            await cli.wait_for("STARTED (Ctrl-C to stop)")
            directory = stat.S_IMODE(os.stat(control.parent).st_mode)
            assert directory == 0o700, oct(directory)
            if os.geteuid() == 0:  # another user cannot reach it (root can be one)
                assert await as_nobody_connect(control) == "refused"
            code, out, _ = await startable("status", str(path), "--json")
            assert code == 0 and json.loads(out)["cluster"] == "demo"
            # Another `up` of the same file would take the socket: it is refused.
            second = await anyio.run_process(
                [sys.executable, "-m", "startable", "up", str(path), "--no-live"],
                cwd=ROOT,
                check=False,
            )
            assert second.returncode == 2
            assert b"startable: error: the control socket cannot be served" in second.stderr
            assert b"another startable up of this cluster file runs already" in second.stderr
            assert os.path.exists(control)  # noqa: ASYNC240 - (the refused one left it alone)
            code, _, _ = await startable("status", str(path))
            assert code == 0
            cli.process.send_signal(2)
            assert await cli.finish() == 0
    code, _, err = await startable("status", str(path))
    assert code == 2 and "no startable up of this cluster runs" in err


@trio_only
async def test_garbage_and_malformed_commands_are_refused_and_the_cluster_answers_on(
    tmp_path: Path,
) -> None:
    control = tmp_path / "control.sock"
    with anyio.fail_after(120):
        async with up(shop(tmp_path), "--control", str(control)) as cli:
            await cli.wait_for("STARTED (Ctrl-C to stop)")
            # Bytes that are no frame: that connection is closed, nothing else.
            async with await anyio.connect_unix(control) as raw:
                await raw.send(b"\x00\x01garbage" * 100)
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                    with anyio.fail_after(10):
                        while True:
                            await raw.receive()
            # Frames that are well made but no command, or ask what cannot be.
            async with connect(str(control)) as port:
                for bad, why in (
                    (Command(1, "format-disk"), "there is no command 'format-disk'"),
                    (Command(2, "stop", ("../etc",)), "is not a service name"),
                    (Command(3, "logs", (), -5), "lines is from 0"),
                    (Command(4, "stop"), "names the services"),
                    (Status(5, "x", "y", 1), "only commands"),
                ):
                    await port.send(bad)
                    answer = await port.receive()
                    assert isinstance(answer, Done) and why in answer.error, answer
                await port.send(Command(6, "status"))
                assert isinstance(await port.receive(), Status)
            # And what the command line asks still works.
            assert (await status(control))["db"]["state"] == "STARTED"
            assert "malformed" not in cli.err
            cli.process.send_signal(2)
            assert await cli.finish() == 0


@trio_only
async def test_pools_reload_and_scale_and_logs_follow(tmp_path: Path) -> None:
    control = tmp_path / "control.sock"
    path = cluster_file(
        tmp_path, service("db", "Talker"), service("web", "Talker", "db", extra="replicas = 2")
    )

    def replicas(rows: list[dict[str, object]]) -> dict[object, object]:
        return {row["replica"]: row["pid"] for row in rows if row["replica"] >= 0}  # type: ignore[operator]

    async def every_row() -> list[dict[str, object]]:
        code, out, err = await startable("status", "--control", str(control), "--json")
        assert code == 0, err
        rows: list[dict[str, object]] = json.loads(out)["services"]
        return rows

    with anyio.fail_after(120):
        async with up(path, "--control", str(control)) as cli:
            await cli.wait_for("STARTED (Ctrl-C to stop)")
            before = replicas(await every_row())
            assert sorted(before) == [0, 1]
            follower = await background("logs", "--control", str(control), "db", "-n", "0", "-f")
            try:
                code, out, err = await startable("reload", "--control", str(control))
                assert (code, out) == (0, "reload: done (every pool)\n"), err
                after = replicas(await every_row())
                assert sorted(after) == [0, 1] and not set(after.values()) & set(before.values())
                code, out, err = await startable("scale", "--control", str(control), "web", "3")
                assert (code, out) == (0, "scale: web has 3 replicas\n"), err
                assert sorted(replicas(await every_row())) == [0, 1, 2]
                code, _, err = await startable("scale", "--control", str(control), "db", "2")
                assert code == 1 and "'db' is not a pool (pools: web)" in err
                code, _, err = await startable("scale", "--control", str(control), "web", "0")
                assert code == 1 and "a pool has 1 to 256 replicas, not 0" in err
                # A restart of db prints again: the follower sees it as it comes.
                assert (await startable("restart", "--control", str(control), "db"))[0] == 0
                seen = await read_until(follower, lambda seen: "db | hello from db" in seen)
                assert "db | goodbye" in seen  # (its stop, before)
            finally:
                follower.kill()
                await follower.wait()
            cli.process.send_signal(2)
            assert await cli.finish() == 0


@trio_only
async def test_status_shows_a_service_that_crashes_and_is_restarted(tmp_path: Path) -> None:
    control = tmp_path / "control.sock"
    path = cluster_file(
        tmp_path,
        service("db", "Talker"),
        service(
            "flaky",
            "Crashes",
            extra="[services.flaky.restart]\nmode = 'always'\nbackoff = 0.2\nintensity = 100\n",
        ),
    )
    with anyio.fail_after(120):
        async with up(path, "--control", str(control)) as cli:
            await cli.wait_for("flaky: restarting")
            row: dict[str, object] = {}
            while not row or int(row["restarts"]) < 2:  # type: ignore[call-overload]
                row = (await status(control))["flaky"]
            assert "RemoteExited" in str(row["last_error"]) or "exit" in str(row["last_error"])
            code, out, _ = await startable("status", "--control", str(control))
            assert code == 0 and "last errors" in out and "flaky" in out
            cli.process.send_signal(2)
            await cli.finish()


@trio_only
async def test_up_of_some_services_runs_them_and_what_they_need(tmp_path: Path) -> None:
    control = tmp_path / "control.sock"
    path = shop(tmp_path)
    with anyio.fail_after(120):
        async with up(path, "web", "--control", str(control)) as cli:
            await cli.wait_for("STARTED (Ctrl-C to stop)")
            assert sorted(await status(control)) == ["db", "web"]  # not lone
            cli.process.send_signal(2)
            assert await cli.finish() == 0
    code, _, err = await startable("up", str(path), "nope", "--no-live")
    assert code == 2 and "there is no service named 'nope' (services: db, web, lone)" in err


@trio_only
async def test_status_watch_shows_it_again_until_the_cluster_stops(tmp_path: Path) -> None:
    control = tmp_path / "control.sock"
    with anyio.fail_after(120):
        async with up(shop(tmp_path), "--control", str(control)) as cli:
            await cli.wait_for("STARTED (Ctrl-C to stop)")
            watcher = await background(
                "status", "--control", str(control), "--watch", "--interval", "0.2", "--json"
            )
            seen = await read_until(watcher, lambda seen: seen.count("\n") >= 2)  # 2 documents
            documents = [json.loads(line) for line in seen.splitlines()[:2]]
            assert all(document["state"] == "STARTED" for document in documents)
            cli.process.send_signal(2)
            assert await cli.finish() == 0
            assert await watcher.wait() == 0  # it ends when the cluster has stopped


@trio_only
async def test_up_detach_returns_once_started_and_down_stops_it(tmp_path: Path) -> None:
    control = tmp_path / "control.sock"
    path = shop(tmp_path)
    with anyio.fail_after(120):
        code, out, err = await startable("up", str(path), "--detach", "--control", str(control))
        try:
            assert code == 0, err
            assert "demo: STARTED in the background" in out
            assert all(row["state"] == "STARTED" for row in (await status(control)).values())
            log = tmp_path / "control.log"
            assert "db: STARTED" in log.read_text()
        finally:
            code, out, err = await startable("down", "--control", str(control))
        assert (code, out) == (0, "stopped\n"), err


@trio_only
async def test_up_detach_whose_start_fails_exits_1_with_the_reason(tmp_path: Path) -> None:
    control = tmp_path / "control.sock"
    path = cluster_file(tmp_path, service("db", "FailsToStart"))
    with anyio.fail_after(120):
        code, _, err = await startable("up", str(path), "--detach", "--control", str(control))
    assert code == 1
    assert "the cluster did not start (exit code 1)" in err
    assert "the database said no" in err
    assert not control.exists()


@trio_only
async def test_a_stale_socket_is_no_cluster_and_logs_follow_ends_with_the_cluster(
    tmp_path: Path,
) -> None:
    control = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(control))  # bound, never listening: what a killed `up` leaves
    stale.close()
    code, _, err = await startable("status", "--control", str(control))
    assert code == 2 and "no startable up of this cluster runs" in err
    with anyio.fail_after(120):
        async with up(shop(tmp_path), "--control", str(control)) as cli:  # it takes the path
            await cli.wait_for("STARTED (Ctrl-C to stop)")
            code, _, err = await startable(
                "up", str(shop(tmp_path)), "--detach", "--control", str(control)
            )
            assert code == 2 and "another startable up of this file runs" in err
            follower = await background("logs", "--control", str(control), "-f")
            await read_until(follower, lambda seen: "hello from lone" in seen)
            cli.process.send_signal(2)
            assert await cli.finish() == 0
            assert await follower.wait() == 0  # the cluster stopped: nothing more to follow
