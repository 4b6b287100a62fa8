"""Runners: how one service runs, for the node that orders it.

A `ServiceNode` keeps what is the same for every service: the order of
starts and stops, the cascade, availability. How the service runs is its
runner's: in this process (`InProcessRunner`), in a child process of its
own (`ContainerRunner`), as a program that is not a lifecycle
(`CommandRunner`), as a pool of replicas (`pool.PoolRunner`), on other
hosts (`elsewhere.RemoteRunner`). `pool.runner_for` picks one from the spec. A new way to
run a service is a new class with the `Runner` methods, and one more case
in `runner_for`.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Protocol

import anyio

from ... import Startable, State, of
from .._data.client import ServiceClient, serving_as
from .._data.contract import AnyMessage
from .._data.link import PortLink
from .._data.router import LocalLink, Outbox, Router
from .._ipc.port import ConnectionPort, from_socket
from .._process.command import CommandProcess
from .._process.container import ServiceContainer
from .._process.controller import OutputLine
from .._process.failfast import FailFast
from .._process.listen import ListenSocket, bind_all
from .._process.remote import ENV_DATA_PORT, ENV_SERVICE
from .services import ServiceSpec

logger = logging.getLogger("startable.cluster")
IDLE = (State.READY, State.STOPPED)


class Runner(Protocol):
    """How a node's service runs.

    Its node calls `start` from its raw start and `stop` from its raw stop,
    so both run as part of the node's lifecycle, and background work goes
    into it (`node.start_soon`). Between a successful `start` and `stop` the
    service is STARTED and reachable on the data plane (attached to the
    router under its name).
    """

    @property
    def service(self) -> object | None:
        """What runs now, or last (None before the first start)."""
        ...

    @property
    def pid(self) -> int | None:
        """Its process, when it has one of its own and it runs."""
        ...

    @property
    def events_dropped(self) -> int:
        """Events for it the router dropped because it did not read them."""
        ...

    @property
    def backlog(self) -> int:
        """Messages the router holds for it, not yet delivered."""
        ...

    async def start(self, node: Startable) -> None:
        """Start the service; return once it is STARTED and reachable.

        When the service stops on its own, `node` stops with its reason.

        Raises:
            Exception: why it could not start, as soon as that is known
                (`stop` is called next, and joins the clean-up).
        """
        ...

    async def stop(self, err: BaseException | None) -> None:
        """Stop the service with the stop reason `err` (abandoning a start in flight) and
        make it unreachable.

        Raises:
            Exception: what its stop raised; it is stopped all the same.
        """
        ...

    @property
    def containers(self) -> tuple[ServiceContainer, ...]:
        """The containers it runs the service in (none in this process)."""
        ...

    @property
    def listeners(self) -> tuple[ListenSocket, ...]:
        """The listening sockets it keeps for the service (`spec.listen`, once bound)."""
        ...

    def release(self) -> None:
        """Let go of what it keeps across restarts (listening sockets); called
        once the service is stopped for good (destroyed, or its manager stopped)."""
        ...

    def set_output(self, callback: Callable[[OutputLine], object] | None) -> None:
        """Give each line its processes write to `callback`, from their next
        start on (processes it makes later too); nothing in this process."""
        ...


class InProcessRunner:
    """Runs what `spec.factory` returns in this process, its client linked
    straight into the router."""

    def __init__(self, spec: ServiceSpec, router: Router) -> None:
        assert spec.factory is not None
        self.spec = spec
        self.router = router
        self.service: object | None = None
        #: Its data-plane client while it runs.
        self.client: ServiceClient | None = None
        self._link: LocalLink | None = None
        self.pid: int | None = None
        self.events_dropped = 0  # its subscriptions count their own
        self.backlog = 0
        self.containers: tuple[ServiceContainer, ...] = ()
        self.listeners: tuple[ListenSocket, ...] = ()  # (`listen` is for containers)

    async def start(self, node: Startable) -> None:
        assert self.spec.factory is not None
        name = self.spec.name
        self._link = link = LocalLink(self.router, name)
        self.client = client = ServiceClient(name, link)
        await of(client).start()
        with serving_as(client):
            self.service = self.spec.factory()
            client.serve(self.service)
            await of(self.service).start(node.stop)

    def release(self) -> None:
        pass  # it keeps nothing across restarts

    def set_output(self, callback: Callable[[OutputLine], object] | None) -> None:
        pass  # it has no process of its own

    async def stop(self, err: BaseException | None) -> None:
        try:
            if self.service is not None and of(self.service).state not in IDLE:
                await of(self.service).stop(err)
        finally:
            if self._link is not None:
                await self._link.close()  # unreachable from now on (it does not wait)
            client, self.client = self.client, None
            if client is not None and of(client).state not in IDLE:
                await of(client).stop()


class ContainerRunner:
    """Runs the service in a `ServiceContainer` (a new child process on every
    start), its data plane on a socket of its own that this runner sets up.

    `instance` numbers it among the endpoints of its name (a replica's index).
    """

    def __init__(self, spec: ServiceSpec, router: Router, instance: int = 0) -> None:
        assert spec.entry is not None
        self.spec = spec
        self.router = router
        self.instance = instance
        self.container = ServiceContainer(
            spec.entry,
            code=spec.code,
            permissions=spec.permissions,
            env={**spec.env, ENV_SERVICE: spec.name},
            cwd=spec.cwd,
            name=spec.name,
            on_output=spec.on_output,
            options=spec.container_options,
        )
        self._port: ConnectionPort[AnyMessage] | None = None
        self._outbox: Outbox | None = None
        self._starting = FailFast()  # failing as soon as the container's start fails
        self._bound: tuple[ListenSocket, ...] = ()  # what it bound itself (and closes)

    @property
    def service(self) -> ServiceContainer:
        return self.container

    @property
    def pid(self) -> int | None:
        return self.container.pid

    @property
    def events_dropped(self) -> int:
        return 0 if self._outbox is None else self._outbox.events_dropped

    @property
    def backlog(self) -> int:
        return 0 if self._outbox is None else len(self._outbox)

    @property
    def containers(self) -> tuple[ServiceContainer, ...]:
        return (self.container,)

    @property
    def listeners(self) -> tuple[ListenSocket, ...]:
        return self.container.listeners

    def set_output(self, callback: Callable[[OutputLine], object] | None) -> None:
        self.container.on_output = callback

    def withdraw(self) -> anyio.Event:
        """Route no new request to it; the event is set once it owes no answer
        (the requests it was given are answered, or it is gone)."""
        outbox = self._outbox
        if outbox is None or not self.router.attached(outbox):
            done = anyio.Event()
            done.set()
            return done
        return self.router.withdraw(outbox)

    def release(self) -> None:
        """Close the sockets it bound (not those given to its container by a pool)."""
        bound, self._bound = self._bound, ()
        if self.container.listeners == bound:
            self.container.listeners = ()
        for listener in bound:
            listener.socket.close()

    def _listen(self) -> None:
        """Bind `spec.listen` once: the sockets stay bound across restarts."""
        if not self._bound and self.spec.listen:
            self._bound = self.container.listeners = bind_all(self.spec.listen)

    async def start(self, node: Startable) -> None:
        name = self.spec.name
        self._listen()
        ours, theirs = socket.socketpair()
        self.container.hand_over(ENV_DATA_PORT, theirs)
        self._port = port = from_socket(ours, receives=AnyMessage, name=f"{name} data port")
        await of(port).start()
        self._outbox = outbox = Outbox(self.router, PortLink(port))
        self.router.attach(name, outbox, self.instance)
        node.start_soon(outbox.pump)
        node.start_soon(self._relay, port, outbox)
        await self._starting.start(node, of(self.container), node.stop)

    async def _relay(self, port: ConnectionPort[AnyMessage], outbox: Outbox) -> None:
        """The service's requests and events, to the router, until its process ends."""
        async for message in port:
            try:
                self.router.handle(outbox, message)  # it never waits
            except Exception:  # a fault of the router's: this service's next message is handled
                logger.exception("routing a message from %r failed", self.spec.name)

    async def stop(self, err: BaseException | None) -> None:
        try:
            await self._starting.stop(of(self.container), err)
        finally:
            if self._outbox is not None:
                self.router.detach(self._outbox)
                self._outbox.clear()
            port, self._port = self._port, None
            if port is not None and of(port).state not in IDLE:
                await of(port).stop()


class CommandRunner:
    """Runs `spec.command` as a `CommandProcess` (a new one on every start).

    The program has no data plane: it is not attached to the router, so a
    request to it fails with `ServiceUnavailable`. `process` is the current
    (or last) run.
    """

    def __init__(self, spec: ServiceSpec) -> None:
        assert spec.command is not None
        self.spec = spec
        self.process: CommandProcess | None = None
        self.on_output = spec.on_output
        self.events_dropped = 0
        self.backlog = 0
        self.containers: tuple[ServiceContainer, ...] = ()
        self.listeners: tuple[ListenSocket, ...] = ()
        self._starting = FailFast()

    @property
    def service(self) -> CommandProcess | None:
        return self.process

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def release(self) -> None:
        pass  # it keeps nothing across restarts

    def set_output(self, callback: Callable[[OutputLine], object] | None) -> None:
        self.on_output = callback

    async def start(self, node: Startable) -> None:
        spec = self.spec
        assert spec.command is not None
        limits = spec.permissions
        self.process = process = CommandProcess(
            spec.command,
            env=spec.env,
            cwd=spec.cwd,
            name=spec.name,
            ready=spec.ready,
            options=spec.container_options,
            stop_signal=spec.stop_signal,
            memory=limits.memory if limits is not None else None,
            cpu_time=limits.cpu_time if limits is not None else None,
            open_files=limits.open_files if limits is not None else None,
            on_output=self.on_output,
        )
        await self._starting.start(node, of(process), node.stop)

    async def stop(self, err: BaseException | None) -> None:
        if self.process is not None:
            await self._starting.stop(of(self.process), err)
