"""Services of the data-plane tests: in child processes (`tests.plane_services:...`), and
in the test's process (tests/cluster/test_dataplane.py)."""

from __future__ import annotations

import os

import anyio
import anyio.abc

import startable
from startable.cluster import Event, handler, this_service

if (_slow := os.environ.get("STARTABLE_TEST_SLOW_IMPORT_IF", "")) and os.path.exists(_slow):
    import time

    time.sleep(2)  # a slow preload (in a pool's zygote)


class Store:
    """A key-value store; it also records the events published on "orders"."""

    def __init__(self) -> None:
        self.data: dict[str, object] = {}
        self.events: list[Event] = []
        self.two_events = anyio.Event()

    @startable.as_raw_start
    async def _start(self) -> None:
        self.client = this_service()
        subscribed = anyio.Event()
        startable.of(self).start_soon(self._listen, subscribed)
        await subscribed.wait()

    async def _listen(self, subscribed: anyio.Event) -> None:
        async with self.client.subscribe("orders") as events:
            subscribed.set()
            async for event in events:
                self.events.append(event)
                if len(self.events) == 2:
                    self.two_events.set()

    @handler
    async def get(self, key: str) -> object:
        return self.data.get(key)

    @handler
    async def role(self) -> bool:
        """Whether it holds the singleton role (a service that is no pool always does)."""
        return this_service().singleton

    @handler
    async def put(self, key: str, value: object) -> None:
        self.data[key] = value

    @handler
    async def fail(self) -> None:
        raise KeyError(f"no {os.environ.get('STARTABLE_SERVICE')} key")

    @handler
    async def slow(self) -> None:
        await self.client.emit("slow.entered", os.getpid())
        await anyio.sleep_forever()

    @handler
    def large(self, key: str) -> bytes:
        """A result of the size stored under `key`."""
        size = self.data[key]
        assert isinstance(size, int)
        return b"x" * size

    @handler
    def pid(self) -> int:
        return os.getpid()

    @handler
    async def seen(self) -> list[tuple[str, object]]:
        """The events on "orders", once two have come (bounded by the caller's deadline)."""
        await self.two_events.wait()
        return [(event.source, event.payload) for event in self.events]


class Api:
    """Calls the store; may create services of its own when its spec allows."""

    @startable.as_raw_start
    async def _start(self) -> None:
        self.client = this_service()

    @handler
    def pid(self) -> int:
        return os.getpid()

    @handler
    async def lookup(self, key: str) -> object:
        return await self.client.request("store", "get", key)

    @handler
    async def call(self, service: str, method: str, deadline: float = 10.0) -> object:
        return await self.client.request(service, method, deadline=deadline)

    @handler
    async def call_with(self, service: str, method: str, size: int) -> object:
        """Call with `size` bytes as the argument (too large ones are refused here)."""
        return await self.client.request(service, method, "k", b"x" * size)

    @handler
    async def order(self, payload: object) -> None:
        await self.client.emit("orders", payload)

    @handler
    async def spawn(self, name: str, depends_on: list[str] | None = None) -> None:
        await self.client.create(name, "tests.plane_services:Store", depends_on=depends_on or ())


class Replica:
    """A replica of a pool: says who it is, and serves the shared port.

    It stops gracefully: it stops accepting as its stop begins (an on_stopping
    hook), and its raw stop waits for the connections it accepted.
    """

    @startable.as_raw_start
    async def _start(self) -> None:
        from startable.cluster import listen_sockets

        flag = os.environ.get("STARTABLE_TEST_FAIL_IF", "")
        if flag and await anyio.Path(flag).exists():
            raise RuntimeError(f"{flag} exists")
        self._accepting = anyio.CancelScope()
        self._served = anyio.Event()
        startable.of(self).add_on_stopping(lambda _: self._accepting.cancel())
        given = listen_sockets()
        for found in given:
            listener = await anyio.abc.SocketListener.from_socket(found.socket)
            startable.of(self).start_soon(self._serve, listener)
        if not given:
            self._served.set()
        if os.environ.get("STARTABLE_TEST_FAIL_REPLICA") == os.environ["STARTABLE_REPLICA"]:
            raise RuntimeError(f"replica {os.environ['STARTABLE_REPLICA']} cannot start")

    async def _serve(self, listener: anyio.abc.SocketListener) -> None:
        async def greet(client: anyio.abc.SocketStream) -> None:
            async with client:
                await anyio.sleep(float(os.environ.get("STARTABLE_TEST_GREET_DELAY", "0")))
                await client.send(f"{os.getpid()}\n".encode())

        async with listener, anyio.create_task_group() as connections:
            with self._accepting:  # cancelled as the stop begins: no new connection
                await listener.serve(greet, task_group=connections)
        self._served.set()  # (the task group waited for the connections it had)

    @startable.as_raw_stop
    async def _stop(self) -> None:
        self._accepting.cancel()  # (a failed start calls no on_stopping hook)
        with anyio.move_on_after(10):
            await self._served.wait()

    @handler
    async def whoami(self, delay: float = 0.0) -> list[int]:
        await anyio.sleep(delay)
        me = this_service()
        assert me.replica == int(os.environ["STARTABLE_REPLICA"])
        return [os.getpid(), me.replica, me.replicas]

    @handler
    async def fails_on(self, replica: int, delay: float = 0.0) -> int:
        """Its replica index; replica `replica` raises, or (with `delay`) takes that long."""
        me = this_service().replica
        if me == replica:
            if delay:
                await anyio.sleep(delay)
            else:
                raise LookupError(f"replica {me} has no such thing")
        return me

    @handler
    async def role(self) -> bool:
        """Whether this replica holds its pool's singleton role."""
        return this_service().singleton

    @handler
    async def wait_role(self) -> int:
        """Its index, once it holds the role."""
        await this_service().wait_singleton()
        return this_service().replica

    @handler
    async def write(self, path: str) -> str:
        """Try to write `path`: "written", or the refusal."""
        try:
            with open(path, "w") as file:  # noqa: ASYNC230 - a one-line file, on purpose
                file.write("x")
        except OSError as exc:
            return f"refused: {type(exc).__name__}"
        return "written"

    @handler
    async def fork(self) -> str:
        """Try to fork: "forked", or the refusal."""
        try:
            pid = os.fork()
        except OSError as exc:
            return f"refused: {type(exc).__name__}"
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)  # noqa: ASYNC222 - a child that exits at once
        return "forked"

    @handler
    async def pidfds(self) -> int:
        """How many pidfds this process holds (a replica should hold none)."""
        found = 0
        for name in os.listdir("/proc/self/fd"):
            try:
                found += os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[pidfd]"
            except OSError:
                pass
        return found

    @handler
    async def read(self, path: str) -> str:
        """Try to read `path`: "read", or the refusal."""
        try:
            with open(path) as file:  # noqa: ASYNC230 - a small file, on purpose
                file.read(1)
        except OSError as exc:
            return f"refused: {type(exc).__name__}"
        return "read"
