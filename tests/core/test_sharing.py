"""A lifecycle started by several owners is held by all of them (aggregation)."""

from __future__ import annotations

import anyio
import pytest

import startable
from startable import State, StoppedError

from ..probes import Probe

pytestmark = pytest.mark.anyio

READY, STARTING, STARTED, STOPPING, STOPPED = State


class User:
    """Is handed a dependency; starts it with its own stop as hook; never stops it."""

    def __init__(self, name: str, dependency: Probe) -> None:
        self.name = name
        self.dependency = dependency
        self.reasons: list[BaseException | None] = []

    def __repr__(self) -> str:
        return f"User({self.name})"

    @startable.as_raw_start
    async def _start(self) -> None:
        await startable.of(self.dependency).start(startable.of(self).stop)

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        self.reasons.append(err)


class Closer(User):
    """Like User, but its raw stop stops the dependency it was handed."""

    async def _stop(self, err: BaseException | None) -> None:
        self.reasons.append(err)
        await startable.of(self.dependency).stop()


async def test_stopping_the_first_user_leaves_the_shared_child_to_the_second() -> None:
    pool = Probe("pool")
    first, second = User("first", pool), User("second", pool)
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(first).start()
            await startable.of(second).start()
            await startable.of(first).stop()
            # first let go; second still holds the pool, which keeps running.
            assert startable.of(pool).state is STARTED
            assert startable.of(second).state is STARTED
            assert pool.stop_calls == 0
            await startable.of(second).stop()
            # The last holder let go: the pool is stopped, with no reason.
            assert startable.of(pool).state is STOPPED
            assert pool.stop_reasons == [None]
    assert first.reasons == [None] and second.reasons == [None]


async def test_the_order_of_letting_go_does_not_matter() -> None:
    pool = Probe("pool")
    first, second = User("first", pool), User("second", pool)
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(first).start()
            await startable.of(second).start()
            await startable.of(second).stop()  # a holder that is not the owner lets go
            assert startable.of(pool).state is STARTED
            await startable.of(first).stop()
            assert startable.of(pool).state is STOPPED
    assert second.reasons == [None]


async def test_an_error_of_the_shared_child_still_stops_every_user() -> None:
    pool = Probe("pool")
    first, second = User("first", pool), User("second", pool)
    reason = ConnectionError("database went away")
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(first).start()
            await startable.of(second).start()
            startable.of(pool).stop_nowait(reason)
            await startable.of(first).wait_state(STOPPED)
            await startable.of(second).wait_state(STOPPED)
    assert first.reasons == second.reasons == [reason]


async def test_a_user_that_stops_a_shared_child_tells_the_others_why() -> None:
    pool = Probe("pool")
    closer, second = Closer("closer", pool), User("second", pool)
    why = RuntimeError("closer was told to stop")
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(closer).start()
            await startable.of(second).start()
            await startable.of(closer).stop(why)
            await startable.of(second).wait_state(STOPPED)
    (reason,) = second.reasons
    assert isinstance(reason, StoppedError)
    assert "Closer 'closer' at" in str(reason) and "User 'second' at" in str(reason)
    assert reason.__cause__ is why
    assert pool.stop_reasons == [reason]  # the pool itself is told too


async def test_a_user_in_an_outer_block_hears_why_the_inner_block_stopped_its_child() -> None:
    pool = Probe("pool")
    user = User("outer", pool)
    pool_started = anyio.Event()
    inner_may_end = anyio.Event()

    async def inner_block() -> None:
        async with startable.open_owner():
            await startable.of(pool).start()
            pool_started.set()
            await inner_may_end.wait()

    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as group:
            group.start_soon(inner_block)
            await pool_started.wait()
            await startable.of(user).start()  # holds the pool from the outer block
            inner_may_end.set()
            await startable.of(user).wait_state(STOPPED)
    (reason,) = user.reasons
    assert isinstance(reason, StoppedError)
    assert "open_owner()" in str(reason) and "User '" in str(reason)


async def test_running_a_user_whose_shared_child_is_let_go_raises_nothing() -> None:
    # Under running() (and so `startable run`), the second user no longer
    # stops, "cleanly", because the first one did.
    pool = Probe("pool")
    first, second = User("first", pool), User("second", pool)
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(first).start()
            async with startable.running(second):
                await startable.of(first).stop()
                assert await pool.ping() == "pong"
                assert startable.of(second).state is STARTED


async def test_a_child_is_never_held_by_what_it_owns() -> None:
    # A task of the child starts the parent again (a no-op: it is STARTED).
    # The child must not become a holder of its own parent: each would then
    # keep the other running, and nothing would ever stop them.
    parent = Probe("parent")
    child = Probe("child")
    restarted = anyio.Event()

    async def start_the_parent_again() -> None:
        await startable.of(parent).wait_state(STARTED)
        await startable.of(parent).start()
        restarted.set()
        await anyio.sleep_forever()

    async def child_spawns() -> None:
        startable.of(child).start_soon(start_the_parent_again)

    async def parent_starts_child() -> None:
        await startable.of(child).start()

    child.on_start = child_spawns
    parent.on_start = parent_starts_child
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(parent).start()
            await restarted.wait()
        assert startable.of(parent).state is STOPPED
        assert startable.of(child).state is STOPPED


async def test_statistics_count_held_children() -> None:
    pool = Probe("pool")
    first, second = User("first", pool), User("second", pool)
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(first).start()
            await startable.of(second).start()
            assert startable.of(first).statistics().owned == 1
            assert startable.of(second).statistics().owned == 1
            await startable.of(first).stop()
            assert startable.of(second).statistics().owned == 1
