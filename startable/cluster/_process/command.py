"""`CommandProcess`: one run of a program that is not a Python lifecycle.

A `command` service (`redis-server`, `nginx`, a shell script) runs as a
child of the manager like a container's process does: in a session and a
cgroup of its own, dying with the manager, its output captured line by line.
It has no control port, so the lifecycle is read from the outside: it is
STARTED once its readiness rule (`Readiness`) holds, it stops on its own
when it exits (a failure unless it exits 0), and its stop is a signal
(SIGTERM unless the spec names another), then SIGKILL after the deadline.
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import struct
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import anyio
import attrs

from ... import State, as_raw_start, as_raw_stop, of
from .._errors import ClusterError, ForcedStop, RemoteExited
from .._ipc.messages import Resources
from .._names import NAME_RULE, now_and_then, number
from .controller import AFTER_SIGKILL, OutputLine, StopStep
from .descendants import tree
from .options import ProcessOptions
from .probes import inherited_env, tcp_problem
from .spawn import ProcessBase, program_args, read_lines, spawn

logger = logging.getLogger("startable.cluster")
STARTING, STARTED = State.STARTING, State.STARTED
#: The environment variable that names the sd_notify socket (systemd's name).
ENV_NOTIFY = "NOTIFY_SOCKET"
#: The largest sd_notify datagram taken; a longer one is dropped.
MAX_NOTIFY = 4096
#: The longest `STATUS=` text kept.
MAX_STATUS = 200
#: How much of a line the `line` readiness rule is matched against (the
#: matching runs in the event loop: a program cannot make it long).
MAX_MATCHED = 4096
#: Signals that cannot end a program by default: refused as a stop signal.
NOT_ENDING = frozenset(
    {
        signal.SIGSTOP,
        signal.SIGTSTP,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGCONT,
        signal.SIGCHLD,
        signal.SIGWINCH,
        signal.SIGURG,
    }
)
_NOTIFY_KEY = re.compile(r"[A-Z][A-Z0-9_]*")
_UCRED = struct.Struct("3i")  # pid, uid, gid
_PORT_POLL = 0.05  # seconds between tries of a readiness port


def _port(instance: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    number(at_least=1, integer=True)(instance, attribute, value)
    if value is not None and value > 65535:
        raise ValueError(f"{type(instance).__name__}.{attribute.name}: {value} is not a TCP port")


def _pattern(instance: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value:
        raise TypeError(f"Readiness.line is a regular expression, not {value!r}")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"Readiness.line {value!r} is not a regular expression: {exc}") from None


@attrs.frozen(kw_only=True)
class Readiness:
    """When a `command` service counts as STARTED. Give at most one of `port`,
    `line` and `notify`; with none, as soon as its program runs.

    Each rule is waited for within the service's `ready_timeout`; if the
    program exits first, its start fails with its exit code.

    Attributes:
        port: a TCP port that accepts a connection once it is ready (tried
            every 50 ms on `host`).
        host: where `port` is tried.
        line: a regular expression; ready at the first line on its stdout
            that it matches (`re.search`).
        notify: the sd_notify protocol: the program (or a process it starts)
            sends `READY=1` to the datagram socket named by `$NOTIFY_SOCKET`,
            as it would to systemd for `Type=notify`. `STATUS=` texts are
            kept; datagrams from other processes are dropped.
    """

    port: int | None = attrs.field(default=None, validator=_port)
    host: str = attrs.field(default="127.0.0.1", validator=attrs.validators.min_len(1))
    line: str | None = attrs.field(default=None, validator=_pattern)
    notify: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    def __attrs_post_init__(self) -> None:
        given = [name for name in ("port", "line") if getattr(self, name) is not None]
        if self.notify:
            given.append("notify")
        if len(given) > 1:
            raise ValueError(f"a readiness rule is one of port, line or notify, not {given}")

    @property
    def kind(self) -> Literal["running", "port", "line", "notify"]:
        """Which rule it is."""
        if self.port is not None:
            return "port"
        if self.line is not None:
            return "line"
        return "notify" if self.notify else "running"

    def describe(self) -> str:
        """The rule, in words."""
        kind = self.kind
        if kind == "port":
            return f"{self.host}:{self.port} accepting"
        if kind == "line":
            return f"a line on stdout matching {self.line!r}"
        return "READY=1 on $NOTIFY_SOCKET" if kind == "notify" else "its program running"


class CommandProcess:
    """One run of the program `args`, from its start to its exit (a lifecycle).

    Its raw start spawns the program and returns once `ready` holds (or raises
    `RemoteExited` if it exits first, `ClusterError` if it is not ready within
    `options.ready_timeout`). Once STARTED, it stops on its own when the
    program exits: cleanly if it exits 0, else with a `RemoteExited` reason.
    Its raw stop sends `stop_signal` to the program's process group, then
    SIGKILL after `options.term_timeout` (its stop raises `ForcedStop` then).

    Args:
        args: the program and its arguments; a program with no `/` is looked
            up on the `$PATH` of its environment, a relative path from `cwd`.
        env: its environment variables (on this process's own unless
            `options.inherit_env` is false).
        cwd: its working directory.
        name: used in `repr()`, logs and errors.
        ready: its readiness rule.
        options: timeouts, how much output and how many resource samples are
            kept (`close_timeout`, `python` and `on_thread_error` do not apply).
        stop_signal: the signal that asks it to stop.
        memory: a limit on its address space, in bytes (set before it runs).
        cpu_time: a limit on its CPU time, in seconds.
        open_files: a limit on its open file descriptors.
        on_output: called with each line it writes.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        name: str | None = None,
        ready: Readiness | None = None,
        options: ProcessOptions | None = None,
        stop_signal: int = signal.SIGTERM,
        memory: int | None = None,
        cpu_time: int | None = None,
        open_files: int | None = None,
        on_output: Callable[[OutputLine], object] | None = None,
    ) -> None:
        if isinstance(args, str) or not args or not all(isinstance(a, str) for a in args):
            raise ValueError(f"a command is a non-empty list of strings, not {args!r}")
        if not args[0]:
            raise ValueError("a command's program cannot be an empty string")
        self.args = tuple(args)
        self.env = dict(env or {})
        self.cwd = cwd
        self.name = name or os.path.basename(self.args[0])
        self.ready = ready or Readiness()
        self.options = options = ProcessOptions.of(options)
        self.stop_signal = signal.Signals(stop_signal)
        if self.stop_signal in NOT_ENDING:
            raise ValueError(f"{self.stop_signal.name} does not end a program: not a stop signal")
        self.limits = {"memory": memory, "cpu_time": cpu_time, "open_files": open_files}
        self.on_output = on_output
        self.output: deque[OutputLine] = deque(maxlen=options.output_lines)
        self.resources: deque[Resources] = deque(maxlen=options.resources_history)
        #: The rungs of the stop ladder that were used.
        self.ladder: list[StopStep] = []
        self.process: ProcessBase | None = None
        self.returncode: int | None = None
        #: The last `STATUS=` it sent over sd_notify (`notify` readiness only).
        self.status: str | None = None
        #: sd_notify datagrams dropped: from another process, too long, unreadable.
        self.messages_dropped = 0
        self._notify: _NotifySocket | None = None

    def __repr__(self) -> str:
        pid = f" pid {self.pid}" if self.pid is not None else ""
        return f"<CommandProcess {self.name}{pid}: {of(self).state.name}>"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def ended_by(self) -> Literal["close request", "SIGKILL"] | None:
        """How the stop ladder ended it, once it has ended: `"close request"`
        (it ended after its stop signal: cleanly) or `"SIGKILL"`; None if the
        ladder did not run (it ended on its own) or it has not ended."""
        if self.returncode is None or not self.ladder:
            return None
        return "SIGKILL" if len(self.ladder) > 1 else "close request"  # (it had to escalate)

    # -- lifecycle ----------------------------------------------------------

    @as_raw_start
    async def _start(self) -> None:
        self._ended, self._ready = anyio.Event(), anyio.Event()
        self._output_done = {"stdout": anyio.Event(), "stderr": anyio.Event()}
        env = inherited_env(self.env, self.options.inherit_env)
        if self.ready.notify:
            try:
                self._notify = _NotifySocket()
            except OSError as exc:  # a $TMPDIR too long for a socket's path, most likely
                raise ClusterError(f"{self.name}: cannot make its sd_notify socket: {exc}") from exc
            env[ENV_NOTIFY] = self._notify.path
        program = self.args[0]
        if os.sep not in program and shutil.which(program, path=env.get("PATH")) is None:
            raise ClusterError(f"{self.name}: cannot run {program!r}: it is not on $PATH")
        label = self.name if NAME_RULE.fullmatch(self.name) else "command"
        try:
            self.process = process = await spawn(
                program_args(self.args, **self.limits), env=env, cwd=self.cwd, label=label
            )
        except OSError as exc:  # its cwd, most likely: the program is checked by the shim
            raise ClusterError(f"{self.name}: cannot run {program!r}: {exc}") from exc
        lifecycle = of(self)
        lifecycle.start_soon(self._read_output, "stdout", process.stdout)
        lifecycle.start_soon(self._read_output, "stderr", process.stderr)
        lifecycle.start_soon(self._watch_exit, process)
        if self.options.resources_interval > 0:
            lifecycle.start_soon(self._sample, process.pid)
        if self._notify is not None:
            lifecycle.start_soon(self._receive_notices, self._notify, process)
        timeout = self.options.ready_timeout
        with anyio.move_on_after(timeout) as waiting:
            await self._until_ready()
        if waiting.cancelled_caught:
            raise ClusterError(
                f"{self.name}: not ready within {timeout:g}s (waiting for {self.ready.describe()})"
            )

    async def _until_ready(self) -> None:
        """Wait for the readiness rule; raise at once if the program exits first."""
        if self.ready.kind == "running":
            self._ready.set()
        elif self.ready.kind == "port":
            of(self).start_soon(self._try_port)
        async with anyio.create_task_group() as race:

            async def wait(event: anyio.Event) -> None:
                await event.wait()
                race.cancel_scope.cancel()

            race.start_soon(wait, self._ready)
            race.start_soon(wait, self._ended)
        if not self._ready.is_set():
            await self._last_words()  # (a ready line, or READY=1, may be read still)
            if not self._ready.is_set():
                raise self._failure("it exited before it was ready")

    async def _last_words(self) -> None:
        """Wait (1 s at most) for what the program wrote before it ended to be read."""
        with anyio.move_on_after(1):
            for done in self._output_done.values():
                await done.wait()

    async def _try_port(self) -> None:
        assert self.ready.port is not None
        while not (self._ready.is_set() or self._ended.is_set()):
            with anyio.move_on_after(1):
                if await tcp_problem(self.ready.host, self.ready.port) is None:
                    self._ready.set()
                    return
            await anyio.sleep(_PORT_POLL)

    def _failure(self, what: str) -> RemoteExited:
        code = self.returncode
        if code is None:
            ended = "still running"
        elif code < 0:
            ended = f"killed by {_signal_name(-code)}"
        else:
            ended = f"exit code {code}"
        said = ""
        for stream in ("stderr", "stdout"):  # where a program says why, most often
            last = [line.text.strip() for line in self.output if line.stream == stream]
            last = [text for text in last if text]
            if last:
                said = f"; its last line on {stream}: {last[-1][:200]}"
                break
        return RemoteExited(f"{self.name}: {what} ({ended}){said}", code or 0)

    @as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        process = self.process
        try:
            if process is not None and process.returncode is None:
                await self._ladder(process)
            if self.ended_by == "SIGKILL":
                raise ForcedStop(
                    self.name, "SIGKILL", self.options.term_timeout, before=self.stop_signal.name
                )
        finally:
            if process is not None:
                process.signal(signal.SIGKILL)  # anything it left behind in its group
                with anyio.CancelScope(shield=True):
                    await self._last_words()
                await process.aclose()
            notify, self._notify = self._notify, None
            if notify is not None:
                notify.close()

    async def _ladder(self, process: ProcessBase) -> None:
        for signum, timeout in (
            (self.stop_signal, self.options.term_timeout),
            (signal.SIGKILL, max(self.options.term_timeout, AFTER_SIGKILL)),
        ):
            self.ladder.append(StopStep(signal.Signals(signum).name, time.time()))
            process.signal(signum)
            with anyio.move_on_after(timeout):
                await process.exited()
                return
        raise ClusterError(f"{self.name}: pid {process.pid} survived SIGKILL")

    # -- background tasks -----------------------------------------------------

    async def _read_output(self, stream: Literal["stdout", "stderr"], fileno: int) -> None:
        pattern = re.compile(self.ready.line) if self.ready.line is not None else None
        try:
            async for text in read_lines(fileno):
                line = OutputLine(stream, text, time.time())
                self.output.append(line)
                if self.on_output is not None:
                    self.on_output(line)
                if (
                    pattern is not None
                    and stream == "stdout"
                    and pattern.search(text[:MAX_MATCHED])
                ):
                    self._ready.set()
                    pattern = None
        finally:
            self._output_done[stream].set()

    async def _watch_exit(self, process: ProcessBase) -> None:
        self.returncode = code = await process.wait()
        self._ended.set()
        lifecycle = of(self)
        # (While STARTING, the stop comes once the start is done: a program that
        # exits as soon as it is ready stops then.)
        if lifecycle.state in (STARTING, STARTED):
            if code == 0:
                lifecycle.stop_nowait()
            else:
                await self._last_words()
                if lifecycle.state in (STARTING, STARTED):
                    lifecycle.stop_nowait(self._failure("the program ended"))

    async def _sample(self, pid: int) -> None:
        import psutil

        try:
            process = psutil.Process(pid)
            process.cpu_percent(None)  # the first call only sets the reference point
            while True:
                await anyio.sleep(self.options.resources_interval)
                self.resources.append(Resources.of(process))
        except psutil.Error:  # it has ended (or is not ours to read): no more samples
            return

    async def _receive_notices(self, notify: _NotifySocket, process: ProcessBase) -> None:
        def ours(sender: int) -> bool:
            """The program, or a process it started (in its cgroup, or below it)."""
            if sender == process.pid:
                return True
            cgroup = process.cgroup
            return sender in tree(process.pid) or (
                cgroup is not None and sender in cgroup.members()
            )

        while True:
            await anyio.wait_readable(notify.socket)
            try:
                fields = notify.receive(ours)
            except BlockingIOError:
                continue
            except ValueError as exc:
                self._dropped(str(exc))
                continue
            if fields.get("READY") == "1":
                self._ready.set()
            status = fields.get("STATUS")
            if status is not None:
                self.status = status[:MAX_STATUS]

    def _dropped(self, why: str) -> None:
        self.messages_dropped += 1
        count = self.messages_dropped
        if now_and_then(count):
            logger.warning(
                "%s: dropped an sd_notify message (%d so far): %s", self.name, count, why
            )


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class _NotifySocket:
    """The datagram socket a program's sd_notify messages come to, in a private
    directory of its own; each message carries its sender's credentials."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="startable-notify-")  # mode 0700
        self.path = os.path.join(self.directory, "notify")
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.socket.bind(self.path)
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self.socket.setblocking(False)
        except BaseException:
            self.close()
            raise

    def receive(self, allowed: Callable[[int], bool]) -> dict[str, str]:
        """The fields of the next datagram (`KEY=VALUE` lines).

        Raises:
            BlockingIOError: none is waiting.
            ValueError: it was refused (too long, unreadable, or from a process
                `allowed` refuses); why, in words. Descriptors sent with it are closed.
        """
        space = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(64 * 4)
        data, ancillary, flags, _ = self.socket.recvmsg(MAX_NOTIFY + 1, space)
        sender: int | None = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                for fd in fds:  # (a store of descriptors is not kept here)
                    with contextlib.suppress(OSError):
                        os.close(fd)
            elif (
                level == socket.SOL_SOCKET
                and kind == socket.SCM_CREDENTIALS
                and len(payload) >= _UCRED.size
            ):
                sender = _UCRED.unpack_from(payload)[0]
        if len(data) > MAX_NOTIFY or flags & socket.MSG_TRUNC:
            raise ValueError(f"a datagram longer than {MAX_NOTIFY} bytes")
        if flags & socket.MSG_CTRUNC:
            raise ValueError("a datagram with more descriptors or credentials than taken")
        if sender is None or not allowed(sender):
            raise ValueError(f"a datagram from pid {sender}, not the program or what it started")
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise ValueError("a datagram that is not UTF-8") from None
        fields: dict[str, str] = {}
        for line in text.split("\n"):
            if not line:
                continue
            key, equals, value = line.partition("=")
            if not equals or not _NOTIFY_KEY.fullmatch(key):
                raise ValueError(f"a line that is not KEY=VALUE: {line[:40]!r}")
            fields[key] = value
        return fields

    def close(self) -> None:
        self.socket.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)
