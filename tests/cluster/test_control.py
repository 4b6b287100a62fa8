"""The control plane against broken peers, on real processes.

A remote that breaks the protocol fails the start at once with the real
cause (not "did not start within Ns"); a controller's unreadable frame makes
the remote say what is wrong instead of dying with a traceback; a close
request during a start abandons it; threads that raise never block the loop;
what a remote sends is bounded in the manager.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import msgspec
import pytest

import startable
from startable import State
from startable.cluster import (
    ClusterError,
    ProcessOptions,
    RemoteError,
    ServiceContainer,
    ServiceEvent,
    ServicesManager,
    ServiceSpec,
)
from startable.cluster._ipc.messages import (
    MAX_TRACEBACK,
    PROTOCOL,
    CloseRequest,
    FromRemote,
    Ping,
    Pong,
    RemoteReady,
    RunEntry,
    StateChanged,
)
from startable.cluster._ipc.wire import HEADER, FrameCodec, FrameReader
from startable.cluster._process.controller import ERRORS_KEPT, RETIRED_ERRORS

#: Every test here spawns child processes (`-m "not processes"` skips them).
pytestmark = [pytest.mark.anyio, pytest.mark.processes]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    """An "interpreter" that runs tests/fake_remote.py instead of the remote."""
    launcher = tmp_path / "fake-python"
    launcher.write_text(
        f"#!{sys.executable}\n"
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.fake_remote import main; main()\n"
    )
    launcher.chmod(0o755)
    return str(launcher)


BROKEN = [
    ("garbage", "the control port broke: the peer announced a frame of"),
    ("huge", "the control port broke: the peer announced a frame of 2147483648 bytes"),
    ("started-first", "the remote broke the protocol: it sent StateChanged before remoteReady"),
    ("skew", "runs startable 9.9 (control protocol 999), this manager startable"),
    ("old", "runs an older startable (control protocol 0)"),
    ("newer", "the remote sent a control message this manager cannot read"),
    ("not-msgpack", "the remote sent a control message this manager cannot read"),
    ("twice", "the remote broke the protocol: it said remoteReady twice"),
]


@pytest.mark.parametrize(("behaviour", "cause"), BROKEN)
async def test_a_remote_that_breaks_the_protocol_fails_the_start_at_once(
    fake_python: str, behaviour: str, cause: str
) -> None:
    container = ServiceContainer(
        "tests.remote_services:Echo",
        env={"STARTABLE_FAKE": behaviour},
        cwd=str(ROOT),
        options=ProcessOptions(
            python=fake_python,
            ready_timeout=600,  # far beyond the bound below: the failure must not wait for it
            close_timeout=0.5,
            term_timeout=2,
            resources_interval=0,
        ),
    )
    with anyio.fail_after(30):
        async with startable.open_owner():
            with pytest.raises(ClusterError) as caught:
                await startable.of(container).start()
    assert cause in str(caught.value)
    assert "did not start within" not in str(caught.value)
    assert startable.of(container).state is State.STOPPED


async def test_a_remote_that_stalls_mid_frame_is_named_when_the_start_times_out(
    fake_python: str,
) -> None:
    container = ServiceContainer(
        "tests.remote_services:Echo",
        env={"STARTABLE_FAKE": "slow"},
        cwd=str(ROOT),
        options=ProcessOptions(
            python=fake_python,
            ready_timeout=1,
            close_timeout=0.5,
            term_timeout=2,
            resources_interval=0,
        ),
    )
    with anyio.fail_after(30):
        async with startable.open_owner():
            with pytest.raises(ClusterError) as caught:
                await startable.of(container).start()
    assert str(caught.value).endswith(
        "the remote did not start within 1s: it sent part of a frame, and not the rest"
    )


# -- the remote, driven by a controller of the test's own ---------------------------


class FakeController:
    """Runs the real remote on a socketpair, with blocking I/O bounded by a timeout."""

    def __init__(self, entry: str = "tests.remote_services:Echo") -> None:
        self.entry = entry
        ours, theirs = socket.socketpair()
        ours.settimeout(20)
        self.sock = ours
        env = {**os.environ, "STARTABLE_PORT_FD": str(theirs.fileno()), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "startable.cluster._child"],
            pass_fds=[theirs.fileno()],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        theirs.close()
        self.reader = FrameReader(FrameCodec())
        self.decoder = msgspec.msgpack.Decoder(FromRemote)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, message: msgspec.Struct) -> None:
        self.send_raw(FrameCodec().encode(msgspec.msgpack.encode(message)))

    def receive(self) -> FromRemote:
        while (payload := self.reader.next()) is None:
            data = self.sock.recv(65536)
            assert data, "the remote closed its port"
            self.reader.feed(data)
        return self.decoder.decode(payload)

    def until(self, kind: type, **fields: object) -> FromRemote:
        while True:
            message = self.receive()
            if isinstance(message, kind) and all(
                getattr(message, k) == v for k, v in fields.items()
            ):
                return message

    def end(self) -> tuple[int, str]:
        _, err = self.process.communicate(timeout=30)
        self.sock.close()
        return self.process.returncode, err.decode()


def test_the_remote_says_it_cannot_read_the_entry_instead_of_crashing() -> None:
    for unreadable in (
        FrameCodec().encode(b"\xc1 not msgpack"),
        FrameCodec().encode(msgspec.msgpack.encode({"type": "run", "entry": "a:b", "new": 1})),
    ):
        controller = FakeController()
        ready = controller.receive()
        assert isinstance(ready, RemoteReady)
        assert ready.protocol == PROTOCOL and ready.version == startable.__version__
        controller.send_raw(unreadable)
        code, err = controller.end()
        assert code == 2  # the remote's EXIT_SETUP
        assert "startable: cannot read the controller's message" in err
        assert "Traceback" not in err


def test_the_remote_drops_an_unreadable_frame_once_running_and_keeps_serving() -> None:
    controller = FakeController()
    controller.until(RemoteReady)
    controller.send(RunEntry("tests.remote_services:Echo", resources_interval=0))
    controller.until(StateChanged, state="STARTED")
    controller.send_raw(FrameCodec().encode(b"\xc1 not msgpack"))
    controller.send(Ping(b"still there?"))
    assert controller.until(Pong).payload == b"still there?"  # type: ignore[union-attr]
    controller.send(CloseRequest())
    code, err = controller.end()
    assert code == 0
    assert "startable: remote port: dropped a frame that held no valid message" in err
    assert "Traceback" not in err


def test_a_broken_frame_from_the_controller_stops_the_service_with_the_cause() -> None:
    controller = FakeController()
    controller.until(RemoteReady)
    controller.send(RunEntry("tests.remote_services:Echo", resources_interval=0))
    controller.until(StateChanged, state="STARTED")
    controller.send_raw(HEADER.pack(1 << 31))
    code, err = controller.end()
    assert code == 1
    broke = "startable: the control port broke: the peer announced a frame of 2147483648 bytes"
    assert broke in err
    assert err.rstrip().endswith("; stopping the service")
    assert "Traceback" not in err


# -- starts abandoned, threads, bounds ------------------------------------------------


async def test_a_close_request_during_the_start_abandons_it_in_the_child() -> None:
    began = anyio.Event()
    container = ServiceContainer(
        "tests.remote_services:SlowStart",
        cwd=str(ROOT),
        on_output=lambda line: began.set() if line.text == "slow: starting" else None,
        options=ProcessOptions(
            close_timeout=60,  # never reached: the close request is heard during the start
            term_timeout=60,
            resources_interval=0,
        ),
    )
    with anyio.fail_after(30):
        async with startable.open_owner():
            with anyio.CancelScope() as starting:
                async with anyio.create_task_group() as group:
                    group.start_soon(startable.of(container).start)
                    await began.wait()
                    starting.cancel()  # as Ctrl-C does to `startable up`
            await startable.of(container).wait_state(State.STOPPED)
    controller = container.controller
    assert controller is not None
    assert [step.action for step in controller.ladder] == ["close request"]
    assert controller.returncode == 0
    said = [line.text for line in container.output]
    assert said[-1].startswith("slow: stopping (AbortedError: the start of")


async def test_a_thread_that_raises_never_blocks_the_thread_that_joins_it() -> None:
    container = ServiceContainer(
        "tests.remote_services:ThreadRaiser",
        cwd=str(ROOT),
        env={"STARTABLE_TEST_THREADS": "3"},
        options=ProcessOptions(resources_interval=0),
    )
    with anyio.fail_after(30):
        async with startable.running(container):
            controller = container.controller
            assert controller is not None
            while len(controller.errors) < 3:  # the reports come after the start
                await controller.ping()
    assert [e.where for e in container.errors] == [f"thread worker-{n}" for n in range(3)]
    assert all(isinstance(e, RemoteError) for e in container.errors)
    assert "raiser: joined" in [line.text for line in container.output]


async def test_a_thread_error_is_logged_and_the_service_runs_on_or_stops_as_told(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def raiser(policy: str) -> ServiceContainer:
        return ServiceContainer(
            "tests.remote_services:ThreadRaiser",
            cwd=str(ROOT),
            name=f"agent-{policy}",
            options=ProcessOptions(resources_interval=0, on_thread_error=policy),  # type: ignore[arg-type]
        )

    reporting, stopping = raiser("report"), raiser("stop")
    with anyio.fail_after(30):
        async with startable.running(reporting):
            controller = reporting.controller
            assert controller is not None
            while controller.thread_errors < 1:  # the report comes after the start
                await controller.ping()
            assert startable.of(reporting).state is State.STARTED  # it runs on
        async with startable.open_owner():
            try:  # its thread fails during its start: the report may come before it ends, or after
                await startable.of(stopping).start()
            except RemoteError as exc:
                error: BaseException | None = exc
            else:
                await startable.of(stopping).wait_state(State.STOPPED)
                error = startable.of(stopping).statistics().stop_reason
    assert isinstance(error, RemoteError) and error.where == "thread worker-0", error
    assert "RuntimeError: thread 0 failed" in str(error)
    logged = [r.getMessage() for r in caplog.records if "an error ended a thread" in r.getMessage()]
    assert any(m.startswith("agent-report:") and "it runs on (1 so far)" in m for m in logged)
    assert any(m.startswith("agent-stop:") and m.endswith("stopping it") for m in logged)
    with pytest.raises(ValueError, match="on_thread_error"):
        ProcessOptions(on_thread_error="ignore")  # type: ignore[arg-type]


async def test_what_a_remote_reports_is_bounded() -> None:
    threads = ERRORS_KEPT + 20
    container = ServiceContainer(
        "tests.remote_services:ThreadRaiser",
        cwd=str(ROOT),
        env={"STARTABLE_TEST_THREADS": str(threads), "STARTABLE_TEST_MESSAGE_SIZE": "200000"},
        options=ProcessOptions(resources_interval=0),
    )
    with anyio.fail_after(60):
        async with startable.open_owner():
            await startable.of(container).start()
            controller = container.controller
            assert controller is not None
            while controller.errors_dropped < threads - ERRORS_KEPT:
                await controller.ping()
            assert len(controller.errors) == ERRORS_KEPT
            assert controller.errors[-1].where == f"thread worker-{threads - 1}"
            last = controller.errors[-1].info
            assert len(last.traceback) < MAX_TRACEBACK + 100
            assert "characters cut" in last.message
            await startable.of(container).stop()
            await startable.of(container).start()  # a new incarnation: the last one retires
            assert len(controller.errors) == RETIRED_ERRORS
            await startable.of(container).stop()


async def test_a_failed_start_shows_stopping_while_its_clean_up_runs() -> None:
    spec = ServiceSpec(
        name="slow",
        entry="tests.remote_services:Blocking",
        cwd=str(ROOT),
        container_options={
            # Long enough for the child to be blocked by then even on a loaded
            # machine (a child still importing would hear the close request).
            "ready_timeout": 5,
            "close_timeout": 2,
            "term_timeout": 2,
            "resources_interval": 0,
        },
    )
    manager = ServicesManager([spec])
    seen: list[tuple[str, int | None, list[str]]] = []

    def watch(event: ServiceEvent) -> None:
        if event.change is not None and event.change.current is State.STOPPING:
            controller = manager["slow"].container.controller  # type: ignore[union-attr]
            alive = controller.process.returncode if controller.process else -1
            seen.append(("STOPPING", alive, [step.action for step in controller.ladder]))

    manager.subscribe(watch)
    with anyio.fail_after(30):
        async with startable.open_owner():
            with pytest.raises(ClusterError, match="did not start within 5s"):
                await startable.of(manager).start()
    # The service was STOPPING (and said so) while its process still ran its ladder.
    assert seen == [("STOPPING", None, ["close request"])]
    controller = manager["slow"].container.controller  # type: ignore[union-attr]
    assert [step.action for step in controller.ladder] == ["close request", "SIGTERM"]
