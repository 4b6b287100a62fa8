"""ServiceContainer with real child processes: every way a child can end, and more."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import psutil
import pytest

import startable
from startable import State
from startable.cluster import (
    ForcedStop,
    Permissions,
    ProcessOptions,
    RemoteError,
    RemoteExited,
    ServiceContainer,
    ServiceSpec,
    landlock_abi,
)

#: Every test here spawns child processes (`-m "not processes"` skips them).
pytestmark = [pytest.mark.anyio, pytest.mark.processes]

ROOT = Path(__file__).resolve().parents[2]


def container(
    entry: str, env: dict[str, str] | None = None, permissions: Permissions | None = None
) -> ServiceContainer:
    return ServiceContainer(
        f"tests.remote_services:{entry}",
        cwd=str(ROOT),
        env=env,
        permissions=permissions,
        options=ProcessOptions(
            close_timeout=2,
            term_timeout=2,
            resources_interval=0.1,
        ),
    )


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_a_clean_run_mirrors_state_keeps_output_and_stops_by_request() -> None:
    echo = container("Echo", env={"GREETING": "hello"})
    with anyio.fail_after(30):
        async with startable.running(echo):
            assert echo.remote_state is State.STARTED
            assert echo.pid is not None and not gone(echo.pid)
            assert echo.controller is not None
            assert await echo.controller.ping() >= 0
            pid = echo.pid
    assert startable.of(echo).state is State.STOPPED
    assert echo.returncode == 0
    assert gone(pid)
    assert [step.action for step in echo.controller.ladder] == ["close request"]
    texts = [(line.stream, line.text) for line in echo.output]
    assert ("stdout", "echo: started") in texts
    assert ("stderr", "echo: to stderr") in texts
    assert ("stdout", f"cwd={ROOT} greeting=hello") in texts
    assert ("stdout", "echo: stopping (None)") in texts


async def test_every_start_is_a_new_process() -> None:
    echo = container("Echo")
    pids = []
    with anyio.fail_after(60):
        async with startable.open_owner():
            for _ in range(2):
                await startable.of(echo).start()
                pids.append(echo.pid)
                await startable.of(echo).stop()
    assert len(set(pids)) == 2
    assert len(echo.incarnations) == 2
    assert all(gone(pid) for pid in pids if pid is not None)


async def test_an_entry_that_fails_to_import_fails_the_start_with_its_traceback() -> None:
    broken = ServiceContainer("tests.broken_import:Anything", cwd=str(ROOT))
    with anyio.fail_after(30):
        async with startable.open_owner():
            with pytest.raises(RemoteError) as caught:
                await startable.of(broken).start()
    error = caught.value
    assert error.info.type == "ImportError"
    assert "a module-level dependency is missing" in str(error)
    assert "broken_import.py" in error.info.traceback
    assert error.where == "loading the entry"
    assert startable.of(broken).state is State.STOPPED
    assert startable.of(broken).statistics().stop_reason is error


async def test_a_missing_module_is_a_clear_error() -> None:
    missing = ServiceContainer("no_such_package.anywhere:Service", cwd=str(ROOT))
    with anyio.fail_after(30):
        async with startable.open_owner():
            with pytest.raises(RemoteError, match="ModuleNotFoundError"):
                await startable.of(missing).start()


async def test_raw_start_failing_in_the_child() -> None:
    faulty = container("Faulty", env={"STARTABLE_TEST_FAIL": "start"})
    with anyio.fail_after(30):
        async with startable.open_owner():
            with pytest.raises(RemoteError) as caught:
                await startable.of(faulty).start()
    assert caught.value.info.type == "ConnectionRefusedError"
    assert "the database said no" in caught.value.info.traceback
    assert caught.value.where == "raw start"
    assert startable.of(faulty).state is State.STOPPED


async def test_a_crash_after_started_stops_the_container_with_the_reason() -> None:
    faulty = container("Faulty", env={"STARTABLE_TEST_FAIL": "running"})
    with anyio.fail_after(30):
        with pytest.raises(RemoteError) as caught:
            async with startable.running(faulty):
                await anyio.sleep_forever()
    assert caught.value.info.type == "OSError"
    assert "the disk filled up" in str(caught.value)
    assert startable.of(faulty).state is State.STOPPED
    assert startable.of(faulty).statistics().stop_reason is caught.value
    assert faulty.returncode == 1


async def test_raw_stop_failing_in_the_child_fails_the_stop() -> None:
    faulty = container("Faulty", env={"STARTABLE_TEST_FAIL": "stop"})
    with anyio.fail_after(30):
        async with startable.open_owner():
            await startable.of(faulty).start()
            with pytest.raises(RemoteError, match="could not flush the journal") as caught:
                await startable.of(faulty).stop()
    assert caught.value.where == "raw stop"
    assert startable.of(faulty).state is State.STOPPED


async def test_os_exit_after_started() -> None:
    faulty = container("Faulty", env={"STARTABLE_TEST_FAIL": "exit"})
    with anyio.fail_after(30):
        with pytest.raises(RemoteExited) as caught:
            async with startable.running(faulty):
                await anyio.sleep_forever()
    assert caught.value.returncode == 3
    assert "exit code 3" in str(caught.value)
    assert startable.of(faulty).state is State.STOPPED


async def test_sigkill_from_outside() -> None:
    sleeper = container("Sleeper")
    with anyio.fail_after(30):
        with pytest.raises(RemoteExited) as caught:
            async with startable.running(sleeper):
                assert sleeper.pid is not None
                os.kill(sleeper.pid, signal.SIGKILL)
                await anyio.sleep_forever()
    assert caught.value.returncode == -signal.SIGKILL
    assert startable.of(sleeper).state is State.STOPPED


async def test_a_ping_is_bounded_and_ends_when_the_remote_dies() -> None:
    sleeper = container("Sleeper")
    with anyio.fail_after(30):
        async with startable.open_owner():
            await startable.of(sleeper).start()
            controller, pid = sleeper.controller, sleeper.pid
            assert controller is not None and pid is not None
            os.kill(pid, signal.SIGSTOP)  # alive, but it cannot answer
            with pytest.raises(TimeoutError), anyio.fail_after(0.2):
                await controller.ping()
            outcome: list[BaseException] = []

            async def ping() -> None:
                try:
                    await controller.ping()
                except RemoteExited as error:
                    outcome.append(error)

            async with anyio.create_task_group() as tg:
                tg.start_soon(ping)
                await anyio.wait_all_tasks_blocked()
                os.kill(pid, signal.SIGKILL)
            assert len(outcome) == 1 and "before answering a ping" in str(outcome[0])
            await startable.of(sleeper).wait_state(State.STOPPED)
    assert startable.of(sleeper).state is State.STOPPED


async def test_a_service_that_ignores_everything_is_killed_by_the_ladder() -> None:
    hang = container("Faulty", env={"STARTABLE_TEST_FAIL": "hang"})
    with anyio.fail_after(30):
        async with startable.open_owner():
            await startable.of(hang).start()
            with pytest.raises(ForcedStop) as forced:  # not a clean stop: it says so
                await startable.of(hang).stop()
    assert hang.controller is not None
    assert [s.action for s in hang.controller.ladder] == ["close request", "SIGTERM", "SIGKILL"]
    assert hang.controller.ended_by == "SIGKILL"
    assert forced.value.signal == "SIGKILL"
    assert str(forced.value).endswith(
        ":Faulty did not end within 2s of SIGTERM: SIGKILL (its service was STOPPING then)"
    )
    assert forced.value.state == "STOPPING"  # the close request was heard: its raw stop hung
    assert hang.returncode == -signal.SIGKILL
    assert startable.of(hang).state is State.STOPPED
    assert startable.of(hang).statistics().last_error is forced.value


async def test_resources_are_sampled() -> None:
    tight = container("Tight")
    with anyio.fail_after(30):
        async with startable.running(tight):
            while len(tight.resources) < 3:  # noqa: ASYNC110 - samples of another process
                await anyio.sleep(0.05)
    sample = tight.resources[-1]
    assert sample.rss > 20 * 1024 * 1024
    assert sample.threads >= 1
    assert sample.open_files > 0
    assert max(s.cpu_percent for s in tight.resources) > 0


async def test_code_string_entry() -> None:
    code = (
        "import startable\n"
        "class Inline:\n"
        "    @startable.as_raw_start\n"
        "    async def _start(self):\n"
        "        print('inline code ran', flush=True)\n"
    )
    inline = ServiceContainer("Inline", code=code)
    with anyio.fail_after(30):
        async with startable.running(inline):
            pass
    assert ("stdout", "inline code ran") in [(o.stream, o.text) for o in inline.output]


def test_bad_entries_and_permissions_are_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match=r"package\.module:attribute"):
        ServiceContainer("no colon")
    with pytest.raises(ValueError, match="needs an entry"):
        ServiceContainer("")
    with pytest.raises(ValueError, match="not an absolute path"):
        Permissions(read=["relative/path"])
    with pytest.raises(ValueError, match="must be positive"):
        Permissions(memory=0)
    with pytest.raises(TypeError, match="must be a Permissions"):
        ServiceContainer("a.b:c", permissions={"network": True})  # type: ignore[arg-type]


needs_landlock = pytest.mark.skipif(landlock_abi() < 4, reason="needs Landlock ABI 4 (Linux 6.7)")


@needs_landlock
async def test_permissions_deny_files_network_and_processes(tmp_path: Path) -> None:
    probe = container(
        "Prober",
        env={
            "STARTABLE_TEST_PROBE": "read-etc,write-scratch,write-elsewhere,tcp,udp,subprocess",
            "STARTABLE_TEST_SCRATCH": str(tmp_path),
        },
        permissions=Permissions(write=[str(tmp_path)]),
    )
    with anyio.fail_after(30):
        async with startable.running(probe):
            assert probe.controller is not None
            mechanisms = " | ".join(probe.controller.mechanisms)
    lines = {line.text.split(":")[0] for line in probe.output if line.stream == "stdout"}
    assert "DENIED read-etc" in lines
    assert "ALLOWED write-scratch" in lines
    assert (tmp_path / "ok.txt").read_text() == "x"
    assert "DENIED write-elsewhere" in lines
    assert "DENIED tcp" in lines
    assert "DENIED udp" in lines
    assert "DENIED subprocess" in lines
    assert "landlock abi" in mechanisms and "tcp" in mechanisms
    assert "audit hook" in mechanisms


@needs_landlock
async def test_granted_permissions_allow(tmp_path: Path) -> None:
    probe = container(
        "Prober",
        env={"STARTABLE_TEST_PROBE": "read-etc,tcp,subprocess"},
        permissions=Permissions(read=["/etc"], network=True, subprocesses=True),
    )
    with anyio.fail_after(30):
        async with startable.running(probe):
            pass
    lines = {line.text.split(" (")[0] for line in probe.output if line.stream == "stdout"}
    assert {"ALLOWED read-etc", "ALLOWED tcp", "ALLOWED subprocess"} <= lines


async def test_resource_limits_are_applied() -> None:
    code = (
        "import resource, startable\n"
        "class Limits:\n"
        "    @startable.as_raw_start\n"
        "    async def _start(self):\n"
        "        print('nofile', resource.getrlimit(resource.RLIMIT_NOFILE)[0], flush=True)\n"
        "        print('cpu', resource.getrlimit(resource.RLIMIT_CPU)[0], flush=True)\n"
    )
    limited = ServiceContainer(
        "Limits",
        code=code,
        permissions=Permissions(open_files=64, cpu_time=30, network=True, subprocesses=True),
    )
    with anyio.fail_after(30):
        async with startable.running(limited):
            pass
    texts = [o.text for o in limited.output]
    assert "nofile 64" in texts
    assert "cpu 30" in texts


CONTROLLER = """
import anyio, startable, sys
from startable.cluster import ServiceContainer

async def main():
    c = ServiceContainer("tests.remote_services:Sleeper", cwd=sys.argv[1])
    async with startable.running(c):
        print(c.pid, flush=True)
        await anyio.sleep_forever()

anyio.run(main, backend="trio")
"""


async def test_killing_the_controller_process_takes_the_child_with_it() -> None:
    with anyio.fail_after(30):
        controller = await anyio.open_process(
            [sys.executable, "-c", CONTROLLER, str(ROOT)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        try:
            assert controller.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                line += await controller.stdout.receive(1)
            remote = int(line)
            assert not gone(remote)
            controller.kill()  # SIGKILL: the controller runs no cleanup at all
            await controller.wait()
        finally:
            if controller.returncode is None:
                controller.kill()
                await controller.wait()
    with anyio.fail_after(2):  # the bound the issue sets
        try:
            pidfd = os.pidfd_open(remote)  # readable once that process has exited
        except ProcessLookupError:
            return
        try:
            await anyio.wait_readable(pidfd)
        finally:
            os.close(pidfd)


def test_the_audit_hook_sees_writes_through_os_open_and_bytes_paths(tmp_path: Path) -> None:
    """Where Landlock is missing, the audit hook checks file opens by itself."""
    program = f"""
import os, sys
from startable.cluster._ipc.messages import PermissionSpec
from startable.cluster._sandbox.audit import audit_hook
sys.addaudithook(audit_hook(PermissionSpec(), True, (sys.prefix,)))
for path, flags in [
    ({str(tmp_path / "a")!r}, os.O_WRONLY | os.O_CREAT),
    ({str(tmp_path / "b")!r}.encode(), os.O_WRONLY | os.O_CREAT),
    ({str(tmp_path / "c")!r}.encode(), os.O_RDONLY),
]:
    try:
        os.close(os.open(path, flags))
        print("opened", path)
    except PermissionError as exc:
        print("refused", exc)
"""
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result
    refused = "refused [Errno 13] this service may not open"
    assert all(line.startswith(refused) for line in lines), lines
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("field", "value", "error", "says"),
    [
        ("ready_timeout", math.nan, ValueError, "ProcessOptions.ready_timeout must be a finite"),
        ("close_timeout", math.inf, ValueError, "ProcessOptions.close_timeout must be a finite"),
        ("term_timeout", -1, ValueError, "ProcessOptions.term_timeout must be positive"),
        ("term_timeout", 0, ValueError, "ProcessOptions.term_timeout must be positive"),
        ("resources_interval", -0.5, ValueError, "resources_interval must be at least 0"),
        ("output_lines", 0, ValueError, "ProcessOptions.output_lines must be at least 1"),
        ("output_lines", 2.5, TypeError, "ProcessOptions.output_lines must be an integer"),
        ("resources_history", True, TypeError, "must be an integer, not True"),
        ("ready_timeout", "60", TypeError, "ProcessOptions.ready_timeout must be a number"),
        ("python", 3, TypeError, "python"),
    ],
)
def test_process_options_refuse_bad_values_naming_the_field(
    field: str, value: object, error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=re.escape(says)):
        ProcessOptions(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(error, match=re.escape(says)):  # before any container exists
        ServiceContainer("a.b:C", options={field: value})


def test_options_given_by_name_are_checked_as_the_spec_is_made() -> None:
    spec = ServiceSpec(name="kv", entry="a.b:C", container_options={"ready_timeout": 5})
    assert spec.container_options == ProcessOptions(ready_timeout=5)
    with pytest.raises(ValueError, match=r"unknown process option 'ready_timout' \(known: "):
        ServiceSpec(name="kv", entry="a.b:C", container_options={"ready_timout": 5})
    with pytest.raises(TypeError, match="a ProcessOptions or a mapping"):
        ServiceContainer("a.b:C", options=[("ready_timeout", 5)])  # type: ignore[arg-type]
