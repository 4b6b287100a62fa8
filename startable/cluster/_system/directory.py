"""The manager's directory: the data plane's questions answered from its nodes.

`LocalDirectory` implements `startable.cluster._data.directory.Directory`
for one `ServicesManager`: a service exists when the manager has a node for
it, is reachable while that node is STARTED, may call the services it
depends on, and may create children when its spec allows it. It keeps the
endpoints of each name in the order they were registered. It reads the
manager only through `Cluster`, so the data plane does not import the
manager, and the manager does not import the router's internals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any, Protocol

import anyio

from ... import State, of
from .._data.config import ConfigStore, apply
from .._data.contract import Configure, Create, Reply
from .._data.directory import Endpoint, Refusal
from .._errors import ServiceDefinitionError
from .._ipc.messages import ErrorInfo
from .node import ServiceNode
from .services import ServiceSpec

logger = logging.getLogger("startable.cluster")
STARTED = State.STARTED


class Cluster(Protocol):
    """What `LocalDirectory` reads and asks of its manager (a `ServicesManager`)."""

    @property
    def name(self) -> str: ...

    @property
    def nodes(self) -> Mapping[str, ServiceNode]: ...

    def create(self, spec: ServiceSpec, *, parent: str | None = None) -> ServiceNode: ...

    async def start_service(self, name: str) -> None: ...

    @property
    def config_store(self) -> ConfigStore: ...


class LocalDirectory:
    """The `Directory` of one manager's services, in its process."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._endpoints: dict[str, list[Endpoint]] = {}
        #: The services of other hosts that call here (a link fills it): one of
        #: them that is not declared here (`remote = true`) may call any
        #: service; its own host checked its `depends_on`.
        self.foreign: Container[str] = frozenset()

    @property
    def name(self) -> str:
        return self.cluster.name

    def call_refusal(self, caller: str | None, callee: str) -> Refusal | None:
        nodes = self.cluster.nodes
        if caller is not None:
            node = nodes.get(caller)
            if node is None:
                if caller not in self.foreign:
                    return "refused", f"{caller!r} is not a service of {self.name}"
            elif callee not in node.spec.depends_on:
                declared = ", ".join(node.spec.depends_on) or "none"
                return (
                    "refused",
                    f"service {caller!r} may not call {callee!r}: it is not among its "
                    f"dependencies (depends_on: {declared})",
                )
        target = nodes.get(callee)
        if target is None:
            return "unavailable", f"there is no service named {callee!r}"
        state = of(target).state
        if state is not STARTED:
            return "unavailable", f"service {callee!r} is not STARTED (it is {state.name})"
        return None

    def create_refusal(self, source: str) -> str | None:
        parent = self.cluster.nodes.get(source)
        if parent is None:
            return "only a service can create a child service"
        if not parent.spec.may_create_services:
            return (
                f"service {parent.name!r} may not create services "
                "(its spec does not set may_create_services)"
            )
        if of(self.cluster).state is not STARTED:
            return f"{self.name} is not STARTED"
        return None

    def create(self, parent: str, create: Create, answer: Callable[[Reply], None]) -> None:
        node = self.cluster.nodes[parent]  # (`create_refusal` found it)
        start_soon: Callable[..., Any] = of(self.cluster).start_soon
        start_soon(self._answered, node, create, answer)

    def configure(
        self, source: str | None, service: str, message: Configure, answer: Callable[[Reply], None]
    ) -> None:
        store = self.cluster.config_store
        if service not in self.cluster.nodes and not store.shared:
            answer(
                Reply(message.id, kind="refused", message=f"there is no service named {service!r}")
            )
            return
        start_soon: Callable[..., Any] = of(self.cluster).start_soon
        start_soon(self._configured, source or "", service, message, answer)

    async def _configured(
        self, writer: str, service: str, message: Configure, answer: Callable[[Reply], None]
    ) -> None:
        try:
            reply = await apply(self.cluster.config_store, service, message, writer)
        except Exception as exc:  # a fault of ours must not stop the manager
            logger.exception("a configuration request of %r failed", service)
            reply = Reply(message.id, kind="error", error=ErrorInfo.of(exc))
        answer(reply)

    async def _answered(
        self, parent: ServiceNode, create: Create, answer: Callable[[Reply], None]
    ) -> None:
        """Create the child and `answer`; never raises (a fault of ours must not stop
        the manager)."""
        try:
            reply = await self._created(parent, create)
        except Exception as exc:
            logger.exception("creating %r failed", create.name)
            reply = Reply(create.id, kind="error", error=ErrorInfo.of(exc))
        answer(reply)

    async def _created(self, parent: ServiceNode, create: Create) -> Reply:
        """Create and start a child of `parent`.

        A child starts after its parent is STARTED: a parent still starting
        is waited for (so a raw start that creates children waits for itself,
        until the caller's deadline).
        """
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
                container_options=parent.spec.container_options,
            )
            self.cluster.create(spec, parent=parent.name)
        except ServiceDefinitionError as exc:
            return Reply(create.id, kind="refused", message=str(exc))
        try:
            await self.cluster.start_service(create.name)
        except Exception as exc:
            return Reply(create.id, kind="error", error=ErrorInfo.of(exc))
        return Reply(create.id)

    def register(self, name: str, endpoint: Endpoint) -> None:
        mine = self._endpoints.setdefault(name, [])
        if endpoint not in mine:
            mine.append(endpoint)

    def unregister(self, name: str, endpoint: Endpoint) -> None:
        mine = self._endpoints.get(name)
        if mine is not None and endpoint in mine:
            mine.remove(endpoint)
            if not mine:
                del self._endpoints[name]

    def endpoints(self, name: str) -> Sequence[Endpoint]:
        return self._endpoints.get(name, ())
