"""assert_state(drain=...): a stop lets guarded calls in flight finish before its raw stop."""

from __future__ import annotations

import math

import anyio
import pytest

import startable
from startable import AbortedError, DefinitionError, State, StateError

pytestmark = pytest.mark.anyio

READY, STARTING, STARTED, STOPPING, STOPPED = State


class Store:
    """`put` waits at `gate` halfway, as a round trip to storage would."""

    def __init__(self) -> None:
        self.data: dict[str, int] | None = None
        self.gate = anyio.Event()
        self.entered = anyio.Event()
        self.log: list[str] = []

    @startable.as_raw_start
    async def _open(self) -> None:
        self.data = {}

    @startable.as_raw_stop
    async def _close(self) -> None:
        self.log.append("raw stop")
        self.data = None

    async def _put(self, key: str) -> int:
        assert self.data is not None
        self.entered.set()
        await self.gate.wait()
        self.data[key] = 1  # TypeError if the raw stop ran meanwhile
        self.log.append(f"put {key}")
        return 1

    @startable.assert_state(drain=True)
    async def put(self, key: str) -> int:
        return await self._put(key)

    @startable.assert_state(drain=0.01)
    async def put_briefly(self, key: str) -> int:
        return await self._put(key)

    @startable.assert_state(State.STARTED, State.STOPPING, drain=0.01)
    async def put_late(self, key: str) -> int:
        return await self._put(key)

    @startable.assert_state()
    async def put_undrained(self, key: str) -> int:
        return await self._put(key)


async def test_the_stop_waits_for_a_call_in_flight_before_the_raw_stop() -> None:
    store = Store()
    results: list[int] = []

    async def call() -> None:
        results.append(await store.put("k"))

    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as group:
            await startable.of(store).start()
            group.start_soon(call)
            await store.entered.wait()
            group.start_soon(startable.of(store).stop)
            await startable.of(store).wait_state(STOPPING)
            assert store.log == []  # the raw stop has not run
            with pytest.raises(StateError):
                await store.put("refused")  # new calls are refused as ever
            store.gate.set()
            await startable.of(store).wait_state(STOPPED)
    assert results == [1]
    assert store.log == ["put k", "raw stop"]


async def test_a_call_that_outlasts_its_drain_timeout_is_cut_short() -> None:
    store = Store()
    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await store.put_briefly("k")
        except AbortedError as exc:
            errors.append(exc)

    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as group:
            await startable.of(store).start()
            group.start_soon(call)
            await store.entered.wait()
            await startable.of(store).stop()  # the gate never opens
    assert store.log == ["raw stop"]
    (error,) = errors
    assert "put_briefly() was cut short" in str(error) and "0.01s" in str(error)


async def test_a_call_that_begins_while_draining_is_bounded_too() -> None:
    store = Store()
    errors: list[BaseException] = []

    async def call(method: str) -> None:
        try:
            await getattr(store, method)(method)
        except AbortedError as exc:
            errors.append(exc)

    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as group:
            await startable.of(store).start()
            group.start_soon(call, "put_briefly")
            await store.entered.wait()
            group.start_soon(startable.of(store).stop)
            await startable.of(store).wait_state(STOPPING)
            store.entered = anyio.Event()
            group.start_soon(call, "put_late")  # allowed while STOPPING
            await store.entered.wait()
            await startable.of(store).wait_state(STOPPED)
    assert len(errors) == 2
    assert store.log == ["raw stop"]


async def test_a_forced_stop_cuts_the_calls_short_and_still_runs_the_raw_stop() -> None:
    store = Store()
    cancelled: list[str] = []

    async def call() -> None:
        try:
            await store.put("k")
        except AbortedError as exc:
            cancelled.append(str(exc))

    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as group:
            await startable.of(store).start()
            group.start_soon(call)
            await store.entered.wait()
            with anyio.CancelScope() as forced:
                group.start_soon(lambda: _cancel_when_stopping(store, forced))
                await startable.of(store).stop()
    assert cancelled == ["Store.put() was cut short: the stop was forced"]
    assert store.log == ["raw stop"]
    assert startable.of(store).state is STOPPED


async def _cancel_when_stopping(store: Store, scope: anyio.CancelScope) -> None:
    await startable.of(store).wait_state(STOPPING)
    await anyio.lowlevel.checkpoint()
    scope.cancel()


async def test_without_drain_the_raw_stop_runs_under_the_call() -> None:
    # What drain is for: the same call, undrained, finds its storage gone.
    store = Store()
    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await store.put_undrained("k")
        except TypeError as exc:
            errors.append(exc)

    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as group:
            await startable.of(store).start()
            group.start_soon(call)
            await store.entered.wait()
            await startable.of(store).stop()
            assert store.log == ["raw stop"]
            store.gate.set()
    assert len(errors) == 1


def test_drain_is_checked_when_the_class_is_defined() -> None:
    with pytest.raises(DefinitionError, match="coroutine methods"):

        class Plain:
            @startable.assert_state(drain=True)
            def get(self) -> int:
                return 1

    for bad in (0, -1.0, "soon"):
        with pytest.raises(DefinitionError, match="positive number"):
            startable.assert_state(drain=bad)  # type: ignore[arg-type]


def test_drain_timeout_tells_the_bound() -> None:
    assert startable.drain_timeout(Store.put) == 10.0
    assert startable.drain_timeout(Store.put_briefly) == 0.01
    assert startable.drain_timeout(Store.put_undrained) is None
    assert startable.drain_timeout(len) is None
    assert startable.guarded_states(Store.put) == {STARTED}

    class Forever:
        @startable.assert_state(drain=math.inf)
        async def get(self) -> int:
            return 1

    assert startable.drain_timeout(Forever.get) == math.inf
