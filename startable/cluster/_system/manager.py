"""`ServicesManager`: many services, one system, started in dependency order."""

from __future__ import annotations

import functools
import graphlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import attrs

from ... import State, StateChange, as_raw_start, as_raw_stop, of
from .._data.client import ServiceClient
from .._data.config import ConfigStore, MemoryConfig
from .._data.contract import ConfigChange, config_topic
from .._data.router import LocalLink, Router
from .._errors import (
    ClusterError,
    ServiceDefinitionError,
    ServiceExited,
)
from .directory import LocalDirectory
from .launch import Report, closure, launch_in_order
from .node import ServiceNode
from .pool import PoolRunner, runner_for
from .services import ENV_CLUSTER_KEY, ServiceSpec, check_graph, key_problem
from .supervisor import Supervisor

if TYPE_CHECKING:
    from .._redis.link import RedisLink
    from .._redis.server import EmbeddedRedis

logger = logging.getLogger("startable.cluster")
READY, STARTING, STARTED = State.READY, State.STARTING, State.STARTED
STOPPING, STOPPED = State.STOPPING, State.STOPPED
T = TypeVar("T")
#: Where an ordered launch's actions report their node, and what it failed with.


@attrs.frozen
class ServiceEvent:
    """Something that happened to a service of a manager, as given to subscribers.

    Attributes:
        service: the service's name.
        kind: `"created"`, `"destroyed"`, `"moved"` (its state changed),
            `"restarting"` (a restart is scheduled, after `delay`; of one
            replica of a pool when `replica` is set) or `"escalated"` (it
            failed too often: the manager is stopping).
        change: for `"moved"`, the move.
        delay: for `"restarting"`, the seconds before the restart.
        replica: for a pool's `"restarting"`, the index of the replica that
            is reforked (the pool itself stays STARTED); None otherwise.
    """

    service: str
    kind: Literal["created", "destroyed", "moved", "restarting", "escalated"]
    change: StateChange | None = None
    delay: float | None = None
    replica: int | None = None


class ServicesManager:
    """Runs a set of services as one system: in dependency order, with restarts.

    Its raw start starts every service once all of its dependencies are
    STARTED; services with no path between them start concurrently, so a
    wide graph starts in the time of its longest chain. Its raw stop stops
    them all, each before the services it depends on.

    While it runs, a service that stops on its own (it crashed, its process
    died, it stopped itself) first stops everything that depends on it,
    most dependent first, each with a `DependencyStopped` reason naming the
    failure; then its `RestartPolicy` decides: restart it after a backoff,
    and once it is STARTED again, restart what the cascade stopped, in
    order. A service that fails more often than its policy allows escalates:
    the manager stops everything, with an `EscalationError` as reason. A
    service that stops on its own and that its policy does not restart
    (`mode = "never"`, or `"on-failure"` after a clean stop) is left stopped,
    or stops everything, as `on_service_exit` says.

    Its stop gives its reason to every service's raw stop, and raises once
    everything is STOPPED if a service did not stop cleanly (its raw stop
    failed, or its process had to be signalled: `ForcedStop`).

    Args:
        services: the services to create, checked together (names,
            dependencies, cycles) before any is created.
        name: used in `repr()`, logs and errors.
        on_service_exit: what a service that stopped on its own for good
            means: `"continue"` (the default: the others run on; a failure is
            kept in `failed`) or `"stop"` (everything stops, as compose's
            `--abort-on-container-exit` does: with a `ServiceExited` reason if
            it failed, without a reason if it stopped cleanly).

    Attributes:
        nodes: the services, a `dict[str, ServiceNode]` by name, in creation
            order (dependencies first). Read it; create and destroy services
            through the manager.
        failed: the services that failed and that nothing restarts, a
            `dict[str, ServiceExited]` by name; one leaves it when it is
            STARTED again.
        client: the operator's `ServiceClient`: it may call any service,
            emit and subscribe, while the manager is STARTED.
        router: the `Router` of the data plane (its `malformed` counts the
            messages each service sent that broke the contract).
        shutting_down: True from the start of the manager's stop until its
            next start: stops are not failures then.
        link: its `RedisLink` to the other hosts of the cluster while it
            runs with `redis` (None otherwise).

    With `redis`, the manager is one host of a cluster of many, named `name`
    (see docs/explanation/many-hosts.md): each of its services is
    registered in Redis once STARTED and takes calls from the other hosts;
    a `remote` service is one that runs on them.

    Args (many hosts):
        redis: a Redis URL (`redis://`, `rediss://`), or `"embedded"` (a
            server of its own on a free port) or `"embedded://127.0.0.1:PORT"`
            (the hosts of one machine share the server the first one starts).
        cluster_key: the key every host of the cluster has (32 bytes or more;
            a `str` is taken as UTF-8); `$STARTABLE_CLUSTER_KEY` when None.
        host_id: this host's id in the registry (a new one when None).
        registry_ttl: seconds an instance stays live without a heartbeat.

    Raises:
        ServiceDefinitionError: a bad name, a duplicate, an unknown
            dependency, a bad entry or permission (before anything is created).
        DependencyCycleError: the dependencies form a cycle (it names it).
        ValueError: `on_service_exit` is neither `"continue"` nor `"stop"`.
    """

    def __init__(
        self,
        services: Iterable[ServiceSpec] = (),
        *,
        name: str = "services",
        on_service_exit: Literal["continue", "stop"] = "continue",
        redis: str | None = None,
        cluster_key: bytes | str | None = None,
        host_id: str | None = None,
        registry_ttl: float = 3.0,
    ) -> None:
        if on_service_exit not in ("continue", "stop"):
            raise ValueError(f"on_service_exit is 'continue' or 'stop', not {on_service_exit!r}")
        self.name = name
        self.redis = redis
        self.host_id = host_id
        self.registry_ttl = registry_ttl
        self._cluster_key = _cluster_key(redis, cluster_key, name)
        self.link: RedisLink | None = None
        self._redis_server: EmbeddedRedis | None = None
        self.on_service_exit = on_service_exit
        #: The services, by name, in creation order (dependencies first):
        #: `ServiceNode` objects, read-only (create and destroy them through
        #: the manager).
        self.nodes: dict[str, ServiceNode] = {}
        #: True while the manager's raw stop runs: stops are not failures then.
        self.shutting_down = False
        self._observers: list[Callable[[ServiceEvent], object]] = []
        # Decides what a service that stopped on its own means.
        self._supervisor: Supervisor[ServiceNode] = Supervisor(
            self,
            restart=functools.partial(self._start_with_cascade, supervised=True),
            is_member=lambda node: self.nodes.get(node.name) is node,
            notify=lambda name, kind, delay: self._emit(ServiceEvent(name, kind, delay=delay)),
            on_exit=on_service_exit,
        )
        #: The services that failed and that nothing restarts, with why; one
        #: leaves it when it is STARTED again (`start_service`). `startable up`
        #: exits 1 when one is left.
        self.failed: dict[str, ServiceExited] = self._supervisor.failed
        #: Routes requests and events between the services (the data plane).
        self.router = Router(LocalDirectory(self))
        #: The operator's handle on the data plane: it may call any service,
        #: emit and subscribe, while the manager is STARTED.
        self.client = ServiceClient("", LocalLink(self.router, None))
        self._memory_config = MemoryConfig(self._config_changed)
        #: Where the services' configuration is kept: in this process, or in
        #: Redis while the manager has a link (`ServiceClient.config`).
        self.config_store: ConfigStore = self._memory_config
        self.create_many(services)

    def __repr__(self) -> str:
        return f"<ServicesManager {self.name} ({len(self.nodes)} services): {of(self).state.name}>"

    def __getitem__(self, name: str) -> ServiceNode:
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(f"{self.name} has no service named {name!r}") from None

    # -- observing ----------------------------------------------------------------

    def subscribe(self, callback: Callable[[ServiceEvent], object]) -> Callable[[], None]:
        """Call `callback(event)` synchronously for every `ServiceEvent`.

        Returns:
            A function that removes the subscription.
        """
        self._observers.append(callback)

        def unsubscribe() -> None:
            if callback in self._observers:
                self._observers.remove(callback)

        return unsubscribe

    def _emit(self, event: ServiceEvent) -> None:
        for callback in tuple(self._observers):
            try:
                callback(event)
            except Exception:
                logger.exception("a ServicesManager subscriber failed on %r", event)

    def _config_changed(self, change: ConfigChange) -> None:
        self.router.announce(config_topic(change.service), change)

    def _config_missed(self) -> None:
        """Changes may have been missed: every watcher here is told to read again."""
        prefix = config_topic("")
        for topic in [t for t in self.router.topics if t.startswith(prefix)]:
            service = topic[len(prefix) :]
            self.router.announce(topic, ConfigChange(service, "", resync=True))

    def _replica_restarting(self, name: str, replica: int, delay: float) -> None:
        self._emit(ServiceEvent(name, "restarting", delay=delay, replica=replica))

    def _moved(self, name: str, change: StateChange) -> None:
        link = self.link
        if link is not None:  # in the registry once STARTED, out of it first when stopping
            node = self.nodes.get(name)
            if node is not None and not node.spec.remote:
                if change.current is STARTED:
                    link.serve(name)
                elif change.current is STOPPING:
                    link.withdraw(name)
        if self._observers:  # most moves of most managers have nobody to tell
            self._emit(ServiceEvent(name, "moved", change))

    # -- creating and destroying --------------------------------------------------

    def create(self, spec: ServiceSpec, *, parent: str | None = None) -> ServiceNode:
        """Create one service (not started: see `start_service`).

        With `parent`, the service is a child of that service, which must
        have `may_create_services`: the child depends on its parent (it
        starts after it, stops before it) and is destroyed before it.

        Raises:
            ServiceDefinitionError: as for the constructor, or if `parent`
                does not exist or may not create services.
        """
        if parent is not None:
            owner = self.nodes.get(parent)
            if owner is None:
                raise ServiceDefinitionError(
                    f"cannot create {spec.name!r} under {parent!r}: no such service", spec.name
                )
            if not owner.spec.may_create_services:
                raise ServiceDefinitionError(
                    f"service {parent!r} may not create services "
                    f"(its spec does not set may_create_services)",
                    parent,
                )
            if parent not in spec.depends_on:
                spec = attrs.evolve(spec, depends_on=[parent, *spec.depends_on])
        check_graph([spec], self.nodes)
        return self._add(spec, parent)

    def create_many(self, specs: Iterable[ServiceSpec]) -> list[ServiceNode]:
        """Create several services, checked together, in dependency order."""
        specs = list(specs)
        order = check_graph(specs, self.nodes)  # refuses duplicates, unknowns, cycles
        by_name = {spec.name: spec for spec in specs}
        return [self._add(by_name[name], None) for name in order]

    def _add(self, spec: ServiceSpec, parent: str | None) -> ServiceNode:
        dependencies = tuple(self.nodes[d] for d in spec.depends_on)
        owner = self.nodes[parent] if parent is not None else None
        notify = functools.partial(self._replica_restarting, spec.name)
        runner = runner_for(spec, self.router, notify, lambda: self.link)
        if self.link is not None and not spec.remote:
            self.link.runs.add(spec.name)
        node = ServiceNode(spec, self, dependencies, runner, owner)
        for dependency in dependencies:
            dependency.dependents.append(node)
        if owner is not None:
            owner.children.append(node)
        of(node).subscribe(functools.partial(self._moved, node.name))
        self.nodes[spec.name] = node
        self._emit(ServiceEvent(node.name, "created"))
        return node

    async def destroy(self, name: str) -> None:
        """Stop a service and remove it; its children go first.

        Raises:
            ClusterError: other services (not its children) depend on it.
        """
        node = self[name]
        outside = [d.name for d in node.dependents if d.parent is not node]
        if outside:
            raise ClusterError(
                f"cannot destroy {name!r}: {', '.join(sorted(outside))} depend on it"
            )
        for child in reversed(node.children):
            await self.destroy(child.name)
        node.held = True
        try:
            await of(node).stop()
        finally:
            node.runner.release()
        for dependency in node.dependencies:
            dependency.dependents.remove(node)
        if node.parent is not None:
            node.parent.children.remove(node)
        del self.nodes[name]
        self._emit(ServiceEvent(name, "destroyed"))

    async def destroy_all(self) -> None:
        """Destroy every service, dependents before their dependencies."""
        # A service is created after its dependencies and its parent exist, so
        # the reverse of creation order always finds a service's dependents gone.
        for name in reversed(list(self.nodes)):
            if name in self.nodes:  # not already destroyed with its parent
                await self.destroy(name)

    # -- lifecycle ----------------------------------------------------------------

    @as_raw_start
    async def _start(self) -> None:
        self.shutting_down = False
        self._supervisor.open()
        for node in self.nodes.values():
            node.held = False
        await of(self.client).start()
        if self.redis is not None:
            await self._open_link(self.redis)
        await self._start_nodes(list(self.nodes.values()))

    async def _open_link(self, redis: str) -> None:
        from .._redis.config import RedisConfig
        from .._redis.link import RedisLink
        from .._redis.server import embedded

        assert self._cluster_key is not None
        url, server = await embedded(redis, self._cluster_key)
        if server is not None:
            await of(server).start(of(self).stop_nowait)  # (its crash stops the host)
            self._redis_server = server
            url = server.url
        self.link = link = RedisLink(
            url,
            cluster=self.name,
            key=self._cluster_key,
            router=self.router,
            host_id=self.host_id,
            ttl=self.registry_ttl,
        )
        link.runs.update(name for name, node in self.nodes.items() if not node.spec.remote)
        assert isinstance(self.router.directory, LocalDirectory)
        self.router.directory.foreign = link.callers
        link.on_config = self._config_changed
        link.on_config_missed = self._config_missed
        await of(link).start()
        self.config_store = RedisConfig(link, self._cluster_key)

    @as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        self.shutting_down = True
        self._supervisor.close()
        unclean: list[Exception] = []
        try:
            # Leaves first: a service's stop is launched once all that depends
            # on it is STOPPED, so no stop has to wait for another (a wide
            # graph stops with one task per service, and in its depth's time).
            sorter: graphlib.TopologicalSorter[ServiceNode] = graphlib.TopologicalSorter()
            for node in self.nodes.values():
                sorter.add(node, *node.dependents)
            stop_one = functools.partial(self._stop_one, reason=err, unclean=unclean)
            await launch_in_order(sorter, stop_one)
        finally:  # `shutting_down` stays True until the next start: no restart sneaks in
            for node in self.nodes.values():  # stopped for good: their sockets close
                node.runner.release()
            if of(self.client).state is STARTED:
                await of(self.client).stop()
            await self._close_link()
        if len(unclean) == 1:
            raise unclean[0]
        if unclean:
            raise ExceptionGroup(f"{len(unclean)} services did not stop cleanly", unclean)

    async def _close_link(self) -> None:
        link, self.link = self.link, None
        self.config_store = self._memory_config
        server, self._redis_server = self._redis_server, None
        try:
            if link is not None and of(link).state not in (READY, STOPPED):
                await of(link).stop()
        finally:
            if server is not None and of(server).state not in (READY, STOPPED):
                await of(server).stop()

    # -- starting and stopping services -------------------------------------------

    async def start_service(self, name: str) -> None:
        """Start one service, after the dependencies it needs (started as needed).

        The services that a cascade from it stopped come back too. Use it to
        bring back a service stopped with `stop_service` or whose restart
        policy gave up.
        """
        node = self[name]
        await self._as_manager(self._start_with_cascade, node)

    async def stop_service(self, name: str) -> None:
        """Stop one service, and first everything that depends on it.

        It is not restarted (whatever its policy) until `start_service`.

        Raises:
            ForcedStop: its process had to be signalled (it is STOPPED).
            Exception: what its raw stop raised (it is STOPPED all the same).
        """
        node = self[name]
        node.held = True
        await of(node).stop()
        if node.stop_error is not None:
            raise node.stop_error

    # -- pools --------------------------------------------------------------------

    def pools(self) -> list[str]:
        """The names of the services that run as pools (`replicas` > 1, or `pool`), in order."""
        return [name for name, node in self.nodes.items() if isinstance(node.runner, PoolRunner)]

    def _pool(self, name: str) -> PoolRunner:
        runner = self[name].runner
        if not isinstance(runner, PoolRunner):
            raise ClusterError(
                f"service {name!r} is not a pool: give it replicas = 2 or more (or "
                "pool = true) to reload or scale it"
            )
        return runner

    async def reload(self, name: str) -> None:
        """Replace every replica of the pool `name` by a new process, one at a time.

        Each new replica is STARTED before the one it replaces is retired
        (it gets no new request, and `spec.drain` seconds to answer those it
        has), so the pool serves throughout and its sockets stay open; its
        dependents are not touched. See `PoolRunner.reload`.

        Raises:
            KeyError: there is no such service.
            ClusterError: it is not a pool, not STARTED, or a new replica
                failed to start (the reload stops there).
        """
        await self._as_manager(self._pool(name).reload)

    async def scale(self, name: str, replicas: int) -> None:
        """Give the pool `name` this many replicas (1 to `MAX_REPLICAS`), now.

        New replicas are started together; when there are fewer, the
        highest indices are retired as a reload retires them.

        Raises:
            KeyError: there is no such service.
            TypeError, ValueError: `replicas` is not an integer from 1 to
                `MAX_REPLICAS`.
            ClusterError: it is not a pool, not STARTED, or a new replica
                failed to start.
        """
        await self._as_manager(self._pool(name).scale, replicas)

    async def _start_with_cascade(self, node: ServiceNode, supervised: bool = False) -> None:
        """Start `node`, then what its cascade stopped (the nodes that wait for it)."""
        node.held = False
        await self._start_nodes([node], supervised)
        if of(node).state is not STARTED:
            return  # supervised, and it failed again: the policy decides what next
        cascade = self._supervisor.take_cascaded(node.name)
        cascade = {n for n in cascade if self.nodes.get(n.name) is n and of(n).state is STOPPED}
        if cascade:
            await self._start_nodes(cascade, supervised)

    async def _as_manager(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `func(*args)` in a task of the manager (which owns the services), and wait."""
        if of(self).state is not STARTED:
            raise ClusterError(f"{self!r} is not STARTED")
        outcome: list[Any] = []
        done = anyio.Event()

        async def run() -> None:
            try:
                outcome.append((True, await func(*args)))
            except Exception as exc:
                outcome.append((False, exc))
            finally:
                done.set()

        of(self).start_soon(run)
        await done.wait()
        if not outcome:
            raise ClusterError(f"{self.name} stopped before this finished")
        ok, value = outcome[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    async def _start_nodes(self, targets: Iterable[ServiceNode], supervised: bool = False) -> None:
        """Start `targets` and the dependencies they need, each after its own.

        A failure stops further launches; it is raised, or with `supervised`
        handed to the restart policy of the service that failed (and the
        targets left unstarted wait for that service to come back).
        """
        targets = [t for t in targets if of(t).state is not STARTED]
        needed = closure(
            targets, lambda n: (d for d in n.dependencies if of(d).state is not STARTED)
        )
        sorter: graphlib.TopologicalSorter[ServiceNode] = graphlib.TopologicalSorter()
        for node in needed:
            sorter.add(node, *(d for d in node.dependencies if d in needed))
        failed = await launch_in_order(sorter, self._start_one)
        if supervised:
            for node, error in failed:
                self._supervisor.report(node, error)
            if failed:  # what could not start for want of it comes back when it does
                waiting = {t for t in targets if of(t).state is not STARTED} - {
                    n for n, _ in failed
                }
                self._supervisor.cascaded(failed[0][0].name, waiting)
            return
        for node, error in failed:
            error.add_note(f"while starting service {node.name!r}")
        if len(failed) == 1:
            raise failed[0][1]
        if failed:
            raise ExceptionGroup(f"{len(failed)} services failed to start", [e for _, e in failed])

    async def _start_one(
        self,
        node: ServiceNode,
        report: Report[ServiceNode],
    ) -> None:
        lifecycle = of(node)
        if lifecycle.state is STOPPING:  # still stopping from a cascade: start it once stopped
            await lifecycle.wait_state(STOPPED)
        try:
            await lifecycle.start(self._supervisor.hook(node))
        except Exception as exc:
            node.last_error = exc
            report.send_nowait((node, exc))
        else:
            self.failed.pop(node.name, None)
            report.send_nowait((node, None))

    @staticmethod
    async def _stop_one(
        node: ServiceNode,
        report: Report[ServiceNode],
        *,
        reason: BaseException | None,
        unclean: list[Exception],
    ) -> None:
        """Stop `node` with the manager's `reason`; what did not stop cleanly goes to `unclean`."""
        if of(node).state not in (READY, STOPPED):
            try:
                await of(node).stop(reason)
            except Exception as exc:  # it is STOPPED all the same; the others go on
                node.last_error = node.stop_error = exc
            if node.stop_error is not None:
                node.stop_error.add_note(f"while stopping service {node.name!r}")
                unclean.append(node.stop_error)
        report.send_nowait((node, None))


def _cluster_key(redis: str | None, key: bytes | str | None, cluster: str) -> bytes | None:
    """The cluster key a manager with `redis` needs (None without `redis`).

    Raises:
        ClusterError: `redis` is given and no key is, or it is too short.
    """
    if redis is None:
        return None
    if key is None:
        key = os.environ.get(ENV_CLUSTER_KEY)
    if key is None:
        raise ClusterError(
            f"{cluster} reaches other hosts through Redis and needs a cluster key: give "
            f"cluster_key (key_file in a cluster file) or set ${ENV_CLUSTER_KEY}"
        )
    data = key.encode() if isinstance(key, str) else bytes(key)
    short = key_problem(data, f"the cluster key of {cluster}")
    if short is not None:
        raise ClusterError(
            f"{short} (make one with `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    return data
