"""The local router of the data plane: the manager passes requests and events between services.

Each running service has an *endpoint* here (its container's data port, or
its client in this process). The router checks every request against the
caller's declared dependencies and the callee's state, forwards it under an
id of its own, and sends the answer back; events go to every service
subscribed to their topic. It never waits: not for a handler (a slow
callee holds up only its caller), and not for a container's socket (each
container has an `Outbox`, written by a task of its own, so one that stops
reading holds up nobody else).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.lowlevel
from msgspec.structs import replace

from ... import State, of
from .._errors import ServiceDefinitionError, ServiceUnavailable
from .._ipc.messages import ErrorInfo
from .._system.services import ServiceSpec
from .contract import (
    AnyMessage,
    Call,
    Create,
    Event,
    Reply,
    Subscribe,
    Unsubscribe,
    copy,
    invalid,
    problem,
)
from .link import PortLink, Receiver

if TYPE_CHECKING:
    from .._system.manager import ServicesManager
    from .._system.node import ServiceNode

logger = logging.getLogger("startable.cluster")
STARTED = State.STARTED
#: How long the router keeps a forwarded request after its deadline, in
#: case the callee answers late (the answer is then dropped).
GRACE = 1.0
#: Forwarded requests past their time are forgotten every this many requests.
SWEEP_EVERY = 1024
#: Messages an `Outbox` holds for its container before it refuses more.
OUTBOX_CAPACITY = 1024
#: Requests one service may have waiting for answers at once; past that its
#: new requests are refused at once (`ServiceUnavailable`).
MAX_IN_FLIGHT = 4096
#: Topics one service may be subscribed to at once; past that a new
#: subscription is refused (`RequestRefused`).
MAX_TOPICS = 1024


class Endpoint(Protocol):
    def put(self, message: AnyMessage) -> bool:
        """Take `message` for delivery without waiting; False: it cannot, now."""
        ...


class _Forwarded:
    __slots__ = ("callee", "caller", "caller_id", "expires")

    def __init__(self, caller: str | None, caller_id: int, callee: str, expires: float) -> None:
        self.caller = caller
        self.caller_id = caller_id
        self.callee = callee
        self.expires = expires


class Router:
    """Routes the data plane of one `ServicesManager`, in its process.

    Every message is checked against the contract (`_contract.problem`)
    before anything is done with it; one that breaks it is answered with an
    `"invalid"` reply when it has an id, and dropped (and logged) otherwise.
    What one service can make the router hold is bounded: `MAX_IN_FLIGHT`
    requests, `MAX_TOPICS` subscriptions.
    """

    def __init__(self, manager: ServicesManager) -> None:
        self.manager = manager
        self.endpoints: dict[str | None, Endpoint] = {}
        self.topics: dict[str, set[str | None]] = {}
        #: Messages refused as malformed, by the service that sent them.
        self.malformed: dict[str | None, int] = {}
        self._subscribed: dict[str | None, set[str]] = {}
        self._in_flight: dict[str | None, int] = {}
        self._forwarded: dict[int, _Forwarded] = {}
        self._ids = itertools.count(1)

    def attach(self, name: str | None, endpoint: Endpoint) -> None:
        """`name`'s client can be reached through `endpoint` (None: the manager's own)."""
        self.endpoints[name] = endpoint

    def detach(self, name: str | None) -> None:
        """`name` is gone: its pending requests fail, its subscriptions end."""
        self.endpoints.pop(name, None)
        for topic in self._subscribed.pop(name, ()):
            self._unsubscribe(topic, name)
        lost = [rid for rid, f in self._forwarded.items() if name in (f.callee, f.caller)]
        for rid in lost:
            if self._forwarded[rid].callee == name:
                self.fail(rid, "unavailable", f"service {name!r} stopped before it answered")
            else:
                self._forget(rid)

    def _unsubscribe(self, topic: str, name: str | None) -> None:
        subscribers = self.topics.get(topic)
        if subscribers is not None:
            subscribers.discard(name)
            if not subscribers:  # topics nobody listens to are forgotten
                del self.topics[topic]
        mine = self._subscribed.get(name)
        if mine is not None:
            mine.discard(topic)

    def _forget(self, rid: int) -> _Forwarded | None:
        forwarded = self._forwarded.pop(rid, None)
        if forwarded is not None:
            self._in_flight[forwarded.caller] -= 1
        return forwarded

    def fail(self, rid: int, kind: str, message: str, error: ErrorInfo | None = None) -> None:
        """The request the router forwarded as `rid` will get no answer: tell its caller."""
        forwarded = self._forget(rid)
        if forwarded is not None:
            reply = Reply(forwarded.caller_id, kind=kind, message=message, error=error)
            self._put(forwarded.caller, reply)

    def _put(self, name: str | None, message: AnyMessage) -> bool:
        endpoint = self.endpoints.get(name)
        return endpoint is not None and endpoint.put(message)

    def handle(self, source: str | None, message: AnyMessage) -> None:
        """A message from `source`'s client (None: the manager's own); it never waits."""
        if isinstance(message, Create) and (refusal := self._create_refusal(source)):
            self._put(source, Reply(message.id, kind="refused", message=refusal))
            return  # (the permission first: one without it learns nothing else)
        why = problem(message)
        if why is not None:
            self._malformed(source, message, why)
        elif isinstance(message, Call):
            self._call(source, message)
        elif isinstance(message, Reply):
            forwarded = self._forwarded.get(message.id)
            if forwarded is not None and forwarded.callee == source:  # only the callee answers
                self._forget(message.id)
                self._put(forwarded.caller, replace(message, id=forwarded.caller_id))
        elif isinstance(message, Event):
            event = replace(message, source=source or "")
            for name in self.topics.get(message.topic, ()):  # `put` never subscribes anyone
                self._put(name, event)  # a full outbox drops it, and counts it
        elif isinstance(message, Subscribe):
            self._subscribe(source, message)
        elif isinstance(message, Unsubscribe):
            self._unsubscribe(message.topic, source)
        else:
            self._create_soon(source, message)

    def _malformed(self, source: str | None, message: AnyMessage, why: str) -> None:
        count = self.malformed[source] = self.malformed.get(source, 0) + 1
        answer = invalid(message, f"refused by {self.manager.name}: {why}")
        if answer is not None:
            self._put(source, answer)
        if count & (count - 1) == 0:  # the 1st, 2nd, 4th, 8th...: a flood cannot fill the log
            who = f"service {source!r}" if source is not None else "the manager's client"
            logger.warning("%s sent a malformed message (%d so far): %s", who, count, why)

    def _subscribe(self, source: str | None, message: Subscribe) -> None:
        mine = self._subscribed.setdefault(source, set())
        if message.topic not in mine and len(mine) >= MAX_TOPICS:
            refusal = f"a service may subscribe to {MAX_TOPICS} topics at most"
            self._put(source, Reply(message.id, kind="refused", message=refusal))
            return
        mine.add(message.topic)
        self.topics.setdefault(message.topic, set()).add(source)
        self._put(source, Reply(message.id))

    def _call(self, source: str | None, call: Call) -> None:
        refusal = self._refusal(source, call.service)
        if refusal is not None:
            self._put(source, Reply(call.id, kind=refusal[0], message=refusal[1]))
            return
        in_flight = self._in_flight.get(source, 0)
        if in_flight >= MAX_IN_FLIGHT:
            message = f"{MAX_IN_FLIGHT} requests of this service wait for answers already"
            self._put(source, Reply(call.id, kind="unavailable", message=message))
            return
        now = time.monotonic()
        rid = next(self._ids)
        if rid % SWEEP_EVERY == 0:  # callees that never answered, long after their callers left
            for late in [r for r, f in self._forwarded.items() if f.expires < now]:
                self._forget(late)
        self._forwarded[rid] = _Forwarded(source, call.id, call.service, now + call.timeout + GRACE)
        self._in_flight[source] = in_flight + 1
        if not self._put(call.service, replace(call, id=rid, caller=source or "")):
            message = (
                f"service {call.service!r} is not keeping up: {OUTBOX_CAPACITY} messages "
                "wait for it already"
            )
            self.fail(rid, "unavailable", message)

    def _refusal(self, source: str | None, callee: str) -> tuple[str, str] | None:
        nodes = self.manager.nodes
        if source is not None:
            caller = nodes.get(source)
            if caller is None:
                return "refused", f"{source!r} is not a service of {self.manager.name}"
            if callee not in caller.spec.depends_on:
                declared = ", ".join(caller.spec.depends_on) or "none"
                return (
                    "refused",
                    f"service {source!r} may not call {callee!r}: it is not among its "
                    f"dependencies (depends_on: {declared})",
                )
        node = nodes.get(callee)
        if node is None:
            return "unavailable", f"there is no service named {callee!r}"
        state = of(node).state
        if state is not STARTED:
            return "unavailable", f"service {callee!r} is not STARTED (it is {state.name})"
        if callee not in self.endpoints:
            return "unavailable", f"service {callee!r} cannot be reached: its data socket is closed"
        return None

    def _create_refusal(self, source: str | None) -> str | None:
        """Why `source` may not create a service now (None: it may)."""
        manager = self.manager
        parent = manager.nodes.get(source) if source is not None else None
        if parent is None:
            return "only a service can create a child service"
        if not parent.spec.may_create_services:
            return (
                f"service {parent.name!r} may not create services "
                "(its spec does not set may_create_services)"
            )
        if of(manager).state is not STARTED:
            return f"{manager.name} is not STARTED"
        return None

    def _create_soon(self, source: str | None, create: Create) -> None:
        """A task of the manager creates and starts the child (permitted already)."""
        assert source is not None
        of(self.manager).start_soon(self._create, self.manager.nodes[source], create)

    async def _create(self, parent: ServiceNode, create: Create) -> None:
        """Create and start a child of `parent`, and answer it; never raises.

        A child starts after its parent is STARTED: a parent still starting
        is waited for (so a raw start that creates children waits for itself,
        until the caller's deadline).
        """
        try:
            reply = await self._created(parent, create)
        except Exception as exc:  # a fault of ours must not stop the manager
            logger.exception("creating %r for %r failed", create.name, parent.name)
            reply = Reply(create.id, kind="error", error=ErrorInfo.of(exc))
        self._put(parent.name, reply)

    async def _created(self, parent: ServiceNode, create: Create) -> Reply:
        manager = self.manager
        with anyio.move_on_after(create.timeout):  # the caller waits no longer
            await of(parent).wait_state(STARTED, State.STOPPING, State.STOPPED)
        if of(parent).state is not STARTED:
            message = "only a STARTED service can create a child service"
            return Reply(create.id, kind="refused", message=message)
        beyond = sorted(set(create.depends_on) - set(parent.spec.depends_on) - {parent.name})
        if beyond:  # a child reaches no further than its parent may
            message = (
                f"service {parent.name!r} may not give {create.name!r} dependencies it does "
                f"not have itself: {', '.join(beyond)}"
            )
            return Reply(create.id, kind="refused", message=message)
        try:
            spec = ServiceSpec(
                name=create.name,
                entry=create.entry,
                code=create.code,
                depends_on=create.depends_on,
                env=create.env,  # type: ignore[arg-type]  # attrs' converter=dict
                permissions=parent.spec.permissions,
                # Its parent's timeouts and interpreter; not its parent's output callback.
                container_options={
                    k: v for k, v in parent.spec.container_options.items() if k != "on_output"
                },
            )
            manager.create(spec, parent=parent.name)
        except ServiceDefinitionError as exc:
            return Reply(create.id, kind="refused", message=str(exc))
        try:
            await manager._start_with_cascade(manager.nodes[create.name])
        except Exception as exc:
            return Reply(create.id, kind="error", error=ErrorInfo.of(exc))
        return Reply(create.id)


class Outbox:
    """What the router sends to one container, written to its data port by a
    task of its own (`pump`, run by the container's node).

    Up to `capacity` messages wait here while the container's socket is
    full. Past that a request for the container is refused (its caller
    gets `ServiceUnavailable` at once) and an event for it is dropped and
    counted in `events_dropped`. Replies, the answers to the container's own
    requests, get in up to twice `capacity`; past that the container is not
    reading its answers either, and its requests end at their deadlines.
    """

    def __init__(self, router: Router, link: PortLink, capacity: int = OUTBOX_CAPACITY) -> None:
        self.router = router
        self.link = link
        self.capacity = capacity
        #: Events for the container dropped because this outbox was full.
        self.events_dropped = 0
        self._queue: deque[AnyMessage] = deque()
        self._filled = anyio.Event()

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, message: AnyMessage) -> bool:
        waiting = len(self._queue)
        if waiting >= self.capacity and (
            not isinstance(message, Reply) or waiting >= 2 * self.capacity
        ):
            if isinstance(message, Event):
                self.events_dropped += 1
            return False
        self._queue.append(message)
        self._filled.set()
        return True

    def clear(self) -> None:
        """Forget what waits: it will never be written."""
        self._queue.clear()

    async def pump(self, name: str) -> None:
        """Write the messages in order, until the port closes.

        If the port closes under it (the process died, or read nothing for
        the port's `send_timeout`), `name` is detached from the router:
        requests waiting for it, and new ones, fail at once.
        """
        queue = self._queue
        try:
            while True:
                while not queue:  # (`clear` may have emptied it since it was filled)
                    self._filled = anyio.Event()
                    await self._filled.wait()
                message = queue.popleft()
                try:
                    await self.link.send(message)
                except ValueError as exc:  # too large for the port (which is fine): not sent
                    if isinstance(message, Call):
                        self.router.fail(message.id, "error", "", ErrorInfo.of(exc))
                    else:
                        logger.warning("%s: a message was dropped: %s", self.link.port.name, exc)
        except ServiceUnavailable:
            if self.router.endpoints.get(name) is self:
                self.router.detach(name)
            self.clear()


class LocalLink:
    """The link of a client in the manager's process: straight into the router.

    Messages are copied both ways as a wire would copy them, so that a
    service sees the same values whether it runs here or in a container.
    """

    def __init__(self, router: Router, name: str | None) -> None:
        self.router = router
        self.name = name

    async def open(self, client: Receiver) -> None:
        self.router.attach(self.name, _LocalEndpoint(client, self.name))

    async def send(self, message: AnyMessage) -> None:
        await anyio.lowlevel.checkpoint()  # as a port would: a loop of sends lets others run
        if self.name not in self.router.endpoints:
            raise ServiceUnavailable("the cluster is out of reach: the link is closed")
        self.router.handle(self.name, copy(message))

    async def close(self) -> None:
        if self.name in self.router.endpoints:  # (its node may have detached it already)
            self.router.detach(self.name)


class _LocalEndpoint:
    def __init__(self, client: Receiver, name: str | None) -> None:
        self.client = client
        self.name = name or "the manager"

    def put(self, message: AnyMessage) -> bool:
        # What reaches the router is a copy already; an event may go to several services.
        if isinstance(message, Event):
            try:
                message = copy(message)
            except ValueError as exc:  # its source's name made it too large
                logger.warning("%s: an event was dropped: %s", self.name, exc)
                return False
        self.client.deliver(message)
        return True
