"""Pools: one service run as N replicas, each a process of its own (`replicas = N`).

A `PoolRunner` is the `Runner` of a node whose spec asks for more than one
replica. Each `Replica` is a small lifecycle around a `ContainerRunner`, so a
replica's process, data socket and outbox are those of any service in a
container; every replica attaches to the router under the pool's name, and
the router picks one per request (least outstanding requests first).

The pool is STARTED once every replica is; a replica that fails during the
pool's start fails it. After the start, a replica that stops on its own is
reported to the pool's `Supervisor`, which applies the service's
`RestartPolicy` to the replicas (refork after the backoff; past the
intensity the pool escalates: its node stops with an `EscalationError`, and
the manager's rules take over). The node stays STARTED, and its dependents
untouched, while replicas come and go. The addresses in `listen` are bound
once by the pool and given to every replica (socket activation), so the port
stays open across reforks. See docs/explanation/pools.md.
"""

from __future__ import annotations

import graphlib
import logging
from collections import deque

import anyio
import attrs

from ... import Startable, State, as_raw_start, as_raw_stop, of
from .._data.router import Router
from .._errors import ClusterError
from .._process.container import ServiceContainer
from .._process.failfast import FailFast
from .._process.listen import ListenSocket, bind_all
from .._process.remote import ENV_REPLICA, ENV_REPLICAS
from .launch import Report, launch_in_order
from .runners import ContainerRunner, InProcessRunner
from .services import RestartPolicy, ServiceSpec
from .supervisor import Decision, Supervisor

logger = logging.getLogger("startable.cluster")
STARTED = State.STARTED


class Replica:
    """One replica of a pool: its process, restarted by the pool's supervisor."""

    def __init__(self, pool: PoolRunner, index: int) -> None:
        self.pool = pool
        self.index = index
        #: `web#2`: the pool's name and the replica's index.
        self.name = f"{pool.spec.name}#{index}"
        self.held = False
        self.restarts = 0
        self.last_error: BaseException | None = None
        self.failures: deque[float] = deque()
        env = {**pool.spec.env, ENV_REPLICA: str(index), ENV_REPLICAS: str(pool.size)}
        spec = attrs.evolve(pool.spec, env=env, listen=(), replicas=1)  # type: ignore[arg-type]
        self.runner = ContainerRunner(spec, pool.router)
        self._starting = FailFast()

    def __repr__(self) -> str:
        return f"<Replica {self.name}: {of(self).state.name}>"

    @property
    def restart_policy(self) -> RestartPolicy:
        return self.pool.spec.restart

    @property
    def container(self) -> ServiceContainer:
        return self.runner.container

    @property
    def pid(self) -> int | None:
        return self.runner.pid

    @as_raw_start
    async def _start(self) -> None:
        self.runner.container.listeners = self.pool.listeners  # shared, never bound here
        await self.runner.start(of(self))
        self.pool.revived += 1

    @as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        await self.runner.stop(err)

    async def start_in(self, node: Startable, supervisor: Supervisor[Replica]) -> None:
        """Start it in a task of `node`'s cycle; a stop on its own goes to `supervisor`."""

        def stopped(reason: BaseException | None) -> None:
            supervisor.report(self, reason)
            self.pool.check_empty()

        await self._starting.start(node, of(self), stopped)

    async def stop_in(self, err: BaseException | None) -> None:
        await self._starting.stop(of(self), err)


class PoolRunner:
    """Runs a service as `spec.replicas` replicas (a `Runner`)."""

    def __init__(self, spec: ServiceSpec, router: Router) -> None:
        assert spec.entry is not None
        assert spec.replicas > 1
        self.spec = spec
        self.router = router
        self.size = spec.replicas
        self.replicas = [Replica(self, index) for index in range(self.size)]
        self.listeners: tuple[ListenSocket, ...] = ()
        #: How many times a replica became STARTED (the pool's `limit` watches it).
        self.revived = 0
        self._node: Startable | None = None
        self._supervisor: Supervisor[Replica] | None = None

    # -- what the node reads ----------------------------------------------------------

    @property
    def containers(self) -> tuple[ServiceContainer, ...]:
        """The replicas' containers, in index order."""
        return tuple(replica.container for replica in self.replicas)

    service = containers

    @property
    def pid(self) -> int | None:
        """The pid of its first replica that is STARTED (None: none is)."""
        return next((r.pid for r in self.replicas if of(r).state is STARTED), None)

    @property
    def live(self) -> int:
        """How many replicas are STARTED now."""
        return sum(of(replica).state is STARTED for replica in self.replicas)

    @property
    def events_dropped(self) -> int:
        return sum(replica.runner.events_dropped for replica in self.replicas)

    @property
    def backlog(self) -> int:
        return sum(replica.runner.backlog for replica in self.replicas)

    # -- the runner's part --------------------------------------------------------------

    async def start(self, node: Startable) -> None:
        self._node = node
        self._listen()
        supervisor = self._supervisor = Supervisor(
            node,
            restart=self._restart,
            is_member=lambda replica: replica.pool is self,
            notify=self._notify,
            on_exit="stop",  # a replica that stops for good ends the pool
        )
        for replica in self.replicas:
            replica.held = False
            replica.failures.clear()
        # Open before the replicas start: one that is STARTED and dies while the
        # others still start is reforked too (a failed start is not reported).
        supervisor.open()

        async def start(replica: Replica, report: Report[Replica]) -> None:
            try:
                await replica.start_in(node, supervisor)
            except Exception as exc:
                report.send_nowait((replica, exc))
            else:
                report.send_nowait((replica, None))

        # All at once (no replica waits for another), as the manager launches services.
        failed = await launch_in_order(
            graphlib.TopologicalSorter(dict.fromkeys(self.replicas, ())), start
        )
        if failed:  # the first fails the pool's start (the raw stop stops those that started)
            replica, error = failed[0]
            error.add_note(f"while starting replica {replica.name}")
            raise error

    def check_empty(self) -> None:
        """A replica is stopping: with none left STARTED, give them `spec.limit`."""
        node = self._node
        if node is not None and node.state is STARTED and self.live == 0:
            node.start_soon(self._within_limit, self.revived)

    async def _within_limit(self, revived: int) -> None:
        await anyio.sleep(self.spec.limit)
        node = self._node
        if node is not None and node.state is STARTED and self.revived == revived:
            node.stop_nowait(
                ClusterError(
                    f"pool {self.spec.name!r} had no live replica for {self.spec.limit:g}s"
                )
            )

    async def _restart(self, replica: Replica) -> None:
        node, supervisor = self._node, self._supervisor
        assert node is not None
        assert supervisor is not None
        try:
            await replica.start_in(node, supervisor)
        except Exception as exc:  # it failed again: the policy decides what next
            replica.last_error = exc
            supervisor.report(replica, exc)

    def _notify(self, name: str, decision: Decision, delay: float | None) -> None:
        if decision == "restarting":
            logger.info("%s: restarting in %.2gs", name, delay or 0)
        else:
            logger.error("%s: restarted too often: the pool escalates", name)

    async def stop(self, err: BaseException | None) -> None:
        if self._supervisor is not None:
            self._supervisor.close()
        for replica in self.replicas:
            replica.held = True
        async with anyio.create_task_group() as group:
            for replica in self.replicas:
                group.start_soon(replica.stop_in, err)

    def _listen(self) -> None:
        """Bind `spec.listen` once, for every replica, across reforks."""
        if not self.listeners and self.spec.listen:
            self.listeners = bind_all(self.spec.listen)

    def release(self) -> None:
        listeners, self.listeners = self.listeners, ()
        for listener in listeners:
            listener.socket.close()


def runner_for(spec: ServiceSpec, router: Router) -> InProcessRunner | ContainerRunner | PoolRunner:
    """The runner `spec` asks for: a pool for `replicas > 1`, a container for an
    `entry`, this process for a `factory`."""
    if spec.replicas > 1:
        return PoolRunner(spec, router)
    if spec.entry is not None:
        return ContainerRunner(spec, router)
    return InProcessRunner(spec, router)
