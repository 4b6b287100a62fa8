"""The zygote: a fork server for one pool (`preload = true`), so that a replica costs a fork.

A cold replica is a new interpreter: it imports Python's startup, trio,
anyio, msgspec, startable and then the service's code, every time. A
*zygote* is one process per pool that does all of that once: it applies
the service's permissions (Landlock, seccomp, rlimits, capabilities: so
that every replica inherits them), imports the entry's module, and then
waits. Each replica is a fork of it, which goes on as a remote started the
ordinary way would: it says it is ready on its control port, is told to
run the entry, and runs it (the module is imported already).

The manager (`Zygote`) and the zygote (`serve`) speak over a
`SOCK_SEQPACKET` socket pair, one msgpack message per packet, with
descriptors passed alongside (`SCM_RIGHTS`): a fork request carries the new
replica's control and data sockets, its stdout and stderr pipes, and its
listening sockets; the answer carries a pidfd of the new process. The
zygote is its replicas' parent, so it reaps them: when one exits, it kills
what is left in the replica's process group (while the pid is still the
replica's) and reports the exit code. The manager watches a replica through
its pidfd, signals it through the pidfd, and holds it in a cgroup of its
own where one can be made, as it does a process it spawned (`ForkedProcess`).

The zygote forks from one thread, before any other exists; it starts no
event loop. Code that the entry's module runs on import is code of the
zygote: a module that starts a thread or opens a connection on import is
not fit for preloading (the fork copies neither).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import selectors
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn, TypeAlias

import anyio
import msgspec

from ... import State
from .._errors import ClusterError, RemoteError
from .._ipc.messages import ErrorInfo, PermissionSpec
from .._names import entry_file
from .descendants import Cgroup
from .remote import ENV_PARENT, ENV_PRELOADED
from .spawn import ProcessBase, read_lines, spawn

#: The variable that gives the zygote its socket to the manager.
ENV_ZYGOTE = "STARTABLE_ZYGOTE"
#: The largest message either side sends (fork requests carry an environment).
MAX_PACKET = 1 << 20
#: Descriptors one fork request may carry: 4 of its own, and the listeners.
MAX_FDS = 4 + 64

STARTED = State.STARTED


class ZygoteMessage(msgspec.Struct, frozen=True, tag_field="t", forbid_unknown_fields=True):
    """Base of what the manager and a zygote tell each other."""


class Preload(ZygoteMessage, tag="preload", frozen=True):
    entry: str
    code: str | None = None
    permissions: PermissionSpec | None = None
    resources_interval: float = 0.0


class Preloaded(ZygoteMessage, tag="preloaded", frozen=True):
    """The zygote is ready to fork: it applied these mechanisms, and imported the entry."""

    pid: int
    mechanisms: tuple[str, ...] = ()


class Failed(ZygoteMessage, tag="failed", frozen=True):
    error: ErrorInfo


class Fork(ZygoteMessage, tag="fork", frozen=True):
    """Fork a replica. Descriptors come with the packet: `fds` names the
    environment variable each one is given in (in order); stdout and stderr
    are the last two. `seq` numbers the request (its answer says it)."""

    seq: int
    env: dict[str, str]
    fds: tuple[str, ...]


class Forked(ZygoteMessage, tag="forked", frozen=True):
    """The replica of request `seq` was forked (its pidfd comes with the packet)."""

    seq: int


class Exited(ZygoteMessage, tag="exited", frozen=True):
    pid: int
    code: int


AnyZygoteMessage: TypeAlias = Preload | Preloaded | Failed | Fork | Forked | Exited
_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[AnyZygoteMessage] = msgspec.msgpack.Decoder(AnyZygoteMessage)


# -- the manager's side -------------------------------------------------------------


class ForkedProcess(ProcessBase):
    """A replica forked by a zygote: watched and signalled through its pidfd.

    Its zygote reaps it and reports its exit code; if the zygote is gone
    before it says, the code is -9 (as if killed).
    """

    def __init__(
        self, zygote: Zygote, pid: int, pidfd: int, stdout: int, stderr: int, cgroup: Cgroup | None
    ) -> None:
        super().__init__(pid, pidfd, stdout, stderr, cgroup)
        self.zygote = zygote

    def _alive(self) -> bool:
        # Its zygote reaps it: once its pidfd says it exited, the pid may be another's.
        return self.returncode is None and not select.select([self.pidfd], [], [], 0)[0]

    async def _reap(self) -> int:
        # (Its zygote ends what it left in its group, before it reaps it.)
        with anyio.move_on_after(2):
            return await self.zygote.exit_code(self.pid)
        return -signal.SIGKILL


class Zygote:
    """The manager's handle on the fork server of one pool.

    Args:
        entry, code, permissions: the service's, as a controller would send them.
        env: the environment of the zygote (and so of every replica, under
            what each fork request adds).
        cwd: its working directory.
        name: for its process's label and for errors.
        python: the interpreter to run.
    """

    def __init__(
        self,
        entry: str,
        *,
        code: str | None,
        permissions: PermissionSpec | None,
        env: Mapping[str, str],
        cwd: str | None,
        name: str,
        python: str | None = None,
        resources_interval: float = 0.0,
        inherit_env: bool = True,
    ) -> None:
        self.entry = entry
        self.code = code
        self.permissions = permissions
        self.env = dict(env)
        self.cwd = cwd
        self.name = name
        self.python = python or sys.executable
        self.resources_interval = resources_interval
        self.inherit_env = inherit_env
        self.pid: int | None = None
        #: The permission mechanisms it applied (what each replica reports).
        self.mechanisms: tuple[str, ...] = ()
        self._process: ProcessBase | None = None
        self._sock: socket.socket | None = None
        self._exits: dict[int, int] = {}
        self._exited: dict[int, anyio.Event] = {}
        self._seq = 0
        # Fork requests waiting for their answer: seq -> (set on it, the pid and pidfd).
        self._asked: dict[int, tuple[anyio.Event, list[tuple[int, int]]]] = {}
        #: Set once its process has ended (it forks no more).
        self.ended = anyio.Event()
        #: Called once, when it ends on its own (it forks no more).
        self.on_end: Callable[[], object] | None = None
        self._drained: list[anyio.Event] = []

    async def start(self, start_soon: Callable[..., object]) -> None:
        """Start the zygote; return once it has preloaded. Its readers run in tasks
        that `start_soon` starts (its owner's: a pool's node).

        Raises:
            RemoteError: it could not apply the permissions or import the entry.
            ClusterError: it ended before it said so.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        environ: Mapping[str, str] = os.environ if self.inherit_env else {}
        env = {**environ, **self.env, "PYTHONUNBUFFERED": "1", ENV_ZYGOTE: str(theirs.fileno())}
        try:
            self._process = await spawn(
                [self.python, "-m", "startable.cluster._zygote"],
                pass_fds=[theirs.fileno()],
                env=env,
                cwd=self.cwd,
                label=f"{self.name}-zygote",
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        start_soon(self._drain_output, self._process.stdout)
        start_soon(self._drain_output, self._process.stderr)
        try:
            await self._send(
                Preload(self.entry, self.code, self.permissions, self.resources_interval)
            )
            answer, _ = await self._receive()
        except anyio.ClosedResourceError:
            raise ClusterError(f"{self.name}: the zygote was closed while it preloaded") from None
        if isinstance(answer, Failed):
            raise RemoteError(answer.error, "preloading the entry")
        if not isinstance(answer, Preloaded):
            raise ClusterError(f"{self.name}: the zygote answered {answer!r}")
        self.pid, self.mechanisms = answer.pid, answer.mechanisms
        start_soon(self._read)

    async def _drain_output(self, fd: int) -> None:
        """Its own output goes to ours (a preload that prints is a bug worth seeing)."""
        done = anyio.Event()
        self._drained.append(done)
        try:
            async for line in read_lines(fd):
                print(f"{self.name} zygote: {line}", file=sys.stderr, flush=True)
        except (OSError, anyio.ClosedResourceError):
            pass  # closed under it (it did not end within the bound)
        finally:
            done.set()

    async def fork(
        self, env: Mapping[str, str], fds: Sequence[tuple[str, int]], label: str
    ) -> ForkedProcess:
        """Fork a replica with `env` added, each of `fds` given in its variable
        (several in one variable are joined with commas). The descriptors are
        the replica's; the caller closes its own copies.

        Raises:
            ClusterError: the zygote is gone, or did not answer within 30 s.
        """
        if self._sock is None or self.ended.is_set():
            raise ClusterError(f"{self.name}: its zygote has ended: no replica can be forked")
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        cgroup = Cgroup.make(label)
        try:
            names = tuple(name for name, _ in fds)
            pid, pidfd = await self._ask(env, names, [*(fd for _, fd in fds), out_write, err_write])
        except BaseException:
            for fd in (out_read, err_read):
                os.close(fd)
            if cgroup is not None:
                cgroup.remove()
            raise
        finally:
            os.close(out_write)
            os.close(err_write)
        # Until its pidfd says it exited, the zygote has not reaped it: the pid is
        # still its own (not another process's) when it joins the cgroup.
        alive = not select.select([pidfd], [], [], 0)[0]
        tracked = cgroup if cgroup is not None and alive and cgroup.add(pid) else None
        if cgroup is not None and tracked is None:
            cgroup.remove()
        for fd in (out_read, err_read):
            os.set_blocking(fd, False)
        return ForkedProcess(self, pid, pidfd, out_read, err_read, tracked)

    async def _ask(
        self, env: Mapping[str, str], names: tuple[str, ...], fds: Sequence[int]
    ) -> tuple[int, int]:
        """Send one fork request; the new process's pid and pidfd.

        A request given up (cancelled, timed out) is answered all the same,
        later: the process forked for it is killed then (see `_read`).
        """
        self._seq += 1
        seq = self._seq
        answered, answer = self._asked[seq] = anyio.Event(), []
        try:
            await self._send(Fork(seq, dict(env), names), fds)
            with anyio.fail_after(30):
                await answered.wait()
        except BaseException as exc:
            for pid, pidfd in answer:  # answered, but given up: no one will watch it
                _kill(pidfd)
                self._exited.pop(pid, None)  # (its exit report is dropped)
            if isinstance(exc, anyio.ClosedResourceError):
                raise ClusterError(f"{self.name}: its zygote ended while forking") from None
            raise
        finally:
            del self._asked[seq]
        if not answer:
            raise ClusterError(f"{self.name}: its zygote ended while forking")
        return answer[0]

    async def exit_code(self, pid: int) -> int:
        """The exit code of the replica `pid`, once the zygote has reaped it."""
        event = self._exited.setdefault(pid, anyio.Event())
        try:
            await event.wait()
            return self._exits.get(pid, -signal.SIGKILL)
        finally:  # (given up: a later report of it is dropped)
            self._exited.pop(pid, None)
            self._exits.pop(pid, None)

    async def _read(self) -> None:
        try:
            while True:
                message, fds = await self._receive()
                if isinstance(message, Forked) and len(fds) == 1:
                    # The pid is the pidfd's, not what the zygote says: code of
                    # the service's runs in it, and could name another process.
                    pid = _pid_of(fds[0])
                    asked = self._asked.get(message.seq)
                    if pid is None or asked is None or asked[0].is_set():
                        _kill(fds[0])  # a request given up (or no answer to one)
                        continue
                    self._exited.setdefault(pid, anyio.Event())  # (it may end at once)
                    asked[1].append((pid, fds[0]))
                    asked[0].set()
                elif isinstance(message, Exited) and message.pid in self._exited:
                    # Only a replica it forked; a code a process can exit with.
                    code = message.code if -256 < message.code < 256 else -signal.SIGKILL
                    self._exits[message.pid] = code
                    self._exited[message.pid].set()
                else:
                    for fd in fds:
                        os.close(fd)
        except (ClusterError, OSError, anyio.ClosedResourceError):
            pass  # (closed: by aclose)
        finally:
            self.ended.set()
            for answered, _ in self._asked.values():
                answered.set()
            for event in self._exited.values():
                event.set()
            if self._sock is not None and self.on_end is not None:  # (not by aclose)
                self.on_end()

    async def _send(self, message: ZygoteMessage, fds: Sequence[int] = ()) -> None:
        sock = self._sock
        if sock is None:
            raise ClusterError(f"{self.name}: the zygote was closed")
        data = _encoder.encode(message)
        while True:
            try:
                socket.send_fds(sock, [data], list(fds))
                return
            except BlockingIOError:
                await anyio.wait_writable(sock)

    async def _receive(self) -> tuple[AnyZygoteMessage, list[int]]:
        sock = self._sock
        if sock is None:
            raise ClusterError(f"{self.name}: the zygote was closed")
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(sock, MAX_PACKET, 1)
            except BlockingIOError:
                await anyio.wait_readable(sock)
                continue
            if not data:
                for fd in fds:
                    os.close(fd)
                raise ClusterError(f"{self.name}: the zygote ended")
            try:
                return _decoder.decode(data), fds
            except msgspec.DecodeError as exc:
                for fd in fds:
                    os.close(fd)
                raise ClusterError(f"{self.name}: the zygote sent garbage: {exc}") from None

    async def aclose(self) -> None:
        """End the zygote (its replicas are stopped first, by their controllers)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            anyio.notify_closing(sock)  # (its reader, and a fork waiting to send, end)
            sock.close()  # it sees the end of its socket, and exits
        process, self._process = self._process, None
        if process is not None:
            with anyio.move_on_after(5, shield=True):
                await process.wait()
            process.signal(signal.SIGKILL)
            with anyio.move_on_after(2, shield=True):
                await process.wait()
                for done in self._drained:  # its output, to the end
                    await done.wait()
            await process.aclose()


def _kill(pidfd: int) -> None:
    """Kill the process of `pidfd` (its zygote reaps it) and close the pidfd."""
    with contextlib.suppress(OSError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    os.close(pidfd)


def _pid_of(pidfd: int) -> int | None:
    """The pid a pidfd refers to (None: not a pidfd of a live process)."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as info:
            for line in info:
                if line.startswith("Pid:"):
                    pid = int(line.split()[1])
                    return pid if pid > 0 else None
    except (OSError, ValueError):
        pass
    return None


# -- the zygote's side --------------------------------------------------------------


def serve() -> NoReturn:
    """The zygote's main: preload, then fork replicas on request until the manager leaves."""
    from . import remote

    remote.die_with_parent()
    sock = socket.socket(fileno=int(os.environ.pop(ENV_ZYGOTE)))
    sock.setblocking(True)
    try:
        mechanisms = _preload(sock)
    except Exception as exc:
        sock.send(_encoder.encode(Failed(ErrorInfo.of(exc).bounded())))
        os._exit(remote.EXIT_ENTRY)
    from .._sandbox.audit import allow_forks_here

    allow_forks_here()  # its forks only: a replica is refused as the service is
    sock.send(_encoder.encode(Preloaded(os.getpid(), mechanisms)))
    _fork_on_request(sock, mechanisms)


def _preload(sock: socket.socket) -> tuple[str, ...]:
    """Take the manager's preload: apply the permissions, import the entry's module."""
    from . import remote

    data, _, _, _ = socket.recv_fds(sock, MAX_PACKET, 0)
    preload = _decoder.decode(data)
    if not isinstance(preload, Preload):
        raise ClusterError(f"the manager's first message was {preload!r}, not preload")
    mechanisms = remote.prepare(
        preload.entry, preload.code, preload.permissions, preload.resources_interval, forks=True
    )
    _import_entry(preload)
    return mechanisms


def _import_entry(preload: Preload) -> None:
    """Import the entry's module now (a file entry or `code` is run in each replica)."""
    if preload.code is None and entry_file(preload.entry) is None:
        importlib.import_module(preload.entry.rpartition(":")[0])


def _fork_on_request(sock: socket.socket, mechanisms: tuple[str, ...]) -> NoReturn:
    children: dict[int, int] = {}  # pidfd -> pid
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is sock:
                try:
                    data, fds, _, _ = socket.recv_fds(sock, MAX_PACKET, MAX_FDS)
                except OSError:
                    data, fds = b"", []
                if not data:  # the manager is gone, or done with us
                    _end(children)
                request = _decoded(data)
                if not isinstance(request, Fork) or len(fds) != len(request.fds) + 2:
                    for fd in fds:
                        os.close(fd)
                    continue  # not a fork request it can act on: dropped
                pid = _fork(sock, selector, request, fds, mechanisms, children)
                pidfd = os.pidfd_open(pid)
                children[pidfd] = pid
                selector.register(pidfd, selectors.EVENT_READ)
                ours = os.dup(pidfd)
                try:
                    socket.send_fds(sock, [_encoder.encode(Forked(request.seq))], [ours])
                finally:
                    os.close(ours)
            else:  # a replica has exited: end what is left in its group, then reap it
                pidfd = key.fd
                pid = children.pop(pidfd)
                selector.unregister(pidfd)
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                os.close(pidfd)
                with contextlib.suppress(OSError):
                    sock.send(_encoder.encode(Exited(pid, os.waitstatus_to_exitcode(status))))


def _decoded(data: bytes) -> AnyZygoteMessage | None:
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError:
        return None


def _fork(
    sock: socket.socket,
    selector: selectors.BaseSelector,
    request: Fork,
    fds: list[int],
    mechanisms: tuple[str, ...],
    children: Mapping[int, int],
) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()  # (read after the fork, it could be a reaper's: the zygote may be gone)
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        return pid
    # The replica: the zygote's sockets are not its own.
    try:
        selector.close()
        sock.close()
        for pidfd in children:  # its siblings' are not its business
            os.close(pidfd)
        *given, stdout, stderr = fds
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        os.close(stdout)
        os.close(stderr)
        os.setsid()  # a group of its own, as a spawned remote leads one
        os.environ.update(request.env)
        values: dict[str, list[str]] = {}
        for name, fd in zip(request.fds, given, strict=True):
            values.setdefault(name, []).append(str(fd))
        os.environ.update((name, ",".join(fds)) for name, fds in values.items())
        os.environ[ENV_PRELOADED] = json.dumps(list(mechanisms))
        os.environ[ENV_PARENT] = str(parent)
        from . import remote

        remote.main()
    except SystemExit as exit:  # as the interpreter exits for it
        if exit.code is None or isinstance(exit.code, int):
            os._exit(exit.code or 0)
        print(exit.code, file=sys.stderr, flush=True)
        os._exit(1)
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _end(children: Mapping[int, int]) -> NoReturn:
    """The manager is gone: no replica outlives the pool."""
    for pid in children.values():
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    for pid in children.values():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    os._exit(0)
