"""`ServiceNode`: one service in a manager's dependency graph."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import anyio

from ... import Hook, State, as_raw_start, as_raw_stop, of
from .._data.client import ServiceClient
from .._errors import ClusterError, DependencyStopped, HealthCheckFailed
from .._ipc.messages import Resources
from .._process.container import ServiceContainer
from .._process.controller import OutputLine
from .._process.listen import ListenSocket
from .._process.probes import command_problem, inherited_env, tcp_problem
from .pool import PoolRunner, Replica
from .runners import CommandRunner, ContainerRunner, InProcessRunner, Runner
from .services import RestartPolicy, ServiceSpec
from .supervisor import uptime

logger = logging.getLogger("startable.cluster")
READY, STARTED, STOPPED = State.READY, State.STARTED, State.STOPPED


class Orchestrator(Protocol):
    """What a node needs of the manager that made it."""

    @property
    def name(self) -> str: ...

    @property
    def shutting_down(self) -> bool:
        """True while everything stops: a stop is not a failure then."""
        ...


class ServiceNode:
    """One service in a `ServicesManager`: it orders its service against the others.

    A node starts its service only when every dependency is STARTED (the
    manager starts nodes in dependency order), and when it stops, everything
    that depends on it stops first. When a dependency begins stopping, for
    whatever reason, the node begins stopping in the same step with a
    `DependencyStopped` reason that names where the cascade began.

    Nodes are made by their manager, which alone starts them; read them
    through `ServicesManager.nodes`.

    Attributes:
        spec: what the service is.
        name: its name.
        dependencies: the nodes it depends on.
        dependents: the nodes that depend on it.
        parent: the node that created it, if created from inside a service.
        children: the nodes it created.
        runner: how it runs (see `Runner`): in this process, or in a container.
        container: its `ServiceContainer` (None for a service in this process).
        service: the object running now (or last): the container, or what
            `spec.factory` returned.
        restarts: how many times the manager restarted it.
        last_error: why it last stopped on its own or failed to start (None
            if it never did), or what its last stop raised.
        stop_error: what its last stop raised, if it did not stop cleanly
            (a `ForcedStop` when the stop ladder had to signal its process);
            None after a clean stop, and while it runs.
        health: with a `spec.health` check, `"starting"` from its start
            until the first check, then `"healthy"` or `"unhealthy"` (a check
            failed, fewer than `retries` in a row so far); None without one.
        health_failures: the checks that failed in a row (0 after one passed).
        health_problem: what the last failed check found (None once one passes).
    """

    def __init__(
        self,
        spec: ServiceSpec,
        manager: Orchestrator,
        dependencies: tuple[ServiceNode, ...],
        runner: Runner,
        parent: ServiceNode | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.manager = manager
        self.runner: Runner = runner
        self.dependencies = dependencies
        self.dependents: list[ServiceNode] = []
        self.parent = parent
        self.children: list[ServiceNode] = []
        self.restarts = 0
        self.last_error: BaseException | None = None
        self.stop_error: Exception | None = None
        self.started_at: float | None = None
        self.held = False  # stopped on purpose: not restarted
        self.failures: deque[float] = deque()  # monotonic times, for the restart policy
        self.health: str | None = None
        self.health_failures = 0
        self.health_problem: str | None = None

    def __repr__(self) -> str:
        return f"<ServiceNode {self.name}: {of(self).state.name}>"

    @property
    def container(self) -> ServiceContainer | None:
        """Its `ServiceContainer` (None for a service in this process)."""
        runner = self.runner
        return runner.container if isinstance(runner, ContainerRunner) else None

    @property
    def containers(self) -> tuple[ServiceContainer, ...]:
        """Its containers: one for a service in a child process, one per replica for
        a pool (`replicas`), none for a service in this process."""
        return self.runner.containers

    @property
    def replicas(self) -> tuple[Replica, ...]:
        """The replicas of a pool (`spec.is_pool`), in index order; empty for any
        other service. A reload or `scale` changes them."""
        runner = self.runner
        return tuple(runner.replicas) if isinstance(runner, PoolRunner) else ()

    def set_output(self, callback: Callable[[OutputLine], object] | None) -> None:
        """Give each line its processes write (an `OutputLine`) to `callback`,
        from their next start on: every replica of a pool, those a reload or
        `scale` starts later too. A service in this process has no output of
        its own."""
        self.runner.set_output(callback)

    @property
    def service(self) -> object | None:
        """The object running now (or last): the container, or what `spec.factory` returned."""
        return self.runner.service

    @property
    def client(self) -> ServiceClient | None:
        """The data-plane client of a service in this process while it runs (else None)."""
        runner = self.runner
        return runner.client if isinstance(runner, InProcessRunner) else None

    @property
    def listeners(self) -> tuple[ListenSocket, ...]:
        """Its listening sockets (`spec.listen`), bound at its first start and kept
        across restarts; `listener.socket.getsockname()` tells a port 0's number."""
        return self.runner.listeners

    @property
    def pid(self) -> int | None:
        """The pid of its process (None in this process, or when not running)."""
        return self.runner.pid

    @property
    def events_dropped(self) -> int:
        """Events for its process that the manager dropped since it last started.

        The manager holds a bounded number of messages for a service whose
        process does not read them (`startable.cluster.OUTBOX_CAPACITY`);
        past that, events for it are dropped and counted here (and requests
        to it fail at once with `ServiceUnavailable`). Always 0 for a
        service in this process: its subscriptions count their own.
        """
        return self.runner.events_dropped

    @property
    def backlog(self) -> int:
        """Messages the manager holds for its process, not yet written to it (0 in this process)."""
        return self.runner.backlog

    @property
    def ended_by(self) -> str | None:
        """How its process last ended, if the stop ladder ended it: `"close request"`
        (cleanly; for a `command`, after its stop signal), `"SIGTERM"` or
        `"SIGKILL"`; None otherwise (see `ServiceController.ended_by`)."""
        runner = self.runner
        if isinstance(runner, CommandRunner):
            return runner.process.ended_by if runner.process is not None else None
        container = self.container
        controller = container.controller if container is not None else None
        return controller.ended_by if controller is not None else None

    @property
    def resources(self) -> list[Resources]:
        """The resource samples of its process (a container's or a command's),
        oldest first; empty for a pool (see each replica's container), a
        service in this process, or one on another host."""
        runner = self.runner
        if isinstance(runner, CommandRunner):
            return list(runner.process.resources) if runner.process is not None else []
        container = self.container
        return container.resources if container is not None else []

    @property
    def restart_policy(self) -> RestartPolicy:
        """Its spec's restart policy (what its supervisor reads)."""
        return self.spec.restart

    @property
    def uptime(self) -> float | None:
        """Seconds since it was last STARTED (None when it is not)."""
        return uptime(self, self.started_at)

    # -- lifecycle ----------------------------------------------------------------

    @as_raw_start
    async def _start(self) -> None:
        lifecycle = of(self)
        self.stop_error = None
        if self.manager.shutting_down:  # a restart that came due while the manager stops
            raise ClusterError(f"{self.manager.name} is stopping")
        for dependency in self.dependencies:
            state = of(dependency).state
            if state is not STARTED:  # the manager started it: it has stopped since
                reason = of(dependency).statistics().stop_reason
                raise self._cascade(dependency, reason)
        for dependency in self.dependencies:  # no checkpoint since the check above
            of(dependency).add_on_stopping(self._on_dependency_stopping(dependency))
        await self.runner.start(lifecycle)
        self.started_at = time.monotonic()
        if self.spec.health is not None:
            self.health, self.health_failures, self.health_problem = "starting", 0, None
            lifecycle.start_soon(self._check_health, name=f"health check of {self.name}")

    async def _check_health(self) -> None:
        """Probe the service while it is STARTED; `retries` failures in a row stop it."""
        check = self.spec.health
        assert check is not None
        lifecycle = of(self)
        env = inherited_env(self.spec.env, self.spec.container_options.inherit_env)
        while True:
            await anyio.sleep(check.interval)
            with anyio.move_on_after(check.timeout) as probing:
                if check.command is not None:
                    problem = await command_problem(
                        check.command, env=env, cwd=self.spec.cwd, label=f"{self.name}-health"
                    )
                else:
                    assert check.port is not None
                    problem = await tcp_problem(check.host, check.port)
            if probing.cancelled_caught:
                problem = f"{check.describe()} did not answer within {check.timeout:g}s"
            if lifecycle.state is not STARTED:
                return  # stopping meanwhile: what it found no longer counts
            if problem is None:
                self.health, self.health_failures, self.health_problem = "healthy", 0, None
                continue
            self.health, self.health_problem = "unhealthy", problem
            self.health_failures += 1
            logger.warning(
                "%s: health check failed (%d of %d): %s",
                self.name,
                self.health_failures,
                check.retries,
                problem,
            )
            if self.health_failures >= check.retries:
                lifecycle.stop_nowait(HealthCheckFailed(self.name, self.health_failures, problem))
                return

    @as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        self.started_at = None
        running = [d for d in self.dependents if of(d).state not in (READY, STOPPED)]
        if running:  # what depends on this service goes first
            async with anyio.create_task_group() as group:
                for dependent in running:  # usually stopping already, by the hook below
                    group.start_soon(
                        self._stop_quietly, dependent, self._reason_for(dependent, err)
                    )
        try:
            await self.runner.stop(err)
        except Exception as exc:  # its own raw stop failed (or was forced): STOPPED anyway
            self.last_error = self.stop_error = exc

    @staticmethod
    async def _stop_quietly(node: ServiceNode, reason: BaseException | None) -> None:
        await of(node).stop(reason)  # a node's stop does not raise

    # -- the cascade --------------------------------------------------------------

    def _on_dependency_stopping(self, dependency: ServiceNode) -> Hook:
        return _Cascade(self, dependency)

    def _reason_for(
        self, dependent: ServiceNode, reason: BaseException | None
    ) -> BaseException | None:
        """Why `dependent` stops when this node stops with `reason` (while the
        manager stops: the manager's own reason, which `reason` is then)."""
        return reason if self.manager.shutting_down else dependent._cascade(self, reason)

    def _cascade(self, dependency: ServiceNode, reason: BaseException | None) -> DependencyStopped:
        if isinstance(reason, DependencyStopped):
            return DependencyStopped(self.name, dependency.name, reason.origin, reason.reason)
        return DependencyStopped(self.name, dependency.name, dependency.name, reason)


class _Cascade:
    """The on_stopping hook a node puts on each dependency's cycle: the node stops
    in the same step, with a `DependencyStopped` reason.

    One small object (not a closure, its cells and their tuple): a manager of
    many services holds one per dependency, and each is an object the cyclic
    garbage collector scans.
    """

    __slots__ = ("dependency", "node")

    def __init__(self, node: ServiceNode, dependency: ServiceNode) -> None:
        self.node = node
        self.dependency = dependency

    def __call__(self, reason: BaseException | None) -> None:
        node = self.node
        of(node).stop_nowait(self.dependency._reason_for(node, reason))
