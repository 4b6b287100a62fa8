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
stays open across reforks.

While it runs, `reload` replaces the replicas one at a time (the new one
STARTED, then the old one retired), and `scale` adds or retires replicas. A
replica is *retired* gracefully: the router gives it no new request, it is
given `spec.drain` seconds to answer those it has, and then it is stopped
(its service's own stop, with the core's drain). See
docs/explanation/pools.md.
"""

from __future__ import annotations

import graphlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import anyio
import attrs

from ... import Startable, State, StateError, as_raw_start, as_raw_stop, of
from .._data.router import Router
from .._errors import ClusterError
from .._process.container import ServiceContainer
from .._process.controller import OutputLine
from .._process.failfast import FailFast
from .._process.listen import ListenSocket, bind_all
from .._process.remote import ENV_REPLICA, ENV_REPLICAS, ENV_SERVICE
from .._process.zygote import Zygote
from .elsewhere import RemoteRunner
from .launch import Report, launch_in_order
from .runners import CommandRunner, ContainerRunner, InProcessRunner
from .services import MAX_REPLICAS, RestartPolicy, ServiceSpec
from .supervisor import Decision, Supervisor, uptime

if TYPE_CHECKING:
    from .._redis.link import RedisLink

logger = logging.getLogger("startable.cluster")
STARTED = State.STARTED
#: What a pool tells its owner of a replica: the replica's index and the delay
#: before its restart (the only thing it tells today: `"restarting"`).
ReplicaNotice = Callable[[int, float], None]


class Replica:
    """One replica of a pool: its process, restarted by the pool's supervisor.

    Read them through `ServiceNode.replicas`; `startable.of(replica)` is its
    lifecycle (STARTED while its process serves).

    Attributes:
        name: `web#2`: the pool's name and the replica's index.
        index: its place in the pool, from 0 (what its process reads as
            `this_service().replica`).
        restarts: how many times the pool restarted it (reforks).
        last_error: why it last stopped on its own, or failed to start.
        started_at: when it was last STARTED (`time.monotonic()`), while it is.
    """

    def __init__(self, pool: PoolRunner, index: int, size: int) -> None:
        self.pool = pool
        self.index = index
        #: `web#2`: the pool's name and the replica's index.
        self.name = f"{pool.spec.name}#{index}"
        self.held = False
        self.restarts = 0
        self.last_error: BaseException | None = None
        self.failures: deque[float] = deque()
        self.started_at: float | None = None
        # `size`: the pool's size when the replica is made (what it reads as `replicas`).
        env = {**pool.spec.env, ENV_REPLICA: str(index), ENV_REPLICAS: str(size)}
        spec = attrs.evolve(
            pool.spec,
            env=env,  # type: ignore[arg-type]
            listen=(),
            replicas=1,
            pool=False,
            preload=False,
            on_output=pool.on_output,
        )
        self.runner = ContainerRunner(spec, pool.router, index)
        self.runner.container.replica = index  # (its output lines say which replica)
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
        """Its process's pid while it runs."""
        return self.runner.pid

    @property
    def uptime(self) -> float | None:
        """Seconds since it was last STARTED (None when it is not)."""
        return uptime(self, self.started_at)

    @as_raw_start
    async def _start(self) -> None:
        self.runner.container.listeners = self.pool.listeners  # shared, never bound here
        self.runner.container.zygote = self.pool.zygote  # forked from it, if it preloads
        await self.runner.start(of(self))
        self.started_at = time.monotonic()
        self.pool.revived += 1

    @as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        self.started_at = None
        try:
            await self.runner.stop(err)
        finally:  # its process is gone: the role can go to another
            self.pool.role_released(self)

    async def start_in(self, node: Startable, supervisor: Supervisor[Replica]) -> None:
        """Start it in a task of `node`'s cycle; a stop on its own goes to `supervisor`."""

        def stopped(reason: BaseException | None) -> None:
            supervisor.report(self, reason)
            self.pool.check_empty()

        await self._starting.start(node, of(self), stopped)
        self.pool.give_role()

    async def stop_in(self, err: BaseException | None) -> None:
        await self._starting.stop(of(self), err)


class PoolRunner:
    """Runs a service as `spec.replicas` replicas (a `Runner`)."""

    def __init__(
        self, spec: ServiceSpec, router: Router, notify: ReplicaNotice | None = None
    ) -> None:
        assert spec.entry is not None
        assert spec.is_pool
        self.spec = spec
        self.router = router
        #: What its replicas' output lines go to (`set_output`).
        self.on_output = spec.on_output
        #: Its replicas, in index order (`scale` changes how many).
        self.replicas = [Replica(self, index, spec.replicas) for index in range(spec.replicas)]
        #: Replicas being retired (replaced by a reload, or scaled away), until stopped.
        self.retiring: set[Replica] = set()
        #: Replicas a reload is starting, until they take their place.
        self.joining: set[Replica] = set()
        #: The replica that holds the singleton role (None: none does now).
        self.holder: Replica | None = None
        #: Its fork server, while it runs (`spec.preload`).
        self.zygote: Zygote | None = None
        # Every zygote it started and has not closed: the current one, those a
        # reload is starting or replaced (their replicas are their children).
        self._zygotes: list[Zygote] = []
        self.listeners: tuple[ListenSocket, ...] = ()
        #: How many times a replica became STARTED (the pool's `limit` watches it).
        self.revived = 0
        self._notice = notify
        self._node: Startable | None = None
        self._supervisor: Supervisor[Replica] | None = None
        self._changing: anyio.Lock | None = None  # one reload or scale at a time
        self._giving = False  # the role is given from the end of the start to the stop

    @property
    def size(self) -> int:
        """How many replicas it has (STARTED or not)."""
        return len(self.replicas)

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
        if self.spec.preload:
            self.zygote = await self._zygote(node)
        supervisor = self._supervisor = Supervisor(
            node,
            restart=self._restart,
            is_member=lambda replica: replica in self.replicas or replica in self.joining,
            notify=self._notify,
            on_exit="stop",  # a replica that stops for good ends the pool
        )
        for replica in self.replicas:
            replica.held = False
            replica.failures.clear()
        # Open before the replicas start: one that is STARTED and dies while the
        # others still start is reforked too (a failed start is not reported).
        supervisor.open()
        failed = await self._launch(self.replicas)
        if not failed:  # every replica is STARTED: the role goes to the first
            self._giving = True
            self.give_role()
        if failed:  # the first fails the pool's start (the raw stop stops those that started)
            replica, error = failed[0]
            error.add_note(f"while starting replica {replica.name}")
            raise error

    async def _launch(self, replicas: Sequence[Replica]) -> list[tuple[Replica, Exception]]:
        """Start `replicas` all at once (none waits for another, as the manager
        launches services); the ones that failed, with why, first failure first."""
        node, supervisor = self._node, self._supervisor
        assert node is not None
        assert supervisor is not None

        async def start(replica: Replica, report: Report[Replica]) -> None:
            try:
                await replica.start_in(node, supervisor)
            except Exception as exc:
                report.send_nowait((replica, exc))
            else:
                report.send_nowait((replica, None))

        return await launch_in_order(graphlib.TopologicalSorter(dict.fromkeys(replicas, ())), start)

    # -- the singleton role -----------------------------------------------------------

    def give_role(self) -> None:
        """If no process holds the role, give it to the STARTED replica with the
        lowest index (from the end of the pool's start to its stop)."""
        node = self._node
        if self.holder is not None or not self._giving or node is None:
            return
        for replica in self.replicas:
            controller = replica.container.controller
            if of(replica).state is STARTED and controller is not None:
                self.holder = replica
                logger.info("%s holds the singleton role", replica.name)
                node.start_soon(controller.give_role)
                return

    def role_released(self, replica: Replica) -> None:
        """`replica`'s process has exited: if it held the role, another gets it."""
        if self.holder is replica:
            self.holder = None
            self.give_role()

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
            return
        if replica.held or replica not in self.replicas:  # retired while it restarted
            await replica.stop_in(None)

    def _notify(self, name: str, decision: Decision, delay: float | None) -> None:
        if decision == "restarting":
            logger.info("%s: restarting in %.2gs", name, delay or 0)
            replica = next((r for r in self.replicas if r.name == name), None)
            if self._notice is not None and replica is not None:
                self._notice(replica.index, delay or 0.0)
        else:
            logger.error("%s: restarted too often: the pool escalates", name)

    async def stop(self, err: BaseException | None) -> None:
        self._giving = False
        if self._supervisor is not None:
            self._supervisor.close()
        every = list(dict.fromkeys([*self.replicas, *self.joining, *self.retiring]))
        for replica in every:
            replica.held = True
        try:
            async with anyio.create_task_group() as group:
                for replica in every:
                    group.start_soon(replica.stop_in, err)
        finally:  # its replicas are gone: so may its zygotes be
            zygotes, self._zygotes, self.zygote = self._zygotes, [], None
            for zygote in zygotes:
                await zygote.aclose()

    async def _zygote(self, node: Startable) -> Zygote:
        """Start a fork server for the replicas (`spec.preload`); once it ends
        on its own, no replica can be forked, and the pool fails."""
        spec = self.spec
        assert spec.entry is not None
        options = spec.container_options
        zygote = Zygote(
            spec.entry,
            code=spec.code,
            permissions=spec.permissions.to_spec() if spec.permissions is not None else None,
            env={**spec.env, ENV_SERVICE: spec.name},
            cwd=spec.cwd,
            name=spec.name,
            python=options.python,
            resources_interval=options.resources_interval,
            inherit_env=options.inherit_env,
        )

        def ended() -> None:
            if self.zygote is zygote and node.state in (State.STARTING, STARTED):
                node.stop_nowait(
                    ClusterError(
                        f"the zygote of pool {spec.name!r} ended: no replica can be forked"
                    )
                )

        zygote.on_end = ended
        self._zygotes.append(zygote)  # (a stop while it preloads closes it too)
        try:
            await zygote.start(node.start_soon)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await zygote.aclose()
            if zygote in self._zygotes:
                self._zygotes.remove(zygote)
            if isinstance(exc, StateError) and node.state not in (State.STARTING, STARTED):
                # the pool stopped while the zygote's process was being made: its
                # readers had no owner left to run in
                raise ClusterError(f"pool {spec.name!r} stopped while its zygote started") from None
            raise
        return zygote

    # -- at run time: reload and scale ----------------------------------------------

    def _running(self, what: str) -> None:
        """Refuse `what` unless the pool is STARTED."""
        node = self._node
        if node is None or node.state is not STARTED:
            state = node.state.name if node is not None else "READY"
            raise ClusterError(f"cannot {what} pool {self.spec.name!r}: it is {state}")

    def _lock(self) -> anyio.Lock:
        if self._changing is None:
            self._changing = anyio.Lock()
        return self._changing

    async def reload(self) -> None:
        """Replace every replica by a new process, one at a time.

        For each index in turn: a new replica is started and, once it is
        STARTED and reachable, the old one is retired (no new request, up to
        `spec.drain` seconds to answer those it has, then stopped). So at
        least as many replicas as the pool has are STARTED throughout, and
        the listening sockets never close. One reload or scale runs at a
        time; a second waits for the first.

        Raises:
            ClusterError: the pool is not STARTED, or a new replica failed
                to start (the reload stops there: the replicas not yet
                replaced keep running; the error's cause says why).
        """
        self._running("reload")
        async with self._lock():
            if self.zygote is not None:  # new code: a new zygote preloads it
                assert self._node is not None
                zygote = await self._zygote(self._node)
                self._running("reload")  # (stopped while it preloaded: the stop closed it)
                self.zygote = zygote  # the former: its replicas are its children, kept till gone
            for index in range(len(self.replicas)):
                self._running("reload")  # (a failure may have stopped it meanwhile)
                old = self.replicas[index]
                new = Replica(self, index, len(self.replicas))
                await self._start_new([new], "reload")
                self.replicas[index] = new
                await self._retire(old)
            # every replica is now forked from self.zygote: the former ones
            # (this reload's, and those of reloads that failed) have no child left
            stale = [zygote for zygote in self._zygotes if zygote is not self.zygote]
            self._zygotes = [zygote for zygote in self._zygotes if zygote is self.zygote]
            for zygote in stale:
                await zygote.aclose()

    async def scale(self, size: int) -> None:
        """Grow or shrink the pool to `size` replicas.

        New replicas take the next indices and start at once, together;
        the pool returns once they are STARTED. Shrinking retires the
        highest indices (as `reload` retires a replica). Replicas that
        stay keep the pool size they started with (`this_service().replicas`).

        Raises:
            ValueError: `size` is not an integer from 1 to `MAX_REPLICAS`.
            ClusterError: the pool is not STARTED, or a new replica failed
                to start (those that failed are removed; the pool keeps the
                others).
        """
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"a pool's size is an integer, not {size!r}")
        if not 1 <= size <= MAX_REPLICAS:
            raise ValueError(f"a pool has 1 to {MAX_REPLICAS} replicas, not {size}")
        self._running("scale")
        async with self._lock():
            self._running("scale")
            have = len(self.replicas)
            if size > have:
                new = [Replica(self, index, size) for index in range(have, size)]
                self.replicas.extend(new)  # members from now: a refork applies to them
                await self._start_new(new, f"scale to {size}")
            elif size < have:
                gone = self.replicas[size:]
                del self.replicas[size:]
                async with anyio.create_task_group() as group:
                    for replica in gone:
                        group.start_soon(self._retire, replica)

    async def _start_new(self, new: Sequence[Replica], what: str) -> None:
        """Start `new` (at once, together); a failure is a ClusterError, and the
        replicas that failed are stopped and no longer the pool's."""
        self._running(what)
        self.joining.update(new)  # the pool's from now: reforked, and stopped with it
        try:
            failed = await self._launch(new)
        finally:
            self.joining.difference_update(new)
        if not failed:
            return
        for replica, _ in failed:
            replica.held = True
            if replica in self.replicas:
                self.replicas.remove(replica)
            await replica.stop_in(None)
        replica, error = failed[0]
        raise ClusterError(
            f"cannot {what} pool {self.spec.name!r}: replica {replica.name} failed to "
            f"start: {type(error).__name__}: {error}"
        ) from error

    async def _retire(self, replica: Replica) -> None:
        """No new request for `replica`; let it answer those it has (`spec.drain`), then stop it."""
        replica.held = True
        self.retiring.add(replica)
        try:
            with anyio.move_on_after(self.spec.drain):
                await replica.runner.withdraw().wait()
            try:
                await replica.stop_in(None)
            except Exception as exc:  # it is stopped all the same (signalled: ForcedStop)
                logger.warning("%s: retired, but did not stop cleanly: %s", replica.name, exc)
        finally:
            self.retiring.discard(replica)

    def set_output(self, callback: Callable[[OutputLine], object] | None) -> None:
        self.on_output = callback
        for replica in self.replicas:
            replica.runner.set_output(callback)

    def _listen(self) -> None:
        """Bind `spec.listen` once, for every replica, across reforks."""
        if not self.listeners and self.spec.listen:
            self.listeners = bind_all(self.spec.listen)

    def release(self) -> None:
        listeners, self.listeners = self.listeners, ()
        for listener in listeners:
            listener.socket.close()


def runner_for(
    spec: ServiceSpec,
    router: Router,
    notify: ReplicaNotice | None = None,
    link: Callable[[], RedisLink | None] = lambda: None,
) -> InProcessRunner | ContainerRunner | CommandRunner | PoolRunner | RemoteRunner:
    """The runner `spec` asks for: another host's (`spec.remote`, through
    `link()`), a pool (`spec.is_pool`, telling `notify` of its replicas'
    restarts), a container for an `entry`, a program for a `command`, this
    process for a `factory`."""
    if spec.remote:
        return RemoteRunner(spec, link)
    if spec.is_pool:
        return PoolRunner(spec, router, notify)
    if spec.entry is not None:
        return ContainerRunner(spec, router)
    if spec.command is not None:
        return CommandRunner(spec)
    return InProcessRunner(spec, router)
