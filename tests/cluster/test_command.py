"""`command` services: programs that are not Python lifecycles, run by the manager.

Each test runs a real program (a small script this file writes) in a real
child process: its readiness rules, its stop ladder, its exit, its output,
its limits, and health checks (of commands and of other services).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

import startable
from startable import State, of
from startable.cluster import (
    ClusterError,
    CommandProcess,
    ForcedStop,
    HealthCheck,
    HealthCheckFailed,
    Permissions,
    ProcessOptions,
    Readiness,
    RemoteExited,
    RestartPolicy,
    ServiceDefinitionError,
    ServicesManager,
    ServiceSpec,
)

from ..cli_targets import Quick
from ..specs import free_port
from ..waiting import poll, until

#: The program the tests run: `key=value` arguments say how it behaves.
PROGRAM = textwrap.dedent(
    """\
    import os, resource, signal, socket, sys, time

    args = dict(arg.partition("=")[::2] for arg in sys.argv[1:])
    print("booting", flush=True)
    print("to stderr", file=sys.stderr, flush=True)

    def bye(signum, frame):
        print("got", signal.Signals(signum).name, flush=True)
        sys.exit(0)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN if "stubborn" in args else bye)
    if "nofile" in args:
        print("nofile", resource.getrlimit(resource.RLIMIT_NOFILE)[0], flush=True)
    if "delay" in args:
        time.sleep(float(args["delay"]))
    if "exit" in args:
        print("failing now", file=sys.stderr, flush=True)
        sys.exit(int(args["exit"]))
    if "port" in args:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", int(args["port"])))
        listener.listen()
    if "notify" in args:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        for datagram in args["notify"].split(","):
            notify.sendto(datagram.replace(";", "\\n").encode(), os.environ["NOTIFY_SOCKET"])
    print("ready now", flush=True)
    while True:
        time.sleep(1)
    """
)

pytestmark = [pytest.mark.anyio, pytest.mark.processes]


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "program.py"
    path.write_text(PROGRAM)
    return path


def command(program: Path, *args: str) -> list[str]:
    return [sys.executable, str(program), *args]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_each_readiness_rule_starts_the_program(program: Path) -> None:
    port = free_port()
    specs = [
        ServiceSpec(name="running", command=command(program)),
        ServiceSpec(
            name="port", command=command(program, "delay=0.3", f"port={port}"),
            ready=Readiness(port=port),
        ),
        ServiceSpec(
            name="line", command=command(program, "delay=0.3"), ready=Readiness(line="^ready")
        ),
        ServiceSpec(
            name="notify", command=command(program, "delay=0.3", "notify=STATUS=warm;READY=1"),
            ready=Readiness(notify=True),
        ),
    ]  # fmt: skip
    manager = ServicesManager(specs)
    with anyio.fail_after(30):
        async with startable.running(manager):
            pids = {}
            for name in ("running", "port", "line", "notify"):
                node = manager[name]
                assert of(node).state is State.STARTED
                assert node.pid is not None and alive(node.pid)
                pids[name] = node.pid
            # A rule that waits was met by what the program did, not by its start:
            assert [line.text for line in manager["line"].runner.service.output][-1] == "ready now"
            with socket.create_connection(("127.0.0.1", port)):
                pass
            assert manager["notify"].runner.service.status == "warm"
    for name, pid in pids.items():
        assert not alive(pid), name
        assert manager[name].ended_by == "close request"  # it ended on its SIGTERM: cleanly
        assert manager[name].stop_error is None


async def test_its_output_is_captured_line_by_line_from_both_streams(program: Path) -> None:
    seen: list[tuple[str, str]] = []
    spec = ServiceSpec(
        name="talker",
        command=command(program),
        ready=Readiness(line="ready now"),
        on_output=lambda line: seen.append((line.stream, line.text)),
    )
    with anyio.fail_after(30):
        async with startable.running(ServicesManager([spec])) as manager:
            process = manager["talker"].runner.service
            assert isinstance(process, CommandProcess)
            with anyio.fail_after(10):
                await poll(lambda: ("stderr", "to stderr") in seen)
    assert ("stdout", "booting") in seen
    assert ("stdout", "got SIGTERM") in seen  # its last words, after the stop signal


async def test_a_program_that_exits_before_it_is_ready_fails_its_start_with_its_code(
    program: Path,
) -> None:
    process = CommandProcess(command(program, "exit=3"), ready=Readiness(line="never"))
    with anyio.fail_after(30), pytest.raises(RemoteExited) as caught:
        async with startable.running(process):
            pass
    assert caught.value.returncode == 3
    assert "exit code 3" in str(caught.value)
    assert "failing now" in str(caught.value)  # its last line says why


async def test_a_program_that_exits_at_once_with_no_rule_stops_as_failed() -> None:
    # Ready as soon as it runs, it may have exited before its start is done: it
    # is never left STARTED with no process.
    spec = ServiceSpec(
        name="brief", command=["sh", "-c", "exit 4"], restart=RestartPolicy(mode="never")
    )
    manager = ServicesManager([spec])
    with anyio.fail_after(30):
        async with startable.running(manager):
            node = manager["brief"]
            await until(manager, lambda: of(node).state is State.STOPPED)
            reason = of(node).statistics().stop_reason
            assert isinstance(reason, RemoteExited) and reason.returncode == 4


async def test_a_program_not_ready_in_time_fails_its_start_and_is_stopped(program: Path) -> None:
    process = CommandProcess(
        command(program), ready=Readiness(line="never"), options=ProcessOptions(ready_timeout=0.5)
    )
    with anyio.fail_after(30), pytest.raises(ClusterError, match=r"not ready within 0\.5s"):
        async with startable.running(process):
            pass
    assert process.pid is None or not alive(process.pid)
    assert process.returncode is not None


async def test_a_missing_program_is_named(tmp_path: Path) -> None:
    process = CommandProcess(["no-such-program-anywhere"])
    with anyio.fail_after(30), pytest.raises(ClusterError, match="not on \\$PATH"):
        async with startable.running(process):
            pass
    missing = CommandProcess([str(tmp_path / "absent")], ready=Readiness(line="x"))
    with anyio.fail_after(30), pytest.raises(RemoteExited, match=r"exit code 127.*cannot run"):
        async with startable.running(missing):
            pass


async def test_the_stop_ladder_kills_a_program_that_ignores_its_stop_signal(
    program: Path,
) -> None:
    spec = ServiceSpec(
        name="stubborn",
        command=command(program, "stubborn"),
        ready=Readiness(line="ready now"),
        container_options={"term_timeout": 0.3},
    )
    manager = ServicesManager([spec])
    with anyio.fail_after(30):
        async with startable.running(manager):
            pid = manager["stubborn"].pid
            assert pid is not None
            with pytest.raises(ForcedStop):
                await manager.stop_service("stubborn")
    node = manager["stubborn"]
    assert node.ended_by == "SIGKILL"
    assert isinstance(node.stop_error, ForcedStop)
    assert "did not end within 0.3s of SIGTERM: SIGKILL" in str(node.stop_error)
    assert not alive(pid)


async def test_the_stop_signal_can_be_another(program: Path) -> None:
    process = CommandProcess(
        command(program), ready=Readiness(line="ready now"), stop_signal=signal.SIGINT
    )
    with anyio.fail_after(30):
        async with startable.running(process):
            pass
    assert "got SIGINT" in [line.text for line in process.output]
    assert [step.action for step in process.ladder] == ["SIGINT"]


async def test_a_stop_signal_of_sigkill_is_not_a_forced_stop() -> None:
    process = CommandProcess(["sleep", "60"], stop_signal=signal.SIGKILL)
    with anyio.fail_after(30):
        async with startable.running(process):  # its stop raises nothing
            pass
    assert process.ended_by == "close request"
    assert [step.action for step in process.ladder] == ["SIGKILL"]


async def test_descriptors_sent_with_a_notice_are_closed(program: Path, tmp_path: Path) -> None:
    sender = tmp_path / "sender.py"
    sender.write_text(
        "import os, socket, time\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "s.connect(os.environ['NOTIFY_SOCKET'])\n"
        "r, w = os.pipe()\n"
        "for _ in range(50):\n"
        "    socket.send_fds(s, [b'STATUS=fds'], [r, w])\n"
        "s.send(b'READY=1')\n"
        "time.sleep(60)\n"
    )
    before = len(os.listdir("/proc/self/fd"))
    process = CommandProcess([sys.executable, str(sender)], ready=Readiness(notify=True))
    with anyio.fail_after(30):
        async with startable.running(process):
            # 100 descriptors came; what this process holds grew by its own few only.
            assert len(os.listdir("/proc/self/fd")) - before < 20
            assert process.status == "fds"


async def test_a_crash_is_restarted_and_cascades_and_a_clean_exit_is_not_restarted(
    program: Path, tmp_path: Path
) -> None:
    flag = tmp_path / "crashed-once"
    # It fails once (exit 5, after it was ready), then runs: the restart policy brings it back.
    script = tmp_path / "once.sh"
    script.write_text(
        f"if [ ! -e {flag} ]; then touch {flag}; echo up; sleep 0.3; exit 5; fi\n"
        f"exec {sys.executable} {program}\n"
    )
    specs = [
        ServiceSpec(
            name="flaky", command=["sh", str(script)], ready=Readiness(line="up|ready now"),
            restart=RestartPolicy(backoff=0),
        ),
        ServiceSpec(name="user", factory=Quick, depends_on=["flaky"]),
        ServiceSpec(
            name="done", command=command(program, "exit=0"),
            restart=RestartPolicy(mode="on-failure"),
        ),
    ]  # fmt: skip
    manager = ServicesManager(specs)
    with anyio.fail_after(60):
        async with startable.running(manager):
            flaky = manager["flaky"]
            await until(manager, lambda: flaky.restarts == 1 and of(flaky).state is State.STARTED)
            assert isinstance(flaky.last_error, RemoteExited)
            assert flaky.last_error.returncode == 5
            await until(manager, lambda: of(manager["user"]).state is State.STARTED)
            assert manager["user"].restarts == 0  # it came back with its dependency
            done = manager["done"]
            await until(manager, lambda: of(done).state is State.STOPPED)
            assert done.restarts == 0
            assert of(done).statistics().stop_reason is None  # exit 0: a clean stop


async def test_resource_limits_apply_to_the_program(program: Path) -> None:
    spec = ServiceSpec(
        name="limited",
        command=command(program, "nofile"),
        ready=Readiness(line="ready now"),
        permissions=Permissions(open_files=64),
    )
    with anyio.fail_after(30):
        async with startable.running(ServicesManager([spec])) as manager:
            texts = [line.text for line in manager["limited"].runner.service.output]
    assert "nofile 64" in texts


async def test_its_resources_are_sampled(program: Path) -> None:
    spec = ServiceSpec(
        name="sampled",
        command=command(program),
        container_options={"resources_interval": 0.05},
    )
    with anyio.fail_after(30):
        async with startable.running(ServicesManager([spec])) as manager:
            node = manager["sampled"]
            await poll(lambda: bool(node.resources))
            assert node.resources[-1].rss > 0


async def test_notices_from_another_process_or_malformed_are_dropped(program: Path) -> None:
    process = CommandProcess(
        command(program, "delay=0.5", "notify=\xff\xfe,NOT A LINE,READY=1"),
        ready=Readiness(notify=True),
    )
    with anyio.fail_after(30):
        async with startable.running(process):
            assert process.messages_dropped == 2  # the program's own garbage, counted
            path = process._notify.path if process._notify else ""
            # This test's process is not the program, nor started by it.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stranger:
                stranger.sendto(b"STATUS=forged", path)
                stranger.sendto(b"x" * 5000, path)
            await poll(lambda: process.messages_dropped >= 4)
            assert process.status is None
            assert of(process).state is State.STARTED


async def test_a_process_the_program_started_may_say_it_is_ready(tmp_path: Path) -> None:
    sender = (
        "import os, socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
        "s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET']); import time; time.sleep(60)"
    )
    # The shell is the program; the Python it starts (a child of its) sends READY=1.
    # (It still runs when the datagram is read: that of one gone by then cannot be
    # told from a stranger's, and is dropped, as systemd drops it.)
    process = CommandProcess(
        ["sh", "-c", f'"{sys.executable}" -c "{sender}" & exec sleep 60'],
        ready=Readiness(notify=True),
        options=ProcessOptions(ready_timeout=20),
    )
    with anyio.fail_after(30):
        async with startable.running(process):
            assert process.messages_dropped == 0


async def test_a_stranger_cannot_make_the_program_ready(program: Path) -> None:
    process = CommandProcess(
        command(program), ready=Readiness(notify=True), options=ProcessOptions(ready_timeout=1)
    )
    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:

            async def forge() -> None:
                await poll(lambda: process._notify is not None)
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stranger:
                    stranger.sendto(b"READY=1", process._notify.path)

            group.start_soon(forge)
            with pytest.raises(ClusterError, match="not ready within 1s"):
                async with startable.running(process):
                    pass
    assert process.messages_dropped == 1


# -- health checks ------------------------------------------------------------


async def test_a_failing_health_command_stops_the_service_as_failed_and_it_is_restarted(
    program: Path, tmp_path: Path
) -> None:
    sick = tmp_path / "sick"
    spec = ServiceSpec(
        name="checked",
        command=command(program),
        ready=Readiness(line="ready now"),
        health=HealthCheck(
            command=["sh", "-c", f"if [ -e {sick} ]; then echo not well; exit 1; fi"],
            interval=0.05,
            retries=2,
        ),
        restart=RestartPolicy(backoff=0),
    )
    manager = ServicesManager([spec])
    with anyio.fail_after(60):
        async with startable.running(manager):
            node = manager["checked"]
            await poll(lambda: node.health == "healthy")
            first = node.pid
            sick.touch()
            await until(manager, lambda: node.restarts == 1)
            assert isinstance(node.last_error, HealthCheckFailed)
            assert node.last_error.failures == 2
            assert "exited with code 1: not well" in str(node.last_error)
            sick.unlink()
            await until(manager, lambda: of(node).state is State.STARTED)
            assert node.pid != first
            assert first is not None and not alive(first)


async def test_a_passing_check_clears_the_failures_before_it(tmp_path: Path) -> None:
    sick, gate = tmp_path / "sick", tmp_path / "gate"
    sick.touch()
    # A check fails once each time `sick` is made, and then closes `gate`: the next
    # check waits until the test opens it, so each state holds until it is seen.
    probe = f"if [ -e {sick} ]; then rm {sick}; touch {gate}; exit 1; fi; "
    probe += f"while [ -e {gate} ]; do sleep 0.01; done"
    spec = ServiceSpec(
        name="flapping",
        factory=Quick,
        health=HealthCheck(command=["sh", "-c", probe], interval=0.05, timeout=60, retries=2),
    )
    manager = ServicesManager([spec])
    with anyio.fail_after(30):
        async with startable.running(manager):
            node = manager["flapping"]
            await poll(lambda: node.health == "unhealthy")  # one failure, then...
            gate.unlink()
            await poll(lambda: node.health == "healthy")  # ...a pass: the count starts again
            assert (node.health_failures, node.health_problem) == (0, None)
            sick.touch()
            await poll(lambda: node.health == "unhealthy")
            assert node.health_failures == 1
            gate.unlink()
            await poll(lambda: node.health == "healthy")
            assert node.restarts == 0 and of(node).state is State.STARTED


async def stopped_by(check: HealthCheck) -> BaseException | None:
    """Run a service in this process with `check` until it stops; the reason it stopped
    with (the manager's other work goes on)."""
    spec = ServiceSpec(
        name="inproc", factory=Quick, health=check, restart=RestartPolicy(mode="never")
    )
    manager = ServicesManager([spec])
    with anyio.fail_after(30):
        async with startable.running(manager):
            node = manager["inproc"]
            await until(manager, lambda: of(node).state is State.STOPPED)
            assert of(manager).state is State.STARTED  # the others are unaffected
            return of(node).statistics().stop_reason


async def test_a_tcp_health_check_applies_to_a_service_in_this_process() -> None:
    port = free_port()
    error = await stopped_by(HealthCheck(port=port, interval=0.05, timeout=1, retries=3))
    assert isinstance(error, HealthCheckFailed)
    assert error.failures == 3
    assert f"127.0.0.1:{port} refused" in error.problem


async def test_a_health_command_that_hangs_is_killed_and_counts_as_failed(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "pid"
    # (The timeout leaves a loaded machine time to start it: it sleeps a minute.)
    command = ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"]
    error = await stopped_by(HealthCheck(command=command, interval=0.05, timeout=2, retries=1))
    assert "did not answer within 2s" in str(error)
    assert not alive(int(pidfile.read_text()))


# -- what a spec may say --------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"command": ["x"], "entry": "a.b:C"}, "entry do not apply"),
        ({"command": ["x"], "replicas": 2}, "replicas do not apply"),
        ({"command": ["x"], "permissions": Permissions(network=True)}, "network are for Python"),
        ({"command": []}, "a command is a program"),
        ({"command": ["", "x"]}, "a command is a program"),
        ({"command": "x 'unclosed"}, "cannot be split"),
        (
            {"entry": "a.b:C", "ready": Readiness(port=80)},
            "ready and stop_signal are for a command",
        ),
        ({"command": ["x"], "stop_signal": "SIGNOPE"}, "not a signal"),
        ({"command": ["x"], "stop_signal": "SIGSTOP"}, "does not end a program"),
        ({"command": ["x"], "stop_signal": 19}, "does not end a program"),
        ({"command": ["x"], "remote": True}, "command do not apply"),
        ({"command": ["x"], "restart": {"mode": "never"}}, "must be <class"),
    ],
)
def test_a_bad_command_spec_is_refused(fields: dict[str, object], says: str) -> None:
    with pytest.raises((ServiceDefinitionError, ValueError, TypeError), match=says):
        ServiceSpec(name="svc", **fields)  # type: ignore[arg-type]


def test_a_command_string_is_split_as_a_shell_would() -> None:
    spec = ServiceSpec(name="svc", command="redis-server --port 0 --save ''", stop_signal="INT")
    assert spec.command == ("redis-server", "--port", "0", "--save", "")
    assert spec.stop_signal is signal.SIGINT


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"port": 0}, "port"),
        ({"port": 70000}, "not a TCP port"),
        ({"port": 80, "line": "x"}, "one of port, line or notify"),
        ({"line": "("}, "not a regular expression"),
        ({"notify": 1}, "notify"),
    ],
)
def test_a_bad_readiness_rule_is_refused(fields: dict[str, object], says: str) -> None:
    with pytest.raises((ValueError, TypeError), match=says):
        Readiness(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({}, "one of command or port"),
        ({"command": ["x"], "port": 80}, "one of command or port"),
        ({"port": 80, "interval": float("nan")}, "interval"),
        ({"port": 80, "retries": 0}, "retries"),
        ({"port": 80, "timeout": float("inf")}, "timeout"),
        ({"port": 80, "interval": 1e300}, "86400 seconds at most"),
    ],
)
def test_a_bad_health_check_is_refused(fields: dict[str, object], says: str) -> None:
    with pytest.raises((ValueError, TypeError), match=says):
        HealthCheck(**fields)  # type: ignore[arg-type]
