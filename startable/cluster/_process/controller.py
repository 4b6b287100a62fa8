"""`ServiceController`: one incarnation of a service in a child process."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import anyio
import attrs

from ... import State, StateError, __version__, as_raw_start, as_raw_stop, assert_state, of
from .._errors import (
    ClusterError,
    ForcedStop,
    MessageError,
    PortClosed,
    PortError,
    RemoteError,
    RemoteExited,
)
from .._ipc.messages import (
    PROTOCOL,
    CloseRequest,
    ErrorInfo,
    FromRemote,
    Ping,
    Pong,
    Protected,
    RemoteReady,
    Resources,
    Role,
    RunEntry,
    StateChanged,
    Uncaught,
    problem,
)
from .._ipc.port import ConnectionPort, from_socket
from .._names import NAME_RULE, now_and_then
from .._sandbox.permissions import Permissions
from .listen import ENV_LISTEN, ENV_LISTEN_NAMES, ListenSocket
from .options import ProcessOptions
from .remote import ENV_PARENT, ENV_PORT
from .spawn import ProcessBase, read_lines, spawn
from .zygote import Zygote

logger = logging.getLogger("startable.cluster")
STARTING, STARTED, STOPPING = State.STARTING, State.STARTED, State.STOPPING
#: How many of a remote's uncaught errors a controller keeps (the newest);
#: the others are counted in `ServiceController.errors_dropped`.
ERRORS_KEPT = 100
#: What a controller keeps once a newer incarnation of its service runs
#: (`ServiceController.retire`): its last lines of output and errors.
RETIRED_LINES = 100
RETIRED_ERRORS = 10


@attrs.frozen
class OutputLine:
    """One line the service wrote to its stdout or stderr."""

    stream: Literal["stdout", "stderr"]
    text: str
    time: float
    #: The index of the pool's replica that wrote it (None: not a pool's).
    replica: int | None = None


@attrs.frozen
class StopStep:
    """One rung of the stop ladder that was used, and when.

    `action` is `"close request"` or the name of the signal sent
    (`"SIGTERM"`, `"SIGKILL"`; a `command` service's stop signal).
    """

    action: str
    time: float


#: Seconds a SIGKILLed process has to be seen gone before it is said to survive it.
AFTER_SIGKILL = 10.0


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
    process group after `options.close_timeout`, then SIGKILL after `options.term_timeout`.

    The controller sees only control messages; a service's own requests and
    events do not pass through it.

    Args:
        entry: `"package.module:attribute"` (an object with a lifecycle, or a
            zero-argument factory of one); with `code`, the name in it.
        code: source text to run in the child first (the "code string").
        permissions: restrictions applied in the child before the entry is
            loaded; None for none.
        env: environment variables for the child (added to this process's
            own unless `options.inherit_env` is false). `PYTHONUNBUFFERED=1` is set
            unless `env` says otherwise, so output comes line by line.
        cwd: the child's working directory.
        options: how the process is run (interpreter, timeouts, how much
            output and how many resource samples are kept); the defaults
            of `ProcessOptions` when None.
        on_output: called with each line of output as it comes.
        name: used in `repr()`, logs and errors.
        sockets: sockets the child inherits, each under the name of the
            environment variable that tells it the descriptor's number (the
            data plane's socket, set up by the service's runner, is one). The
            controller passes them on at spawn and closes its own copies; it
            never reads them.
        listeners: listening sockets the child gets as systemd's socket
            activation gives them (descriptors 3, 4..., `LISTEN_FDS`; see
            `listen_sockets`). They stay open here, for the next incarnation.
        zygote: the pool's fork server to fork its process from (None: spawn it).
        replica: the index of the pool's replica it runs (None: not a pool's).
    """

    def __init__(
        self,
        entry: str,
        *,
        code: str | None = None,
        permissions: Permissions | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        options: ProcessOptions | None = None,
        on_output: Callable[[OutputLine], object] | None = None,
        name: str | None = None,
        sockets: Mapping[str, socket.socket] | None = None,
        listeners: Sequence[ListenSocket] = (),
        zygote: Zygote | None = None,
        replica: int | None = None,
    ) -> None:
        self.entry = entry
        #: The index of the pool's replica it runs (None: not a pool's), in its output lines.
        self.replica = replica
        #: The pool's fork server its process is forked from (None: it is spawned).
        self.zygote = zygote
        self._sockets = dict(sockets or {})
        #: Listening sockets its process gets at 3, 4... (socket activation).
        self.listeners = tuple(listeners)
        self.code = code
        self.permissions = permissions
        self.env = dict(env or {})
        self.cwd = cwd
        #: How its process is run (`ProcessOptions`).
        self.options = options = ProcessOptions.of(options)
        #: The interpreter it runs.
        self.python = options.python or sys.executable
        self.on_output = on_output
        self.name = name or entry
        self.output: deque[OutputLine] = deque(maxlen=options.output_lines)
        self.resources: deque[Resources] = deque(maxlen=options.resources_history)
        #: The remote's uncaught errors, newest last: `ERRORS_KEPT` at most.
        self.errors: deque[RemoteError] = deque(maxlen=ERRORS_KEPT)
        #: Uncaught errors reported beyond those kept.
        self.errors_dropped = 0
        #: Errors that ended a thread of the service (see `ProcessOptions.on_thread_error`).
        self.thread_errors = 0
        self._thread_error: RemoteError | None = None
        #: Messages from the remote that were dropped: unreadable, or holding bad values.
        self.messages_dropped = 0
        self.ladder: list[StopStep] = []
        self.mechanisms: tuple[str, ...] = ()
        self.remote_state: State | None = None
        self.process: ProcessBase | None = None
        self.returncode: int | None = None
        self._port: ConnectionPort[FromRemote] | None = None
        self._broken: ClusterError | None = None  # the control port can no longer be trusted
        self._stop_error: RemoteError | None = None  # the service's raw stop failed, there
        self._state_at_signal: State | None = None
        self._pings: dict[bytes, anyio.Event] = {}
        self._ping_ids = itertools.count()

    def __repr__(self) -> str:
        pid = f" pid {self.pid}" if self.pid is not None else ""
        return f"<ServiceController {self.name}{pid}: {of(self).state.name}>"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def ended_by(self) -> str | None:
        """The rung of the stop ladder that ended the process, once it has ended.

        `"close request"`: it stopped when asked (cleanly). `"SIGTERM"` or
        `"SIGKILL"`: it had to be signalled (its stop raised `ForcedStop`).
        None: the ladder did not run (it ended on its own), or it has not
        ended yet.
        """
        process = self.process
        if process is None or process.returncode is None or not self.ladder:
            return None
        return self.ladder[-1].action

    # -- lifecycle ----------------------------------------------------------

    @as_raw_start
    async def _start(self) -> None:
        self._ready, self._started, self._ended = anyio.Event(), anyio.Event(), anyio.Event()
        self._broke = anyio.Event()
        self._thread_error = None
        self._output_done = {"stdout": anyio.Event(), "stderr": anyio.Event()}
        ours, theirs = socket.socketpair()
        inherited, self._sockets = self._sockets, {}
        try:
            self.process = await self._launch(theirs, inherited)
        except BaseException:
            ours.close()  # no process, no port: nothing else would close it
            raise
        finally:
            theirs.close()
            for inherit in inherited.values():
                inherit.close()
        self._port = from_socket(ours, receives=FromRemote, name=f"{self.name} control port")
        await of(self._port).start()
        lifecycle = of(self)
        lifecycle.start_soon(self._read_output, "stdout", self.process.stdout)
        lifecycle.start_soon(self._read_output, "stderr", self.process.stderr)
        lifecycle.start_soon(self._watch_exit)
        lifecycle.start_soon(self._receive)
        with anyio.move_on_after(self.options.ready_timeout) as waiting:
            await self._until(self._ready, "the remote process ended before it was ready")
            await self._port.send(
                RunEntry(
                    self.entry,
                    code=self.code,
                    permissions=self.permissions.to_spec() if self.permissions else None,
                    resources_interval=self.options.resources_interval,
                )
            )
            await self._until(self._started, "the service did not start")
        if waiting.cancelled_caught:
            raise ClusterError(
                f"{self.name}: the remote did not start within {self.options.ready_timeout:g}s: "
                + self._what_came()
            )
        if self._thread_error is not None:  # during the start, with on_thread_error = "stop"
            raise self._thread_error

    async def _launch(
        self, theirs: socket.socket, inherited: Mapping[str, socket.socket]
    ) -> ProcessBase:
        """Its process: spawned, or forked from its pool's zygote; `theirs` and the
        `inherited` sockets are given to it (the caller closes its own copies)."""
        fds = {ENV_PORT: theirs.fileno()}
        fds.update((variable, inherit.fileno()) for variable, inherit in inherited.items())
        listening = [listener.socket.fileno() for listener in self.listeners]
        names = ":".join(listener.name for listener in self.listeners)
        label = self.name if NAME_RULE.fullmatch(self.name) else "service"
        if self.zygote is not None:
            # Its own environment on top of the zygote's (which is the pool's);
            # the listeners are moved to 3, 4... by the remote, as when spawned.
            env = dict(self.env)
            if self.listeners:
                env[ENV_LISTEN_NAMES] = names
            given = [*fds.items(), *((ENV_LISTEN, fd) for fd in listening)]
            return await self.zygote.fork(env, given, label)
        # Unbuffered, so that output arrives line by line as it is written.
        environ: Mapping[str, str] = os.environ if self.options.inherit_env else {}
        env = {**environ, "PYTHONUNBUFFERED": "1", **self.env}
        env.update((name, str(fd)) for name, fd in fds.items())
        env[ENV_PARENT] = str(os.getpid())
        if self.listeners:  # the remote moves them to 3, 4...; they stay open here
            env[ENV_LISTEN] = ",".join(map(str, listening))
            env[ENV_LISTEN_NAMES] = names
        return await spawn(
            [self.python, "-m", "startable.cluster._child"],
            pass_fds=[*fds.values(), *listening],
            env=env,
            cwd=self.cwd,
            label=label,
        )

    async def _until(self, event: anyio.Event, otherwise: str) -> None:
        """Wait for `event`; raise at once if the remote ends, or breaks the protocol, first."""
        if not (event.is_set() or self._ended.is_set() or self._broke.is_set()):
            async with anyio.create_task_group() as race:

                async def wait(which: anyio.Event) -> None:
                    await which.wait()
                    race.cancel_scope.cancel()

                for which in (event, self._ended, self._broke):
                    race.start_soon(wait, which)
        if self._broken is not None:
            raise self._broken
        if not event.is_set():
            raise self._failure(otherwise)

    def _what_came(self) -> str:
        """What the remote had said when its start ran out of time."""
        port = self._port
        if port is not None and port.mid_frame:
            return "it sent part of a frame, and not the rest"
        if not self._ready.is_set():
            return "it never said it was ready"
        state = self.remote_state
        return f"its service was {state.name if state else 'not yet started'}"

    def _break(self, error: ClusterError) -> None:
        """The control port can no longer be trusted: fail the start at once, or stop."""
        if self._broken is None:
            self._broken = error
            self._broke.set()
            if of(self).state is STARTED:
                of(self).stop_nowait(error)

    def _failure(self, what: str) -> Exception:
        """The error that best explains why the remote could not start."""
        if self.errors:
            return self.errors[-1]
        code = self.returncode
        return RemoteExited(f"{self.name}: {what} (exit code {code})", code or 0)

    @as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        process = self.process
        self._stop_error = None
        try:
            if process is not None and process.returncode is None:
                await self._ladder(process, err)
            if self._stop_error is not None:
                raise self._stop_error  # the service's own raw stop failed, in the child
            forced = self.ended_by
            if forced in ("SIGTERM", "SIGKILL"):
                options = self.options
                waited = options.close_timeout if forced == "SIGTERM" else options.term_timeout
                state = self._state_at_signal
                raise ForcedStop(self.name, forced, waited, state.name if state else None)
        finally:
            if process is not None:
                process.signal(signal.SIGKILL)  # anything it left behind in its group
                with anyio.move_on_after(2, shield=True):  # its last words, if still in the pipes
                    for done in self._output_done.values():
                        await done.wait()
                await process.aclose()
            self._release_pings()
            if self._port is not None:
                await of(self._port).stop()

    async def _ladder(self, process: ProcessBase, err: BaseException | None) -> None:
        port = self._port
        if port is not None and of(port).state is STARTED:
            self.ladder.append(StopStep("close request", time.time()))
            try:
                await port.send(CloseRequest(ErrorInfo.of(err) if err is not None else None))
            except PortError:
                pass
        for action, signum, timeout in (
            ("SIGTERM", signal.SIGTERM, self.options.close_timeout),
            ("SIGKILL", signal.SIGKILL, self.options.term_timeout),
        ):
            with anyio.move_on_after(timeout):
                await process.exited()
                return
            if action == "SIGTERM":  # what it was doing when asking was not enough
                self._state_at_signal = self.remote_state
            self.ladder.append(StopStep(action, time.time()))
            process.signal(signum)
        # SIGKILL is not refused, only slow to be seen on a loaded machine (the
        # kernel, then a zygote's report): past this, the process is stuck.
        with anyio.move_on_after(max(self.options.term_timeout, AFTER_SIGKILL)):
            await process.exited()
            return
        raise ClusterError(f"{self.name}: pid {process.pid} survived SIGKILL")

    # -- background tasks -----------------------------------------------------

    async def _read_output(self, stream: Literal["stdout", "stderr"], fileno: int) -> None:
        try:
            async for text in read_lines(fileno):
                line = OutputLine(stream, text, time.time(), self.replica)
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
        # While STARTING, the stop comes once the start is done: a remote that said
        # STARTED and ended at once must not leave this controller STARTED.
        if lifecycle.state in (STARTING, STARTED):
            lifecycle.stop_nowait(self._failure("the remote process ended"))

    async def _receive(self) -> None:
        port = self._port
        assert port is not None
        while of(port).state is STARTED:  # (the controller's stop closes it)
            try:
                message = await port.receive()
            except MessageError as exc:
                if self._started.is_set():  # the port's contract: drop it, keep the port
                    self._dropped(str(exc))
                    continue
                self._break(
                    ClusterError(
                        f"{self.name}: the remote sent a control message this manager cannot "
                        f"read ({exc}); does {self.python} run the same startable as this "
                        f"manager ({__version__})?"
                    )
                )
                return
            except PortClosed:
                return  # the remote closed it: its end is watched by _watch_exit
            except PortError as exc:  # a bad frame: nothing after it can be trusted
                self._break(ClusterError(f"{self.name}: the control port broke: {exc}"))
                return
            why = self._out_of_order(message)
            if why is not None:
                self._break(ClusterError(f"{self.name}: the remote broke the protocol: {why}"))
                return
            why = problem(message)
            if why is None:
                self._handle(message)
            elif self._started.is_set():
                self._dropped(why)
            else:
                self._break(ClusterError(f"{self.name}: the remote sent a bad message: {why}"))
                return

    def _out_of_order(self, message: FromRemote) -> str | None:
        if isinstance(message, RemoteReady):
            if self._ready.is_set():
                return "it said remoteReady twice"
            if message.protocol != PROTOCOL:
                runs = f"startable {message.version}" if message.version else "an older startable"
                return (
                    f"{self.python} runs {runs} (control protocol {message.protocol}), this "
                    f"manager startable {__version__} (protocol {PROTOCOL}); install the "
                    "same startable for both"
                )
        elif not self._ready.is_set():
            return f"it sent {type(message).__name__} before remoteReady"
        return None

    def _dropped(self, why: str) -> None:
        self.messages_dropped += 1
        count = self.messages_dropped
        if now_and_then(count):
            logger.warning(
                "%s: dropped a message from the remote (%d so far): %s", self.name, count, why
            )

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
            error = RemoteError(message.error.bounded(), message.where[:200])
            if len(self.errors) == ERRORS_KEPT:
                self.errors_dropped += 1
            self.errors.append(error)
            if message.where == "raw stop":
                self._stop_error = error
            elif message.where.startswith("thread "):
                self._thread_failed(error)
        elif isinstance(message, Resources):
            self.resources.append(message)
        elif isinstance(message, Pong):
            waiting = self._pings.pop(message.payload, None)
            if waiting is not None:
                waiting.set()

    def _thread_failed(self, error: RemoteError) -> None:
        """A thread of the service ended with `error`: log it, and stop if the options say so."""
        self.thread_errors += 1
        count = self.thread_errors
        state = of(self).state
        stopping = self.options.on_thread_error == "stop" and state in (STARTING, STARTED)
        if stopping or now_and_then(count):
            what = "stopping it" if stopping else f"it runs on ({count} so far)"
            logger.warning("%s: an error ended a thread: %s; %s", self.name, error, what)
        if stopping and state is STARTED:
            of(self).stop_nowait(error)
        elif stopping and self._thread_error is None:  # its start fails with it
            self._thread_error = error

    def retire(self) -> None:
        """Keep only what is worth keeping of an incarnation that has ended.

        Its last `RETIRED_LINES` lines of output and `RETIRED_ERRORS`
        errors stay; its resource samples go. A container calls it when the
        next incarnation starts, so that what it keeps of past ones is small.
        """
        for kept, limit in ((self.output, RETIRED_LINES), (self.errors, RETIRED_ERRORS)):
            while len(kept) > limit:
                kept.popleft()
        self.resources.clear()

    # -- calls ----------------------------------------------------------------

    @assert_state()
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

    async def give_role(self) -> None:
        """Tell the remote that its process holds its pool's singleton role.

        Nothing is sent once the remote is gone (the role then goes to another).
        """
        port = self._port
        if port is not None and of(port).state is STARTED:
            with contextlib.suppress(ClusterError, StateError):  # (it ended meanwhile)
                await port.send(Role())

    def _release_pings(self) -> None:
        """Wake every ping still waiting: the remote will not answer any more."""
        for event in self._pings.values():
            event.set()
