"""`RemoteRunner`: a service that runs on other hosts (`remote = true`), as a node here sees it.

Its node is STARTED while at least one instance of the service is live in
the cluster's registry: its start waits for one (up to `spec.limit`
seconds), and when the last one disappears (its expiry passed, or a call to
it went undelivered) and none is back within the registry's ttl, the node
stops on its own with a `ServiceUnavailable` reason that names it (requests
to it fail at once meanwhile). So its dependents start once it is live somewhere,
are cascaded when it is gone, and come back when its restart policy starts
it again and it is live again. Requests to it go to its instances' endpoints,
which the link keeps attached to the router.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from ... import Startable, State
from .._errors import ClusterError, ServiceUnavailable
from .._process.container import ServiceContainer
from .._process.controller import OutputLine
from .._process.listen import ListenSocket
from .services import ServiceSpec

if TYPE_CHECKING:
    from .._redis.link import RedisLink


class RemoteRunner:
    """Runs nothing here: STARTED while `spec.name` is live on another host.

    Args:
        spec: a spec with `remote` set.
        link: returns the manager's link to the other hosts (None when it has none).
    """

    def __init__(self, spec: ServiceSpec, link: Callable[[], RedisLink | None]) -> None:
        self.spec = spec
        self._link = link
        self._node: Startable | None = None
        self._watching: RedisLink | None = None
        self._changed = anyio.Event()
        self._vanishing = False
        self.service: object | None = None
        self.pid: int | None = None
        self.events_dropped = 0
        self.backlog = 0
        self.containers: tuple[ServiceContainer, ...] = ()
        self.listeners: tuple[ListenSocket, ...] = ()

    @property
    def instances(self) -> list[str]:
        """The ids of its live instances, as this host last read them."""
        link = self._watching
        return link.instances(self.spec.name) if link is not None else []

    async def start(self, node: Startable) -> None:
        name = self.spec.name
        link = self._link()
        if link is None:
            raise ClusterError(
                f"service {name!r} is remote, and this cluster has no link to other hosts "
                "(give the cluster a redis URL)"
            )
        self._node = node
        self._watching = link
        link.watch(name, self._on_change)
        with anyio.move_on_after(self.spec.limit):
            while not link.instances(name):
                self._changed = anyio.Event()
                await link.refresh(name)
                if link.instances(name):
                    break
                with anyio.move_on_after(link.ttl / 3):
                    await self._changed.wait()
        if not link.instances(name):
            raise ServiceUnavailable(
                f"service {name!r} is not live on any host (waited {self.spec.limit:g}s)"
            )

    def _on_change(self) -> None:
        self._changed.set()
        node, link = self._node, self._watching
        if node is None or link is None or link.instances(self.spec.name):
            return
        if node.state is State.STARTED and not self._vanishing:
            self._vanishing = True
            node.start_soon(self._vanish, node, link)

    async def _vanish(self, node: Startable, link: RedisLink) -> None:
        """No instance is left: stop, unless one is back within the registry's ttl
        (a Redis restart empties the registry until every host registers again)."""
        try:
            with anyio.move_on_after(link.ttl):
                while not link.instances(self.spec.name):
                    self._changed = anyio.Event()
                    await self._changed.wait()
            if not link.instances(self.spec.name) and node.state is State.STARTED:
                gone = f"service {self.spec.name!r}: no live instance is left on any host"
                node.stop_nowait(ServiceUnavailable(gone))
        finally:
            self._vanishing = False

    async def stop(self, err: BaseException | None) -> None:
        link, self._watching = self._watching, None
        self._node = None
        if link is not None:
            link.unwatch(self.spec.name, self._on_change)

    def release(self) -> None:
        pass  # it keeps nothing across restarts

    def set_output(self, callback: Callable[[OutputLine], object] | None) -> None:
        pass  # its output is on its own hosts
