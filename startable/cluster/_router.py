"""The local router of the data plane: the manager passes requests and events between services.

Each running service has an *endpoint* here (its container's data port, or
its client in this process). The router checks every request against the
caller's declared dependencies and the callee's state, forwards it under an
id of its own, and sends the answer back; events go to every service
subscribed to their topic. It never waits for a handler: a slow callee
holds up only its caller.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.lowlevel

from .._exceptions import StateError
from .._lifecycle import State
from .._startable import of
from ._dataplane import (
    AnyMessage,
    Call,
    Create,
    Event,
    Reply,
    ServiceClient,
    Subscribe,
    Unsubscribe,
    copy,
)
from ._errors import ClusterError, ServiceDefinitionError, ServiceUnavailable
from ._messages import ErrorInfo
from ._services import ServiceSpec

if TYPE_CHECKING:
    from ._manager import ServicesManager

STARTED = State.STARTED
#: How long the router keeps a forwarded request after its deadline, in
#: case the callee answers late (the answer is then dropped).
GRACE = 1.0
#: Forwarded requests past their time are forgotten every this many requests.
SWEEP_EVERY = 1024


class Endpoint(Protocol):
    async def send(self, message: Any) -> None: ...


class _Forwarded:
    __slots__ = ("callee", "caller", "caller_id", "expires")

    def __init__(self, caller: str | None, caller_id: int, callee: str, expires: float) -> None:
        self.caller = caller
        self.caller_id = caller_id
        self.callee = callee
        self.expires = expires


class Router:
    """Routes the data plane of one `ServicesManager`, in its process."""

    def __init__(self, manager: ServicesManager) -> None:
        self.manager = manager
        self.endpoints: dict[str | None, Endpoint] = {}
        self.topics: dict[str, set[str | None]] = {}
        self._forwarded: dict[int, _Forwarded] = {}
        self._ids = itertools.count(1)

    def attach(self, name: str | None, endpoint: Endpoint) -> None:
        """`name`'s client can be reached through `endpoint` (None: the manager's own)."""
        self.endpoints[name] = endpoint

    def detach(self, name: str | None) -> None:
        """`name` is gone: its pending requests fail, its subscriptions end."""
        self.endpoints.pop(name, None)
        for subscribers in self.topics.values():
            subscribers.discard(name)
        lost = [rid for rid, f in self._forwarded.items() if name in (f.callee, f.caller)]
        for rid in lost:
            forwarded = self._forwarded.pop(rid)
            if forwarded.callee == name and forwarded.caller in self.endpoints:
                reply = Reply(
                    forwarded.caller_id,
                    kind="unavailable",
                    message=f"service {name!r} stopped before it answered",
                )
                self._send_soon(forwarded.caller, reply)

    def _send_soon(self, name: str | None, message: AnyMessage) -> None:
        endpoint = self.endpoints.get(name)
        if endpoint is not None:
            with contextlib.suppress(StateError):  # the manager is not running: nobody waits
                of(self.manager).start_soon(self._send, endpoint, message)

    @staticmethod
    async def _send(endpoint: Endpoint, message: AnyMessage) -> None:
        try:
            await endpoint.send(message)
        except ClusterError:
            pass  # it is going away; its node cleans up

    async def handle(self, source: str | None, message: AnyMessage) -> None:
        """A message from `source`'s client (None: the manager's own)."""
        if isinstance(message, Call):
            await self._call(source, message)
        elif isinstance(message, Reply):
            forwarded = self._forwarded.get(message.id)
            if forwarded is not None and forwarded.callee == source:  # only the callee answers
                del self._forwarded[message.id]
                endpoint = self.endpoints.get(forwarded.caller)
                if endpoint is not None:
                    await self._send(
                        endpoint,
                        Reply(
                            forwarded.caller_id,
                            message.value,
                            message.kind,
                            message.message,
                            message.error,
                        ),
                    )
        elif isinstance(message, Event):
            event = Event(message.topic, message.payload, source or "")
            for name in tuple(self.topics.get(message.topic, ())):
                endpoint = self.endpoints.get(name)
                if endpoint is not None:
                    await self._send(endpoint, event)
        elif isinstance(message, Subscribe):
            self.topics.setdefault(message.topic, set()).add(source)
            await self._answer(source, Reply(message.id))
        elif isinstance(message, Unsubscribe):
            self.topics.get(message.topic, set()).discard(source)
        elif isinstance(message, Create):
            of(self.manager).start_soon(self._create, source, message)

    async def _answer(self, name: str | None, reply: Reply) -> None:
        endpoint = self.endpoints.get(name)
        if endpoint is not None:
            await self._send(endpoint, reply)

    async def _call(self, source: str | None, call: Call) -> None:
        problem = self._refusal(source, call.service)
        if problem is not None:
            await self._answer(source, Reply(call.id, kind=problem[0], message=problem[1]))
            return
        now = time.monotonic()
        rid = next(self._ids)
        if rid % SWEEP_EVERY == 0:  # callees that never answered, long after their callers left
            for late in [r for r, f in self._forwarded.items() if f.expires < now]:
                del self._forwarded[late]
        self._forwarded[rid] = _Forwarded(source, call.id, call.service, now + call.timeout + GRACE)
        forwarded = Call(
            rid, call.service, call.method, call.args, call.kwargs, call.timeout, source or ""
        )
        try:
            await self.endpoints[call.service].send(forwarded)
        except ClusterError:
            if self._forwarded.pop(rid, None) is not None:
                message = f"service {call.service!r} stopped before it answered"
                await self._answer(source, Reply(call.id, kind="unavailable", message=message))

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
        if state is not STARTED or callee not in self.endpoints:
            return "unavailable", f"service {callee!r} is not STARTED (it is {state.name})"
        return None

    async def _create(self, source: str | None, create: Create) -> None:
        """A service creates a child: checked, created and started by the manager.

        A child starts after its parent is STARTED: a parent still starting
        is waited for (so a raw start that creates children waits for itself,
        until the caller's deadline).
        """
        manager = self.manager
        parent = manager.nodes.get(source) if source is not None else None
        if parent is not None:
            with anyio.move_on_after(create.timeout):  # the caller waits no longer
                await of(parent).wait_state(STARTED, State.STOPPING, State.STOPPED)
        if parent is None or of(parent).state is not STARTED:
            message = "only a STARTED service can create a child service"
            await self._answer(source, Reply(create.id, kind="refused", message=message))
            return
        beyond = sorted(set(create.depends_on) - set(parent.spec.depends_on) - {parent.name})
        if beyond:  # a child reaches no further than its parent may
            message = (
                f"service {parent.name!r} may not give {create.name!r} dependencies it does "
                f"not have itself: {', '.join(beyond)}"
            )
            await self._answer(source, Reply(create.id, kind="refused", message=message))
            return
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
            await self._answer(source, Reply(create.id, kind="refused", message=str(exc)))
            return
        try:
            await manager._start_with_victims(manager.nodes[create.name])
        except Exception as exc:
            await self._answer(source, Reply(create.id, kind="error", error=ErrorInfo.of(exc)))
        else:
            await self._answer(source, Reply(create.id))


class LocalLink:
    """The link of a client in the manager's process: straight into the router.

    Messages are copied both ways as a wire would copy them, so that a
    service sees the same values whether it runs here or in a container.
    """

    def __init__(self, router: Router, name: str | None) -> None:
        self.router = router
        self.name = name

    async def open(self, client: ServiceClient) -> None:
        self.router.attach(self.name, _LocalEndpoint(client))

    async def send(self, message: AnyMessage) -> None:
        await anyio.lowlevel.checkpoint()  # as a port would: a loop of sends lets others run
        if self.name not in self.router.endpoints:
            raise ServiceUnavailable("the cluster is out of reach: the link is closed")
        await self.router.handle(self.name, copy(message))

    async def close(self) -> None:
        self.router.detach(self.name)


class _LocalEndpoint:
    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    async def send(self, message: AnyMessage) -> None:
        # What reaches the router is a copy already; an event may go to several services.
        self.client._deliver(copy(message) if isinstance(message, Event) else message)
