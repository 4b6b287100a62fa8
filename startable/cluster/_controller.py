"""`ServiceController`: one incarnation of a service in a child process."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Literal

import anyio
import attrs

from .. import _markers as markers
from .._lifecycle import State
from .._startable import of
from ._errors import ClusterError, PortError, RemoteError, RemoteExited
from ._messages import (
    CloseRequest,
    ErrorInfo,
    FromRemote,
    Ping,
    Pong,
    Protected,
    RemoteReady,
    Resources,
    RunEntry,
    StateChanged,
    Uncaught,
)
from ._permissions import Permissions
from ._port import ConnectionPort, from_socket
from ._process import ChildProcess, read_lines, spawn
from ._remote import ENV_DATA_PORT, ENV_PARENT, ENV_PORT

STARTED, STOPPING = State.STARTED, State.STOPPING


@attrs.frozen
class OutputLine:
    """One line the service wrote to its stdout or stderr."""

    stream: Literal["stdout", "stderr"]
    text: str
    time: float


@attrs.frozen
class StopStep:
    """One rung of the stop ladder that was used, and when."""

    action: Literal["close request", "SIGTERM", "SIGKILL"]
    time: float


class ServiceController:
    """Drives one incarnation of a service: one child process, from start to exit.

    Its raw start starts a fresh Python process running the remote, waits
    for `remoteReady`, sends the entry, and returns when the service is
    STARTED there (or raises a `RemoteError` carrying the remote traceback if
    loading the entry or its raw start failed). While it runs, the controller
    mirrors the remote's state and keeps the service's last lines of output,
    every uncaught error and a short history of resource figures. If the
    service stops on its own, or the process dies, the controller stops with
    that as its reason.

    Its raw stop climbs the stop ladder: a close request, then SIGTERM to the
    process group after `close_timeout`, then SIGKILL after `term_timeout`.

    The controller sees only control messages; a service's own requests and
    events do not pass through it.

    Args:
        entry: `"package.module:attribute"` (an object with a lifecycle, or a
            zero-argument factory of one); with `code`, the name in it.
        code: source text to run in the child first (the "code string").
        permissions: restrictions applied in the child before the entry is
            loaded; None for none.
        env: environment variables for the child (added to this process's
            own unless `inherit_env` is false). `PYTHONUNBUFFERED=1` is set
            unless `env` says otherwise, so output comes line by line.
        cwd: the child's working directory.
        python: the interpreter to run (this one by default).
        ready_timeout: seconds the child may take to say it is ready and to
            start the service.
        close_timeout: seconds between the close request and SIGTERM.
        term_timeout: seconds between SIGTERM and SIGKILL.
        output_lines: how many lines of output to keep.
        resources_interval: seconds between resource samples (0: none).
        resources_history: how many resource samples to keep.
        on_output: called with each line of output as it comes.
        name: used in `repr()`, logs and errors.
        data_socket: a connected socket the child gets as its data-plane
            port (the manager holds the other end). The controller passes it
            on at spawn and closes its own copy; it never reads it.
    """

    def __init__(
        self,
        entry: str,
        *,
        code: str | None = None,
        permissions: Permissions | None = None,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        cwd: str | None = None,
        python: str | None = None,
        ready_timeout: float = 60.0,
        close_timeout: float = 10.0,
        term_timeout: float = 5.0,
        output_lines: int = 1000,
        resources_interval: float = 1.0,
        resources_history: int = 60,
        on_output: Callable[[OutputLine], object] | None = None,
        name: str | None = None,
        data_socket: socket.socket | None = None,
    ) -> None:
        self.entry = entry
        self._data_socket = data_socket
        self.code = code
        self.permissions = permissions
        self.env = dict(env or {})
        self.inherit_env = inherit_env
        self.cwd = cwd
        self.python = python or sys.executable
        self.ready_timeout = ready_timeout
        self.close_timeout = close_timeout
        self.term_timeout = term_timeout
        self.resources_interval = resources_interval
        self.on_output = on_output
        self.name = name or entry
        self.output: deque[OutputLine] = deque(maxlen=output_lines)
        self.resources: deque[Resources] = deque(maxlen=resources_history)
        self.errors: list[RemoteError] = []
        self.ladder: list[StopStep] = []
        self.mechanisms: tuple[str, ...] = ()
        self.remote_state: State | None = None
        self.process: ChildProcess | None = None
        self.returncode: int | None = None
        self._port: ConnectionPort[FromRemote] | None = None
        self._pings: dict[bytes, anyio.Event] = {}
        self._ping_ids = itertools.count()

    def __repr__(self) -> str:
        pid = f" pid {self.pid}" if self.pid is not None else ""
        return f"<ServiceController {self.name}{pid}: {of(self).state.name}>"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    # -- lifecycle ----------------------------------------------------------

    @markers.as_raw_start
    async def _start(self) -> None:
        self._ready, self._started, self._ended = anyio.Event(), anyio.Event(), anyio.Event()
        self._output_done = {"stdout": anyio.Event(), "stderr": anyio.Event()}
        ours, theirs = socket.socketpair()
        # Unbuffered, so that output arrives line by line as it is written.
        env = {**(os.environ if self.inherit_env else {}), "PYTHONUNBUFFERED": "1", **self.env}
        env[ENV_PORT] = str(theirs.fileno())
        env[ENV_PARENT] = str(os.getpid())
        passed = [theirs.fileno()]
        data_socket, self._data_socket = self._data_socket, None
        if data_socket is not None:
            env[ENV_DATA_PORT] = str(data_socket.fileno())
            passed.append(data_socket.fileno())
        try:
            self.process = await spawn(
                [self.python, "-m", "startable.cluster._child"],
                pass_fds=passed,
                env=env,
                cwd=self.cwd,
            )
        except BaseException:
            ours.close()  # no process, no port: nothing else would close it
            raise
        finally:
            theirs.close()
            if data_socket is not None:
                data_socket.close()
        self._port = from_socket(ours, receives=FromRemote, name=f"{self.name} control port")
        await of(self._port).start()
        lifecycle = of(self)
        assert self.process.popen.stdout is not None
        assert self.process.popen.stderr is not None
        lifecycle.start_soon(self._read_output, "stdout", self.process.popen.stdout.fileno())
        lifecycle.start_soon(self._read_output, "stderr", self.process.popen.stderr.fileno())
        lifecycle.start_soon(self._watch_exit)
        lifecycle.start_soon(self._receive)
        with anyio.move_on_after(self.ready_timeout) as waiting:
            await self._first(self._ready)
            if not self._ready.is_set():
                raise self._failure("the remote process ended before it was ready")
            await self._port.send(
                RunEntry(
                    self.entry,
                    code=self.code,
                    permissions=self.permissions.to_spec() if self.permissions else None,
                    resources_interval=self.resources_interval,
                )
            )
            await self._first(self._started)
            if not self._started.is_set():
                raise self._failure("the service did not start")
        if waiting.cancelled_caught:
            raise ClusterError(
                f"{self.name}: the remote did not start within {self.ready_timeout}s"
            )

    async def _first(self, event: anyio.Event) -> None:
        """Wait for `event`, or for the end of the remote, whichever comes first."""
        async with anyio.create_task_group() as race:

            async def wait(which: anyio.Event) -> None:
                await which.wait()
                race.cancel_scope.cancel()

            race.start_soon(wait, event)
            race.start_soon(wait, self._ended)

    def _failure(self, what: str) -> Exception:
        """The error that best explains why the remote could not start."""
        if self.errors:
            return self.errors[-1]
        code = self.returncode
        return RemoteExited(f"{self.name}: {what} (exit code {code})", code or 0)

    @markers.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        process = self.process
        known = len(self.errors)
        try:
            if process is not None and process.returncode is None:
                await self._ladder(process, err)
            for error in self.errors[known:]:
                if error.where == "raw stop":
                    raise error  # the service's own raw stop failed, in the child
        finally:
            if process is not None:
                process.signal(signal.SIGKILL)  # anything it left behind in its group
                with anyio.move_on_after(2, shield=True):  # its last words, if still in the pipes
                    for done in self._output_done.values():
                        await done.wait()
                process.close()
            self._release_pings()
            if self._port is not None:
                await of(self._port).stop()

    async def _ladder(self, process: ChildProcess, err: BaseException | None) -> None:
        port = self._port
        if port is not None and of(port).state is STARTED:
            self.ladder.append(StopStep("close request", time.time()))
            try:
                await port.send(CloseRequest(ErrorInfo.of(err) if err is not None else None))
            except PortError:
                pass
        for action, signum, timeout in (
            ("SIGTERM", signal.SIGTERM, self.close_timeout),
            ("SIGKILL", signal.SIGKILL, self.term_timeout),
        ):
            with anyio.move_on_after(timeout):
                await process.exited()
                return
            self.ladder.append(StopStep(action, time.time()))  # type: ignore[arg-type]
            process.signal(signum)
        with anyio.move_on_after(self.term_timeout):
            await process.exited()
            return
        raise ClusterError(f"{self.name}: pid {process.pid} survived SIGKILL")

    # -- background tasks -----------------------------------------------------

    async def _read_output(self, stream: Literal["stdout", "stderr"], fileno: int) -> None:
        try:
            async for text in read_lines(fileno):
                line = OutputLine(stream, text, time.time())
                self.output.append(line)
                if self.on_output is not None:
                    self.on_output(line)
        finally:
            self._output_done[stream].set()

    async def _watch_exit(self) -> None:
        assert self.process is not None
        self.returncode = await self.process.wait()
        self._ended.set()
        self._release_pings()
        lifecycle = of(self)
        if lifecycle.state is STARTED:
            lifecycle.stop_nowait(self._failure("the remote process ended"))

    async def _receive(self) -> None:
        assert self._port is not None
        async for message in self._port:
            self._handle(message)

    def _handle(self, message: FromRemote) -> None:
        if isinstance(message, RemoteReady):
            self._ready.set()
        elif isinstance(message, Protected):
            self.mechanisms = message.mechanisms
        elif isinstance(message, StateChanged):
            self.remote_state = State[message.state]
            if self.remote_state is STARTED:
                self._started.set()
            elif self.remote_state is STOPPING and of(self).state is STARTED:
                # The service stopped on its own: so does its controller.
                reason = message.reason
                of(self).stop_nowait(RemoteError(reason, "stop reason") if reason else None)
        elif isinstance(message, Uncaught):
            self.errors.append(RemoteError(message.error, message.where))
        elif isinstance(message, Resources):
            self.resources.append(message)
        elif isinstance(message, Pong):
            waiting = self._pings.pop(message.payload, None)
            if waiting is not None:
                waiting.set()

    # -- calls ----------------------------------------------------------------

    @markers.assert_state()
    async def ping(self) -> float:
        """One round trip to the remote over the control port; its duration in seconds.

        Bound it as any other wait, with `anyio.fail_after`. It does not
        wait past the end of the remote.

        Raises:
            RemoteExited: the remote ended before it answered.
        """
        assert self._port is not None
        payload = next(self._ping_ids).to_bytes(8, "big")
        answered = self._pings[payload] = anyio.Event()
        began = time.perf_counter()
        try:
            await self._port.send(Ping(payload))
            await answered.wait()
            if payload in self._pings:  # woken by _release_pings, not by a Pong
                raise self._failure("the remote ended before answering a ping")
        finally:
            self._pings.pop(payload, None)
        return time.perf_counter() - began

    def _release_pings(self) -> None:
        """Wake every ping still waiting: the remote will not answer any more."""
        for event in self._pings.values():
            event.set()
