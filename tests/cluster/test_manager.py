"""ServicesManager and ServiceNode with services in this process: every ordering rule.

Services here are small in-process lifecycles that write what happens to a
shared log; the rules are checked on the order of the log, never on timing.
tests/cluster/test_manager_processes.py checks the same rules on child processes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import anyio
import pytest

import startable
from startable import State
from startable.cluster import (
    ClusterError,
    DependencyCycleError,
    DependencyStopped,
    EscalationError,
    Permissions,
    RestartPolicy,
    ServiceDefinitionError,
    ServiceEvent,
    ServicesManager,
    ServiceSpec,
)

from ..waiting import until

pytestmark = pytest.mark.anyio
Log = list[tuple[str, str]]


class Recorded:
    """Logs its starts and stops; may fail to start, or crash once STARTED."""

    def __init__(self, name: str, log: Log, fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail
        self.reason: BaseException | None = None

    @startable.as_raw_start
    async def _start(self) -> None:
        self.log.append(("starting", self.name))
        await anyio.lowlevel.checkpoint()
        if self.fail:
            raise RuntimeError(f"{self.name} cannot start")
        self.log.append(("started", self.name))

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        self.log.append(("stopping", self.name))
        self.reason = err
        await anyio.lowlevel.checkpoint()
        self.log.append(("stopped", self.name))

    def crash(self, error: BaseException | None = None) -> None:
        startable.of(self).stop_nowait(error or RuntimeError(f"{self.name} crashed"))


def spec(
    name: str, log: Log, *depends_on: str, fail: bool = False, **options: object
) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        factory=lambda: Recorded(name, log, fail),
        depends_on=depends_on,
        **options,  # type: ignore[arg-type]
    )


def first(log: Log, event: str, name: str) -> int:
    return log.index((event, name))


def last(log: Log, event: str, name: str) -> int:
    return len(log) - 1 - log[::-1].index((event, name))


# -- definitions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ServiceSpec(name="Bad Name", factory=object), "bad service name 'Bad Name'"),
        (lambda: ServiceSpec(name="1st", factory=object), "bad service name '1st'"),
        (lambda: ServiceSpec(name="x" * 64, factory=object), "bad service name"),
        (lambda: ServiceSpec(name="a", factory=object, depends_on=["B"]), "bad service name 'B'"),
        (lambda: ServiceSpec(name="a"), "give exactly one of entry"),
        (lambda: ServiceSpec(name="a", entry="m:x", factory=object), "exactly one of entry"),
        (lambda: ServiceSpec(name="a", entry="no_colon"), "'package.module:attribute'"),
        (lambda: ServiceSpec(name="a", entry="a b:c"), "'package.module:attribute'"),
        (lambda: ServiceSpec(name="a", factory=object, depends_on=["a"]), "depends on itself"),
        (lambda: ServiceSpec(name="a", factory=object, depends_on="b"), "list of names"),
        (
            lambda: ServiceSpec(name="a", factory=object, permissions=Permissions()),
            "are for services in a child process",
        ),
        (lambda: ServiceSpec(name="a", entry="m:x", permissions="all"), "must be a Permissions"),
    ],
)
def test_bad_specs_are_refused_with_the_reason(
    make: Callable[[], ServiceSpec], message: str
) -> None:
    with pytest.raises(ServiceDefinitionError, match=message.replace("(", r"\(")):
        make()


def test_bad_restart_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="mode"):
        RestartPolicy(mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="period"):
        RestartPolicy(period=0)


def test_graph_errors_name_the_problem_and_nothing_is_created() -> None:
    log: Log = []
    with pytest.raises(ServiceDefinitionError, match="'a' depends on 'ghost', which does not"):
        ServicesManager([spec("a", log, "ghost")])
    with pytest.raises(ServiceDefinitionError, match="two services are named 'a'"):
        ServicesManager([spec("a", log), spec("a", log)])
    with pytest.raises(DependencyCycleError) as caught:
        ServicesManager(
            [spec("a", log, "b"), spec("b", log, "c"), spec("c", log, "a"), spec("d", log)]
        )
    cycle = caught.value.cycle
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"} and len(cycle) == 4
    for one, two in itertools.pairwise(cycle):  # each depends on the next
        assert {"a": "b", "b": "c", "c": "a"}[one] == two
    assert "dependency cycle: " in str(caught.value)

    manager = ServicesManager([spec("a", log)])
    with pytest.raises(ServiceDefinitionError, match="two services are named 'a'"):
        manager.create(spec("a", log))
    assert list(manager.nodes) == ["a"]


def test_creation_is_in_dependency_order() -> None:
    log: Log = []
    events: list[ServiceEvent] = []
    manager = ServicesManager()
    manager.subscribe(events.append)
    manager.create_many(
        [spec("api", log, "cache", "store"), spec("cache", log, "store"), spec("store", log)]
    )
    assert [e.service for e in events if e.kind == "created"] == ["store", "cache", "api"]
    assert list(manager.nodes) == ["store", "cache", "api"]


# -- order -------------------------------------------------------------------------


async def test_start_in_dependency_order_and_stop_in_reverse() -> None:
    log: Log = []
    manager = ServicesManager(
        [spec("api", log, "cache", "store"), spec("cache", log, "store"), spec("store", log)]
    )
    with anyio.fail_after(10):
        async with startable.running(manager):
            assert all(startable.of(n).state is State.STARTED for n in manager.nodes.values())
            assert last(log, "started", "store") < first(log, "starting", "cache")
            assert last(log, "started", "cache") < first(log, "starting", "api")
            log.clear()
    assert last(log, "stopped", "api") < first(log, "stopping", "cache")
    assert last(log, "stopped", "cache") < first(log, "stopping", "store")
    assert all(startable.of(n).state is State.STOPPED for n in manager.nodes.values())


@pytest.mark.parametrize("phase", ["start", "stop"])
async def test_independent_services_start_and_stop_concurrently(phase: str) -> None:
    """Each waits for the other to begin: this only finishes if they overlap.

    `left` and `right` both depend on `base`, which stops only after both.
    """
    began = {"left": anyio.Event(), "right": anyio.Event()}
    log: Log = []

    class Meets:
        def __init__(self, me: str, other: str) -> None:
            self.me, self.other = me, other

        async def meet(self, now: str) -> None:
            if now == phase:
                began[self.me].set()
                await began[self.other].wait()
            log.append((now, self.me))
            if now == "stop":  # nothing is asked of what it depends on until it is STOPPED
                assert startable.of(manager["base"]).state is State.STARTED

        @startable.as_raw_start
        async def _start(self) -> None:
            await self.meet("start")

        @startable.as_raw_stop
        async def _stop(self) -> None:
            await self.meet("stop")

    manager = ServicesManager(
        [
            spec("base", log),
            ServiceSpec(name="left", factory=lambda: Meets("left", "right"), depends_on=["base"]),
            ServiceSpec(name="right", factory=lambda: Meets("right", "left"), depends_on=["base"]),
        ]
    )
    with anyio.fail_after(10):
        async with startable.running(manager):
            pass
    assert max(log.index(("stop", "left")), log.index(("stop", "right"))) < first(
        log, "stopping", "base"
    )


async def test_a_dependency_is_started_when_its_dependent_starts() -> None:
    """Availability: a dependent never sees a dependency that is not STARTED."""
    seen: list[State] = []
    store_holder: list[object] = []

    class Store:
        @startable.as_raw_start
        async def _start(self) -> None:
            store_holder.append(self)
            await anyio.lowlevel.checkpoint()

    class Api:
        @startable.as_raw_start
        async def _start(self) -> None:
            seen.append(startable.of(store_holder[-1]).state)

    manager = ServicesManager(
        [
            ServiceSpec(name="api", factory=Api, depends_on=["store"]),
            ServiceSpec(name="store", factory=Store),
        ]
    )
    with anyio.fail_after(10):
        async with startable.running(manager):
            pass
    assert seen == [State.STARTED]


async def test_a_failed_start_stops_what_started_and_names_the_service() -> None:
    log: Log = []
    manager = ServicesManager([spec("store", log), spec("api", log, "store", fail=True)])
    with anyio.fail_after(10):
        with pytest.raises(RuntimeError, match="api cannot start") as caught:
            async with startable.running(manager):
                pytest.fail("the manager should not have started")
    assert "while starting service 'api'" in (caught.value.__notes__ or [])
    assert startable.of(manager["store"]).state is State.STOPPED
    assert ("stopped", "store") in log


# -- cascade and restarts ----------------------------------------------------------


def chain(log: Log, **policy: object) -> ServicesManager:
    """c depends on a, a on b."""
    restart = RestartPolicy(backoff=0, **policy)  # type: ignore[arg-type]
    return ServicesManager(
        [
            spec("b", log, restart=restart),
            spec("a", log, "b", restart=restart),
            spec("c", log, "a", restart=restart),
        ]
    )


async def test_crash_cascade_stops_dependents_first_with_reasons_naming_the_failure() -> None:
    log: Log = []
    manager = chain(log, mode="never")
    crash = RuntimeError("b lost its disk")
    with anyio.fail_after(10):
        async with startable.running(manager):
            nodes = manager.nodes
            services = {name: nodes[name].service for name in "abc"}
            log.clear()
            services["b"].crash(crash)
            await until(
                manager, lambda: all(startable.of(nodes[n]).state is State.STOPPED for n in "abc")
            )
            assert last(log, "stopped", "c") < first(log, "stopping", "a")
            reasons = {name: services[name].reason for name in "ac"}
            assert services["b"].reason is crash
            for name, via in (("a", "b"), ("c", "a")):
                reason = reasons[name]
                assert isinstance(reason, DependencyStopped)
                assert (reason.service, reason.dependency, reason.origin) == (name, via, "b")
                assert reason.reason is crash
                assert "because b failed: RuntimeError('b lost its disk')" in str(reason)
            assert manager["b"].last_error is crash
            assert startable.of(manager).state is State.STARTED  # policy "never": it stays down


async def test_on_failure_restarts_the_service_then_what_the_cascade_stopped() -> None:
    log: Log = []
    manager = chain(log)
    events: list[ServiceEvent] = []
    manager.subscribe(events.append)
    with anyio.fail_after(10):
        async with startable.running(manager):
            nodes = manager.nodes
            old = {name: nodes[name].service for name in "abc"}
            log.clear()
            old["b"].crash()
            await until(
                manager,
                lambda: all(
                    startable.of(nodes[n]).state is State.STARTED and nodes[n].service is not old[n]
                    for n in "abc"
                ),
            )
            assert last(log, "started", "b") < first(log, "starting", "a")
            assert last(log, "started", "a") < first(log, "starting", "c")
            assert (nodes["b"].restarts, nodes["a"].restarts, nodes["c"].restarts) == (1, 0, 0)
            assert [e.service for e in events if e.kind == "restarting"] == ["b"]


async def test_a_restart_due_while_the_manager_stops_does_not_happen() -> None:
    """`b`'s restart (no delay) comes due while `gate` holds the manager's stop open."""

    class Gate:
        @startable.as_raw_stop
        async def _stop(self) -> None:
            await anyio.wait_all_tasks_blocked()  # the restart has had its chance

    log: Log = []
    restart = RestartPolicy(mode="on-failure", backoff=0)
    manager = ServicesManager(
        [
            spec("b", log, restart=restart),
            spec("a", log, "b", restart=restart),
            ServiceSpec(name="gate", factory=Gate),
        ]
    )
    restarting = anyio.Event()
    manager.subscribe(lambda event: event.kind == "restarting" and restarting.set())
    with anyio.fail_after(10):
        async with startable.running(manager):
            manager["b"].service.crash()  # type: ignore[union-attr]
            await restarting.wait()
            log.clear()
    assert not [entry for entry in log if entry[0] == "starting"]
    assert all(startable.of(node).state is State.STOPPED for node in manager.nodes.values())


async def test_a_clean_stop_of_its_own_is_restarted_only_by_always() -> None:
    for mode, restarted in (("on-failure", False), ("always", True)):
        log: Log = []
        manager = ServicesManager(
            [spec("solo", log, restart=RestartPolicy(mode=mode, backoff=0))]  # type: ignore[arg-type]
        )
        with anyio.fail_after(10):
            async with startable.running(manager):
                node = manager["solo"]
                first_service = node.service
                await startable.of(first_service).stop()  # it stops itself, cleanly
                if restarted:
                    await until(manager, lambda: node.service is not first_service)  # noqa: B023
                    await startable.of(node).wait_state(State.STARTED)
                else:
                    await startable.of(node).wait_state(State.STOPPED)
                    for _ in range(20):
                        await anyio.lowlevel.checkpoint()
                    assert node.service is first_service and node.restarts == 0


async def test_too_many_failures_escalate_and_stop_everything() -> None:
    log: Log = []
    manager = chain(log, intensity=2, period=60)
    with anyio.fail_after(10):
        with pytest.raises(EscalationError) as caught:
            async with startable.running(manager):
                for _ in range(3):
                    node = manager["b"]
                    await until(manager, lambda: startable.of(node).state is State.STARTED)  # noqa: B023
                    node.service.crash()
                await anyio.sleep_forever()
    assert caught.value.service == "b" and caught.value.failures == 3
    assert "b failed 3 times within 60s" in str(caught.value)
    assert all(startable.of(n).state is State.STOPPED for n in manager.nodes.values())


async def test_restart_backoff_grows_within_the_window() -> None:
    policy = RestartPolicy(backoff=0.5, max_backoff=3)
    assert [policy.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


async def test_stop_service_holds_it_and_its_dependents_until_started_again() -> None:
    log: Log = []
    manager = chain(log)
    with anyio.fail_after(10):
        async with startable.running(manager):
            await manager.stop_service("b")
            nodes = manager.nodes
            assert all(startable.of(nodes[n]).state is State.STOPPED for n in "abc")
            reason = nodes["c"].service.reason
            assert isinstance(reason, DependencyStopped) and reason.origin == "b"
            assert reason.reason is None and "because b stopped (through a)" in str(reason)
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            assert all(startable.of(nodes[n]).state is State.STOPPED for n in "abc")
            await manager.start_service("b")
            assert all(startable.of(nodes[n]).state is State.STARTED for n in "abc")


# -- parents and children, destruction -------------------------------------------------


async def test_children_depend_on_their_parent_and_go_first() -> None:
    log: Log = []
    manager = ServicesManager([spec("plain", log), spec("parent", log, may_create_services=True)])
    with pytest.raises(ServiceDefinitionError, match="'plain' may not create services"):
        manager.create(spec("kid", log), parent="plain")
    with pytest.raises(ServiceDefinitionError, match="no such service"):
        manager.create(spec("kid", log), parent="ghost")
    child = manager.create(spec("kid", log), parent="parent")
    assert child.spec.depends_on == ("parent",) and child.parent is manager["parent"]
    events: list[ServiceEvent] = []
    manager.subscribe(events.append)
    with anyio.fail_after(10):
        async with startable.running(manager):
            assert last(log, "started", "parent") < first(log, "starting", "kid")
            log.clear()
            await manager.destroy("parent")
    assert last(log, "stopped", "kid") < first(log, "stopping", "parent")
    destroyed = [e.service for e in events if e.kind == "destroyed"]
    assert destroyed == ["kid", "parent"]
    assert list(manager.nodes) == ["plain"]


async def test_destroy_refuses_while_others_depend_and_destroy_all_goes_in_reverse() -> None:
    log: Log = []
    manager = chain(log)
    events: list[ServiceEvent] = []
    manager.subscribe(events.append)
    with anyio.fail_after(10):
        async with startable.running(manager):
            with pytest.raises(ClusterError, match="cannot destroy 'b': a depend on it"):
                await manager.destroy("b")
            await manager.destroy_all()
    assert [e.service for e in events if e.kind == "destroyed"] == ["c", "a", "b"]
    assert manager.nodes == {}
