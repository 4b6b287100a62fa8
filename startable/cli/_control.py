"""The control socket of a running `startable up`, and the commands that use it.

`startable up` serves a `ControlServer` on a Unix socket (mode 0600, in a
directory of mode 0700 that belongs to the user: only that user reaches it;
each connection's peer is checked too, with SO_PEERCRED where there is
one). The commands (`startable status`, `logs`, `start`, `stop`, `restart`,
`down`) find it from the cluster file, or take `--control PATH`.

Both ways the messages are the project's framed, typed ones (a
`ConnectionPort`, msgpack, never pickle): the client sends a `Command`, the
server answers with a `Status`, `Line`s, or a `Done`. A message that breaks
the schema is answered with a `Done` that says why, and the connection goes
on; a frame that breaks the framing ends that connection only. What a
command asks is checked before it is acted on (the command, each service's
name, the numbers).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import re
import signal
import socket
import stat
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Final

import anyio
import anyio.abc
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

import startable

from .. import StartableError, State, as_raw_start, as_raw_stop, of
from ..cluster import (
    MAX_REPLICAS,
    NAME_RULE,
    DependencyStopped,
    MessageError,
    OutputLine,
    PortError,
    Resources,
    ServiceNode,
    ServicesManager,
)
from ..cluster._ipc.port import ConnectionPort
from ._humanise import forced_signal, in_order
from ._table import RUNNING

#: Lines kept per service for `startable logs` (the oldest go first).
LOG_LINES: Final = 1000
#: Connections served at once; past that a new one is closed at once.
MAX_CONNECTIONS: Final = 32
#: The most lines one `logs` asks for.
MAX_LINES: Final = 100_000
logger = logging.getLogger("startable.cli")
COMMANDS: Final = ("status", "logs", "start", "stop", "restart", "down", "reload", "scale")


class ControlMessage(msgspec.Struct, frozen=True, tag_field="t", array_like=True):
    """Base of the control socket's messages."""


class Command(ControlMessage, tag="command", frozen=True):
    """What a client asks: `command` (one of `COMMANDS`) of `services` (all: empty)."""

    id: int
    command: str
    services: tuple[str, ...] = ()
    lines: int = 10
    follow: bool = False
    replicas: int = 0


class Row(msgspec.Struct, frozen=True):
    """One service (or replica, `replica` >= 0) as `startable status` shows it."""

    name: str
    state: str
    replica: int = -1
    pid: int | None = None
    replicas: int = 0
    live: int = 0
    cpu_percent: float | None = None
    memory: int | None = None
    restarts: int = 0
    uptime: float | None = None
    last_error: str = ""
    ended: str = ""
    #: With a health check: "starting", "healthy" or "unhealthy" (empty: none, or not running).
    health: str = ""


class Status(ControlMessage, tag="status", frozen=True):
    id: int
    cluster: str
    state: str
    pid: int
    rows: tuple[Row, ...] = ()


class Line(ControlMessage, tag="line", frozen=True):
    """One line of a service's output (`replica` -1: not a pool's)."""

    id: int
    service: str
    stream: str
    text: str
    time: float
    replica: int = -1


class Done(ControlMessage, tag="done", frozen=True):
    """The end of the answer to a command: `error` says why it failed (empty: it did not)."""

    id: int
    error: str = ""


AnyControl = Command | Status | Line | Done


def default_path(cluster: str, file: str) -> str:
    """Where the control socket of the cluster `cluster` run from `file` is.

    In `$XDG_RUNTIME_DIR/startable` when it is set (a directory only this
    user may use), else in `/tmp/startable-<uid>`; the name is the cluster's
    and a hash of the file's absolute path (two files may name one cluster).
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = (
        os.path.join(runtime, "startable")
        if runtime and os.path.isdir(runtime)
        else os.path.join("/tmp", f"startable-{os.getuid()}")
    )
    digest = hashlib.sha256(os.path.abspath(file).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", cluster[:40]).lstrip(".") or "cluster"
    return os.path.join(base, f"{name}-{digest}.sock")


class ControlError(StartableError):
    """The control socket cannot be used, or the command failed: it names why."""


class NotRunning(ControlError):
    """No `startable up` answers at that control socket."""


class ClusterGone(ControlError):
    """The cluster went away (it stopped) before it answered."""


def private_directory(directory: str, *, make: bool = True) -> None:
    """Make `directory` (mode 0700), or check that the existing one is ours and private
    (not a symbolic link, not another user's, not open to others)."""
    if make:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        raise NotRunning(f"{directory}: no startable up runs (no such directory)") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ControlError(f"{directory} is not a directory of this user's")
    if info.st_mode & 0o077:
        raise ControlError(
            f"{directory} may be used by other users (mode {stat.S_IMODE(info.st_mode):o}): "
            "make it 0700"
        )


def _peer_uid(sock: socket.socket) -> int | None:
    """The user id of the process at the other end (None where the system does not say)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    credentials = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", credentials)
    return int(uid)


class LogBuffer:
    """The last `LOG_LINES` lines of each service, and who follows them."""

    def __init__(self, lines: int = LOG_LINES) -> None:
        self.lines = lines
        self._kept: dict[str, deque[tuple[OutputLine, str]]] = {}
        self._followers: list[tuple[frozenset[str], MemoryObjectSendStream[Line]]] = []

    def add(self, service: str, line: OutputLine) -> None:
        kept = self._kept.get(service)
        if kept is None:
            kept = self._kept[service] = deque(maxlen=self.lines)
        kept.append((line, service))
        for services, stream in list(self._followers):
            if not services or service in services:
                with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                    stream.send_nowait(_line(0, service, line))  # a slow follower misses lines

    def recent(self, services: Sequence[str], count: int) -> list[Line]:
        """The last `count` lines of `services` (all: empty), oldest first."""
        if count <= 0:
            return []
        lines: list[tuple[float, Line]] = []
        for name in services or list(self._kept):
            for line, service in list(self._kept.get(name, ()))[-count:]:
                lines.append((line.time, _line(0, service, line)))
        lines.sort(key=lambda pair: pair[0])
        return [line for _, line in lines[-count:]]

    @contextlib.contextmanager
    def follow(self, services: Sequence[str]) -> Iterator[MemoryObjectReceiveStream[Line]]:
        """The lines written from now on by `services` (all: empty), while it is open;
        a follower that falls 1,000 lines behind misses the next ones."""
        send, receive = anyio.create_memory_object_stream[Line](1000)
        entry = (frozenset(services), send)
        self._followers.append(entry)
        try:
            yield receive
        finally:
            self._followers.remove(entry)
            send.close()


def _line(rid: int, service: str, line: OutputLine) -> Line:
    replica = -1 if line.replica is None else line.replica
    return Line(rid, service, line.stream, line.text, line.time, replica)


def rows(manager: ServicesManager, order: Sequence[str] = ()) -> tuple[Row, ...]:
    """What `startable status` shows of each service of `manager` (and each replica),
    in `order` (a cluster file's), then the others in the manager's order."""
    found: list[Row] = []
    for node in in_order(manager.nodes.values(), order):
        found.append(_row(node))
        for replica in node.replicas:
            lifecycle = of(replica)
            running = lifecycle.state in RUNNING
            cpu, memory = _sample(replica.container.resources if running else [])
            found.append(
                Row(
                    node.name,
                    lifecycle.state.name,
                    replica=replica.index,
                    pid=replica.pid if running else None,
                    cpu_percent=cpu,
                    memory=memory,
                    restarts=replica.restarts,
                    uptime=replica.uptime,
                    last_error=_error(replica.last_error),
                )
            )
    return tuple(found)


def _sample(samples: Sequence[Resources]) -> tuple[float | None, int | None]:
    """The CPU percentage and memory of the last of `samples`, if any."""
    return (samples[-1].cpu_percent, samples[-1].rss) if samples else (None, None)


def _row(node: ServiceNode) -> Row:
    lifecycle = of(node)
    running = lifecycle.state in RUNNING
    cpu, memory = _sample(node.resources if running else [])
    replicas = node.replicas
    ended = ""
    if lifecycle.state is State.STOPPED and lifecycle.statistics().cycle:
        reason = lifecycle.statistics().stop_reason
        # (stopped because what it needs was stopped on purpose: nothing failed)
        clean = reason is None or (isinstance(reason, DependencyStopped) and reason.reason is None)
        ended = forced_signal(node) or ("clean" if clean else "failed")
    return Row(
        node.name,
        lifecycle.state.name,
        pid=node.pid if running and not replicas else None,
        replicas=len(replicas),
        live=sum(of(replica).state is State.STARTED for replica in replicas),
        cpu_percent=cpu,
        memory=memory,
        restarts=node.restarts,
        uptime=node.uptime,
        last_error=_error(node.last_error),
        ended=ended,
        health=(node.health or "") if running else "",
    )


def _error(error: BaseException | None) -> str:
    if error is None:
        return ""
    lines = f"{type(error).__name__}: {error}".splitlines()
    text = lines[0] if lines else type(error).__name__  # (the first line says what it is)
    return text if len(text) <= 500 else text[:497] + "..."


class ControlServer:
    """The control socket of one running cluster (a lifecycle: started by `startable up`).

    Args:
        manager: the cluster.
        path: the socket's path (its directory is made, mode 0700).
        logs: the buffer `startable logs` reads.
        down: what `startable down` does (by default: SIGTERM to this
            process, which `startable up` takes as it takes Ctrl-C).
        order: the services' names in the order `startable status` lists
            them (a cluster file's); the others follow, as the manager has them.
    """

    def __init__(
        self,
        manager: ServicesManager,
        path: str,
        logs: LogBuffer,
        down: Callable[[], object] | None = None,
        order: Sequence[str] = (),
    ) -> None:
        self.manager = manager
        self.order = tuple(order)
        self.path = path
        self.logs = logs
        self.down = down or (lambda: os.kill(os.getpid(), signal.SIGTERM))
        #: Messages refused since it started (malformed, or asking what cannot be).
        self.refused = 0
        self._connections = 0
        self._listener: anyio.abc.SocketListener | None = None
        self._lock: int | None = None

    def __repr__(self) -> str:
        return f"<ControlServer {self.path}: {of(self).state.name}>"

    @as_raw_start
    async def _start(self) -> None:
        private_directory(os.path.dirname(self.path))
        # One `up` per socket: it holds a lock for as long as it serves, so a
        # socket found without the lock held is stale (its `up` was killed).
        lock = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise ControlError(
                f"{self.path}: another startable up of this cluster file runs already"
            ) from None
        self._lock = lock
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by one that was killed
        listener = await anyio.create_unix_listener(self.path, mode=0o600)
        self._listener = listener
        of(self).start_soon(self._serve, listener)

    @as_raw_stop
    async def _stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:  # (only its own socket, with the lock still held)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # (the task that serves it closes it, cancelled)
        lock, self._lock = self._lock, None
        if lock is not None:
            os.close(lock)  # (the lock file stays: removing it would race a new `up`)

    async def _serve(self, listener: anyio.abc.SocketListener) -> None:
        async with listener, anyio.create_task_group() as group:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:  # out of file descriptors, say: the cluster goes on
                    logger.warning("the control socket could not accept a connection: %s", exc)
                    await anyio.sleep(0.5)
                    continue
                if self._connections >= MAX_CONNECTIONS:
                    await stream.aclose()
                    continue
                group.start_soon(self._connection, stream)

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        self._connections += 1
        try:
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            uid = _peer_uid(raw)
            if uid is not None and uid != os.getuid():
                await stream.aclose()
                return
            port: ConnectionPort[AnyControl] = ConnectionPort(
                stream, receives=AnyControl, name="control connection"
            )
            async with startable.running(port):
                await self._converse(port)
        except (PortError, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # that client went away, or broke the framing: it alone is closed
        except Exception:  # a fault of ours: that connection ends, the cluster goes on
            logger.exception("the control socket failed a connection")
        finally:
            self._connections -= 1
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def _converse(self, port: ConnectionPort[AnyControl]) -> None:
        while True:
            try:
                message = await port.receive()
            except MessageError as exc:
                self.refused += 1
                await port.send(Done(0, f"a malformed message was refused: {exc}"))
                continue
            if not isinstance(message, Command):
                self.refused += 1
                await port.send(Done(0, "only commands come to the control socket"))
                continue
            message = msgspec.structs.replace(
                message, services=tuple(dict.fromkeys(message.services))
            )
            why = self._problem(message)
            if why is not None:
                self.refused += 1
                await port.send(Done(message.id, why))
                continue
            await self._do(port, message)

    def _problem(self, command: Command) -> str | None:
        if command.command not in COMMANDS:
            return f"there is no command {command.command[:40]!r} (one of {', '.join(COMMANDS)})"
        if not 0 < command.id < 1 << 63:
            return "a command's id is a positive 63-bit integer"
        if not 0 <= command.lines <= MAX_LINES:
            return f"lines is from 0 to {MAX_LINES}, not {command.lines}"
        if len(command.services) > 10_000:
            return "too many services"
        for name in command.services:
            if not NAME_RULE.fullmatch(name):
                return f"{name[:70]!r} is not a service name"
            if name not in self.manager.nodes:
                return f"there is no service named {name!r} in {self.manager.name}"
        if command.command in ("start", "stop", "restart") and not command.services:
            return f"{command.command} names the services it is about"
        if command.command == "scale":
            if len(command.services) != 1:
                return "scale names one pool"
            if not 1 <= command.replicas <= MAX_REPLICAS:
                return f"a pool has 1 to {MAX_REPLICAS} replicas, not {command.replicas}"
        pools = self.manager.pools()
        if command.command in ("reload", "scale"):
            for name in command.services:
                if name not in pools:
                    return f"{name!r} is not a pool (pools: {', '.join(pools) or 'none'})"
        return None

    async def _do(self, port: ConnectionPort[AnyControl], command: Command) -> None:
        rid, manager = command.id, self.manager
        if command.command == "status":
            state = of(manager).state.name
            await port.send(
                Status(rid, manager.name, state, os.getpid(), rows(manager, self.order))
            )
            await port.send(Done(rid))
            return
        if command.command == "logs":
            await self._logs(port, command)
            return
        if command.command == "down":
            self.down()
            await port.send(Done(rid))
            return
        if of(manager).state is not State.STARTED:
            await port.send(Done(rid, f"{manager.name} is {of(manager).state.name}, not STARTED"))
            return
        try:
            if command.command == "scale":
                await manager.scale(command.services[0], command.replicas)
            names = command.services
            if command.command == "reload" and not names:  # every pool
                names = tuple(manager.pools())
            for name in names if command.command != "scale" else ():
                if command.command == "reload":
                    await manager.reload(name)
                if command.command in ("stop", "restart"):
                    await manager.stop_service(name)
                if command.command in ("start", "restart"):
                    await manager.start_service(name)
        except Exception as exc:
            await port.send(Done(rid, f"{type(exc).__name__}: {exc}"))
            return
        await port.send(Done(rid))

    async def _logs(self, port: ConnectionPort[AnyControl], command: Command) -> None:
        rid = command.id
        with self.logs.follow(command.services) as following:
            for line in self.logs.recent(command.services, command.lines):
                await port.send(msgspec.structs.replace(line, id=rid))
            if command.follow:
                async with anyio.create_task_group() as group:

                    async def until_hung_up() -> None:  # (a follower sends nothing more)
                        with contextlib.suppress(Exception):
                            while True:
                                await port.receive()
                        group.cancel_scope.cancel()

                    group.start_soon(until_hung_up)
                    async for line in following:  # until the client goes, or the cluster stops
                        await port.send(msgspec.structs.replace(line, id=rid))
                return
        await port.send(Done(rid))


# -- the client side -------------------------------------------------------------


@contextlib.asynccontextmanager
async def connect(path: str) -> AsyncIterator[ConnectionPort[AnyControl]]:
    """A port to the control socket at `path`.

    Raises:
        ControlError: nothing answers there (no `startable up` of that file runs).
    """
    try:
        private_directory(os.path.dirname(path), make=False)
        with anyio.fail_after(5):
            stream = await anyio.connect_unix(path)
    except (FileNotFoundError, ConnectionRefusedError):  # (refused: a stale socket)
        raise NotRunning(f"{path}: no startable up of this cluster runs") from None
    except (OSError, TimeoutError) as exc:
        raise ControlError(f"{path}: cannot reach the control socket: {exc}") from None
    port: ConnectionPort[AnyControl] = ConnectionPort(stream, receives=AnyControl, name="control")
    async with startable.running(port):
        yield port


_ids = itertools.count(1)


async def request(
    path: str,
    command: Command,
    take: Callable[[Status | Line], object],
    *,
    deadline: float | None = 60.0,
) -> None:
    """Send `command` to the control socket at `path`; hand each message of the
    answer to `take` until its `Done`.

    Raises:
        ControlError: nothing answers there; the command failed (its error);
            no answer within `deadline` seconds (None: no bound, for `logs -f`);
            the cluster stopped before it answered.
    """
    try:
        with anyio.fail_after(deadline) if deadline is not None else contextlib.nullcontext():
            async with connect(path) as port:
                await port.send(command)
                while True:
                    message = await port.receive()
                    if isinstance(message, Done):
                        if message.error:
                            raise ControlError(message.error)
                        return
                    if isinstance(message, Status | Line) and message.id == command.id:
                        take(message)
    except TimeoutError:
        raise ControlError(f"{path}: no answer within {deadline:g}s") from None
    except (PortError, OSError) as exc:
        raise ClusterGone(f"the cluster went away before it answered: {exc}") from None


def command(
    name: str,
    services: Sequence[str] = (),
    *,
    lines: int = 10,
    follow: bool = False,
    replicas: int = 0,
) -> Command:
    return Command(next(_ids), name, tuple(services), lines, follow, replicas)
