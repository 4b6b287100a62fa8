"""Composition, aggregation, spontaneous stops and crash cascades."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import startable
from startable import State, StateError

from ..probes import Probe

pytestmark = pytest.mark.anyio

READY, STARTING, STARTED, STOPPING, STOPPED = State


def contains(exc: BaseException, target: BaseException) -> bool:
    """Whether ``target`` is ``exc`` or inside it (groups)."""
    if exc is target:
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(contains(inner, target) for inner in exc.exceptions)
    return False


class Parent:
    """The seed's composition example, in Python."""

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.child1 = Probe("child1", log)
        self.child2 = Probe("child2", log)
        self.log = log
        self.reasons: list[BaseException | None] = []

    @startable.as_raw_start
    async def _start(self) -> None:
        await startable.of(self.child1).start(startable.of(self).stop)
        await startable.of(self.child2).start(startable.of(self).stop)

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        self.reasons.append(err)
        self.log.append(("parent", "stop", err))
        await startable.of(self.child2).stop()
        await startable.of(self.child1).stop()

    @startable.assert_state()
    async def use(self) -> str:
        return await self.child1.ping()


async def test_composition_starts_in_order_and_stops_in_reverse() -> None:
    log: list[tuple[Any, ...]] = []
    parent = Parent(log)
    with anyio.fail_after(5):
        async with startable.running(parent):
            assert await parent.use() == "pong"
    assert [entry[:2] for entry in log] == [
        ("child1", "start"),
        ("child1", "started"),
        ("child2", "start"),
        ("child2", "started"),
        ("parent", "stop"),
        ("child2", "stop"),
        ("child2", "stopped"),
        ("child1", "stop"),
        ("child1", "stopped"),
    ]


async def test_child_stopping_on_its_own_stops_the_parent_in_the_same_step() -> None:
    log: list[tuple[Any, ...]] = []
    parent = Parent(log)
    reason = ConnectionError("lost")
    with anyio.fail_after(5):
        with pytest.raises(ConnectionError) as caught:
            async with startable.running(parent):
                startable.of(parent.child1).stop_nowait(reason)
                # Synchronously, before any other task ran:
                assert startable.of(parent.child1).state is STOPPING
                assert startable.of(parent).state is STOPPING
                with pytest.raises(StateError):
                    await parent.use()
                await anyio.sleep_forever()
    assert caught.value is reason
    assert parent.reasons == [reason]
    assert startable.of(parent.child1).state is STOPPED
    assert startable.of(parent.child2).state is STOPPED
    assert parent.child2.stop_reasons == [None]


async def test_child_awaiting_its_own_stop_from_another_task_stops_the_parent() -> None:
    log: list[tuple[Any, ...]] = []
    parent = Parent(log)
    reason = ConnectionError("lost")
    parent_state_when_child_stops: list[State] = []
    parent.child1.on_stop = lambda: parent_state_when_child_stops.append(startable.of(parent).state)

    with anyio.fail_after(5):
        with pytest.raises(ConnectionError):
            async with startable.running(parent):
                await startable.of(parent.child1).stop(reason)
                await anyio.sleep_forever()
    assert parent_state_when_child_stops == [STOPPING]
    assert parent.reasons == [reason]


async def test_child_crashing_while_parent_starts_stops_it_after_its_raw_start() -> None:
    log: list[tuple[Any, ...]] = []
    parent = Parent(log)
    reason = ConnectionError("child1 died while child2 was starting")
    parent.child2.start_gate = anyio.Event()

    async def crash_child1() -> None:
        await parent.child2.start_entered.wait()
        startable.of(parent.child1).stop_nowait(reason)
        assert startable.of(parent).state is STARTING  # the stop waits for the raw start
        parent.child2.start_gate.set()  # type: ignore[union-attr]

    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as tg:
            tg.start_soon(crash_child1)
            await startable.of(parent).start()  # the start itself succeeds
            await startable.of(parent).wait_state(STOPPED)
    assert parent.reasons == [reason]
    assert startable.of(parent.child2).state is STOPPED


class Node:
    """A tree node: composes its children; can fail in one phase."""

    def __init__(
        self,
        name: str,
        log: list[tuple[Any, ...]],
        children: tuple[Node, ...] = (),
    ) -> None:
        self.name = name
        self.log = log
        self.children = children
        self.fail_phase: str | None = None
        self.error: Exception = RuntimeError(f"{name} failed")
        self.go = anyio.Event()
        self.start_calls = 0
        self.stop_reasons: list[BaseException | None] = []

    def __repr__(self) -> str:
        return f"Node({self.name})"

    @startable.as_raw_start
    async def _start(self) -> None:
        self.start_calls += 1
        self.log.append((self.name, "start"))
        for child in self.children:
            await startable.of(child).start(startable.of(self).stop)
        if self.fail_phase == "start":
            raise self.error
        if self.fail_phase == "running":
            startable.of(self).start_soon(self._crash_when_told)

    async def _crash_when_told(self) -> None:
        await self.go.wait()
        raise self.error

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        self.stop_reasons.append(err)
        self.log.append((self.name, "stop"))
        for child in reversed(self.children):
            await startable.of(child).stop()
        if self.fail_phase == "stop":
            raise self.error


def build_tree(log: list[tuple[Any, ...]]) -> dict[str, Node]:
    leaf = Node("leaf", log)
    leaf_sibling = Node("leaf-sibling", log)
    middle = Node("middle", log, (leaf, leaf_sibling))
    middle_sibling = Node("middle-sibling", log)
    top = Node("top", log, (middle, middle_sibling))
    return {n.name: n for n in (top, middle, middle_sibling, leaf, leaf_sibling)}


ANCESTORS = {"top": [], "middle": ["top"], "leaf": ["middle", "top"]}


@pytest.mark.parametrize("level", ["top", "middle", "leaf"])
@pytest.mark.parametrize("phase", ["start", "running", "stop"])
async def test_three_levels_with_a_crash_at_each_level_and_phase(level: str, phase: str) -> None:
    log: list[tuple[Any, ...]] = []
    tree = build_tree(log)
    failing = tree[level]
    failing.fail_phase = phase
    with anyio.fail_after(5):
        with pytest.raises(BaseException) as caught:
            async with startable.running(tree["top"]):
                if phase == "running":
                    failing.go.set()
                    await anyio.sleep_forever()
    assert contains(caught.value, failing.error), caught.value
    for node in tree.values():
        state = startable.of(node).state
        # Every node is either untouched or fully stopped, each raw hook at most once.
        assert state in (READY, STOPPED), (node, state)
        assert node.start_calls <= 1
        assert len(node.stop_reasons) == node.start_calls, node
    if phase == "running":
        # The crash cascades up with its reason; the parent's raw stop stops the rest.
        for ancestor in ANCESTORS[level]:
            assert tree[ancestor].stop_reasons == [failing.error], ancestor
        assert failing.stop_reasons == [failing.error]
    if phase == "start":
        # Nodes after the failing one never started.
        assert failing.stop_reasons == [failing.error]


async def test_aggregation_injected_child_shared_by_two_parents() -> None:
    log: list[tuple[Any, ...]] = []
    shared = Probe("shared", log)

    class User:
        def __init__(self, dependency: Probe) -> None:
            self.dependency = dependency
            self.reasons: list[BaseException | None] = []

        @startable.as_raw_start
        async def _start(self) -> None:
            await startable.of(self.dependency).start(startable.of(self).stop)

        @startable.as_raw_stop
        async def _stop(self, err: BaseException | None) -> None:
            self.reasons.append(err)

    first, second = User(shared), User(shared)
    reason = RuntimeError("shared dependency failed")
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(first).start()
            await startable.of(second).start()
            assert shared.start_calls == 1
            await startable.of(shared).stop(reason)
            await startable.of(first).wait_state(STOPPED)
            await startable.of(second).wait_state(STOPPED)
    assert first.reasons == second.reasons == [reason]


async def test_children_left_running_are_stopped_by_the_owner_with_named_errors() -> None:
    log: list[tuple[Any, ...]] = []

    class Careless:
        def __init__(self) -> None:
            self.a = Probe("a", log)
            self.b = Probe("b", log)
            self.a.fail_stop = KeyError("a")
            self.b.fail_stop = ValueError("b")

        @startable.as_raw_start
        async def _start(self) -> None:
            await startable.of(self.a).start()
            await startable.of(self.b).start()

        @startable.as_raw_stop
        async def _stop(self) -> None:
            log.append(("careless", "stop"))  # forgets its children

    careless = Careless()
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(careless).start()
            with pytest.raises(ExceptionGroup) as caught:
                await startable.of(careless).stop()
    assert startable.of(careless.a).state is STOPPED
    assert startable.of(careless.b).state is STOPPED
    # After the raw stop, newest first.
    order = [entry[0] for entry in log if entry[1] == "stop"]
    assert order == ["careless", "b", "a"]
    group = caught.value
    assert {type(e) for e in group.exceptions} == {KeyError, ValueError}
    for error in group.exceptions:
        assert any("left running" in note and "Probe" in note for note in error.__notes__)


async def test_composition_with_a_failing_second_child_start() -> None:
    log: list[tuple[Any, ...]] = []
    parent = Parent(log)
    boom = OSError("child2 cannot start")
    parent.child2.fail_start = boom
    with anyio.fail_after(5):
        async with startable.open_owner():
            with pytest.raises(OSError) as caught:
                await startable.of(parent).start()
    assert caught.value is boom
    assert parent.reasons == [boom]
    assert startable.of(parent.child1).state is STOPPED
    assert startable.of(parent.child2).state is STOPPED
    assert parent.child1.stop_calls == 1


class TestAddOnStopping:
    """`add_on_stopping`: the synchronous, non-holding way to watch a cycle."""

    async def test_the_hook_gets_the_reason_once_even_if_added_twice(self) -> None:
        probe = Probe()
        seen: list[BaseException | None] = []
        reason = RuntimeError("going")
        with anyio.fail_after(5):
            async with startable.open_owner():
                await startable.of(probe).start()
                startable.of(probe).add_on_stopping(seen.append)
                startable.of(probe).add_on_stopping(seen.append)
                await startable.of(probe).stop(reason)
        assert seen == [reason]

    async def test_refused_with_no_cycle_to_watch(self) -> None:
        probe = Probe()
        with pytest.raises(StateError, match="accepted in STARTING and STARTED, not READY"):
            startable.of(probe).add_on_stopping(print)
        with anyio.fail_after(5):
            async with startable.open_owner():
                await startable.of(probe).start()
                await startable.of(probe).stop()
        with pytest.raises(StateError, match="not STOPPED"):
            startable.of(probe).add_on_stopping(print)

    async def test_not_called_when_the_start_it_watched_fails(self) -> None:
        probe = Probe()
        probe.start_gate = anyio.Event()
        probe.fail_start = ValueError("no")
        seen: list[BaseException | None] = []
        outcome: list[BaseException] = []

        async def start() -> None:
            try:
                await startable.of(probe).start()
            except ValueError as exc:
                outcome.append(exc)

        with anyio.fail_after(5):
            async with startable.open_owner(), anyio.create_task_group() as tasks:
                tasks.start_soon(start)
                await probe.start_entered.wait()
                startable.of(probe).add_on_stopping(seen.append)
                probe.start_gate.set()
        assert outcome == [probe.fail_start]
        assert seen == []
        assert startable.of(probe).state is STOPPED

    async def test_watching_does_not_hold(self) -> None:
        """An owner that only watched does not stop the lifecycle when it ends."""
        probe = Probe()
        with anyio.fail_after(5):
            async with startable.open_owner():
                await startable.of(probe).start()
                async with startable.open_owner():
                    startable.of(probe).add_on_stopping(lambda reason: None)
                assert startable.of(probe).state is STARTED
        assert startable.of(probe).state is STOPPED
