"""Every row of the lifecycle table (DESIGN.md §2), on trio and asyncio."""

from __future__ import annotations

import contextlib

import anyio
import pytest

import startable
from startable import State, StateError

from ..probes import Probe, wait_until

pytestmark = pytest.mark.anyio

READY, STARTING, STARTED, STOPPING, STOPPED = State


# -- READY -------------------------------------------------------------------


async def test_ready_start_runs_raw_start_once_and_reaches_started() -> None:
    probe = Probe()
    with anyio.fail_after(5):
        async with startable.open_owner():
            assert startable.of(probe).state is READY
            await startable.of(probe).start()
            assert startable.of(probe).state is STARTED
            assert probe.start_calls == 1
            await startable.of(probe).stop()


async def test_ready_stop_goes_to_stopped_without_any_raw_hook() -> None:
    probe = Probe()
    with anyio.fail_after(5):
        await startable.of(probe).stop()
    assert startable.of(probe).state is STOPPED
    assert probe.start_calls == probe.stop_calls == 0


async def test_ready_start_failure_cleans_up_and_raises_the_original_error() -> None:
    probe = Probe()
    boom = ValueError("boom")
    probe.fail_start = boom
    with anyio.fail_after(5):
        async with startable.open_owner():
            with pytest.raises(ValueError) as caught:
                await startable.of(probe).start()
    assert caught.value is boom
    assert startable.of(probe).state is STOPPED
    assert probe.stop_reasons == [boom]  # raw stop ran with the error
    assert startable.of(probe).statistics().last_error is boom


async def test_failed_start_whose_raw_stop_also_fails_still_raises_the_start_error() -> None:
    probe = Probe()
    probe.fail_start = ValueError("start")
    probe.fail_stop = KeyError("stop")
    with anyio.fail_after(5):
        async with startable.open_owner():
            with pytest.raises(ValueError, match="start") as caught:
                await startable.of(probe).start()
    assert startable.of(probe).state is STOPPED
    assert any("KeyError" in note for note in caught.value.__notes__)


# -- STARTING ----------------------------------------------------------------


async def test_starting_start_joins_and_raw_start_runs_once() -> None:
    probe = Probe()
    probe.start_gate = anyio.Event()
    results: list[str] = []

    async def starter(tag: str) -> None:
        await startable.of(probe).start()
        results.append(tag)

    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as tg:
            tg.start_soon(starter, "first")
            await probe.start_entered.wait()
            tg.start_soon(starter, "second")
            tg.start_soon(starter, "third")
            await anyio.wait_all_tasks_blocked()
            assert startable.of(probe).state is STARTING
            assert results == []
            probe.start_gate.set()
    assert sorted(results) == ["first", "second", "third"]
    assert probe.start_calls == 1


async def test_starting_start_joiners_see_the_same_failure() -> None:
    probe = Probe()
    probe.start_gate = anyio.Event()
    boom = ValueError("boom")
    probe.fail_start = boom
    seen: list[BaseException] = []

    async def starter() -> None:
        try:
            await startable.of(probe).start()
        except ValueError as exc:
            seen.append(exc)

    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(starter)
            await probe.start_entered.wait()
            probe.start_gate.set()
    assert seen == [boom, boom, boom]
    assert all(exc is boom for exc in seen)
    assert probe.start_calls == 1 and probe.stop_calls == 1


async def test_starting_stop_waits_for_raw_start_then_stops() -> None:
    log: list[tuple[object, ...]] = []
    probe = Probe(log=log)
    probe.start_gate = anyio.Event()
    reason = RuntimeError("stop while starting")
    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as tg:
            tg.start_soon(startable.of(probe).start)
            await probe.start_entered.wait()
            stopped = anyio.Event()

            async def stopper() -> None:
                await startable.of(probe).stop(reason)
                stopped.set()

            tg.start_soon(stopper)
            await wait_until(lambda: startable.of(probe)._cycle.pending)  # type: ignore[union-attr]
            assert startable.of(probe).state is STARTING
            assert probe.stop_calls == 0
            probe.start_gate.set()
            await stopped.wait()
    assert startable.of(probe).state is STOPPED
    assert [entry[1] for entry in log] == ["start", "started", "stop", "stopped"]
    assert probe.stop_reasons == [reason]


@pytest.mark.parametrize("start_fails", [False, True])
async def test_starting_stop_returns_only_once_stopped(start_fails: bool) -> None:
    # The test above let through a stop() that returned as soon as it had
    # scheduled the stop (the race checker found that mutant; this test did not).
    probe = Probe()
    probe.start_gate = anyio.Event()
    if start_fails:
        probe.fail_start = OSError("cannot start")
    when_stop_returned: list[State] = []
    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as tg:

            async def start() -> None:
                with pytest.raises(OSError) if start_fails else contextlib.nullcontext():
                    await startable.of(probe).start()

            async def stopper() -> None:
                await startable.of(probe).stop()
                when_stop_returned.append(startable.of(probe).state)

            tg.start_soon(start)
            await probe.start_entered.wait()
            tg.start_soon(stopper)
            await wait_until(lambda: startable.of(probe)._cycle.pending)  # type: ignore[union-attr]
            probe.start_gate.set()
    assert when_stop_returned == [STOPPED]


async def test_starting_stop_when_raw_start_fails_cleans_up_once() -> None:
    probe = Probe()
    probe.start_gate = anyio.Event()
    boom = ValueError("boom")
    probe.fail_start = boom
    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as tg:
            failures: list[BaseException] = []

            async def starter() -> None:
                try:
                    await startable.of(probe).start()
                except ValueError as exc:
                    failures.append(exc)

            tg.start_soon(starter)
            await probe.start_entered.wait()
            done = anyio.Event()

            async def stopper() -> None:
                await startable.of(probe).stop(KeyError("ignored"))
                done.set()

            tg.start_soon(stopper)
            await wait_until(lambda: startable.of(probe)._cycle.pending)  # type: ignore[union-attr]
            probe.start_gate.set()
            await done.wait()
    assert failures == [boom]
    assert probe.stop_reasons == [boom]  # the start error, not the stop's reason
    assert startable.of(probe).state is STOPPED


# -- STARTED -----------------------------------------------------------------


async def test_started_start_returns_at_once() -> None:
    probe = Probe()
    with anyio.fail_after(5):
        async with startable.running(probe):
            await startable.of(probe).start()
            await startable.of(probe).start()
            assert probe.start_calls == 1
            assert startable.of(probe).state is STARTED


async def test_started_stop_calls_hooks_with_err_then_raw_stop() -> None:
    log: list[tuple[object, ...]] = []
    probe = Probe(log=log)
    reason = RuntimeError("why")
    seen: list[tuple[BaseException | None, State]] = []

    def hook(err: BaseException | None) -> None:
        seen.append((err, startable.of(probe).state))
        log.append(("hook",))

    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(probe).start(hook)
            await startable.of(probe).stop(reason)
    assert seen == [(reason, STOPPING)]
    assert log.index(("hook",)) < log.index(("probe", "stop", reason))
    assert probe.stop_reasons == [reason]


async def test_started_stop_raw_stop_failure_still_ends_stopped_and_raises() -> None:
    probe = Probe()
    boom = OSError("disk")
    probe.fail_stop = boom
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(probe).start()
            with pytest.raises(OSError) as caught:
                await startable.of(probe).stop()
    assert caught.value is boom
    assert startable.of(probe).state is STOPPED


# -- STOPPING ----------------------------------------------------------------


async def test_stopping_start_raises_state_error() -> None:
    probe = Probe()
    probe.stop_gate = anyio.Event()
    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as tg:
            await startable.of(probe).start()
            tg.start_soon(startable.of(probe).stop)
            await probe.stop_entered.wait()
            with pytest.raises(StateError) as caught:
                await startable.of(probe).start()
            assert caught.value.actual is STOPPING
            assert caught.value.expected == {READY, STARTING, STARTED, STOPPED}
            assert "STOPPING" in str(caught.value)
            probe.stop_gate.set()
    assert probe.start_calls == 1


async def test_stopping_stop_joins_and_a_second_err_is_ignored() -> None:
    probe = Probe()
    probe.stop_gate = anyio.Event()
    boom = OSError("raw stop failed")
    probe.fail_stop = boom
    first, second = RuntimeError("first"), RuntimeError("second")
    outcomes: list[BaseException] = []

    async def stopper(err: BaseException) -> None:
        try:
            await startable.of(probe).stop(err)
        except OSError as exc:
            outcomes.append(exc)

    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as tg:
            await startable.of(probe).start()
            tg.start_soon(stopper, first)
            await probe.stop_entered.wait()
            tg.start_soon(stopper, second)
            await wait_until(lambda: startable.of(probe)._cycle.stop_waiters == 1)  # type: ignore[union-attr]
            probe.stop_gate.set()
    assert probe.stop_reasons == [first]
    assert probe.stop_calls == 1
    assert outcomes == [boom, boom]


# -- STOPPED -----------------------------------------------------------------


async def test_stopped_start_begins_a_new_cycle() -> None:
    probe = Probe()
    with anyio.fail_after(5):
        async with startable.open_owner():
            lifecycle = startable.of(probe)
            for cycle in (1, 2, 3):
                await lifecycle.start()
                assert lifecycle.statistics().cycle == cycle
                await lifecycle.stop()
                assert lifecycle.state is STOPPED
    assert probe.start_calls == probe.stop_calls == 3


async def test_stopped_stop_returns_at_once() -> None:
    probe = Probe()
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(probe).start()
            await startable.of(probe).stop()
            await startable.of(probe).stop(RuntimeError("late"))
    assert probe.stop_calls == 1


async def test_hooks_belong_to_one_cycle() -> None:
    probe = Probe()
    calls: list[BaseException | None] = []
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(probe).start(calls.append)
            await startable.of(probe).stop()
            await startable.of(probe).start()
            await startable.of(probe).stop()
    assert calls == [None]


async def test_each_hook_is_called_once_even_if_registered_twice() -> None:
    probe = Probe()
    calls: list[BaseException | None] = []
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(probe).start(calls.append)
            await startable.of(probe).start(calls.append)
            await startable.of(probe).stop()
    assert calls == [None]
