"""Background tasks, on_stopping hooks, and where their errors go."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import pytest

import startable
from startable import State, StateError

from ..probes import Probe

pytestmark = pytest.mark.anyio

READY, STARTING, STARTED, STOPPING, STOPPED = State


class Worker:
    """Runs one background task; records what it saw."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.task_running = anyio.Event()
        self.crash_now = anyio.Event()
        self.error: Exception | None = None

    @startable.as_raw_start
    async def _start(self) -> None:
        startable.of(self).start_soon(self._loop, name="worker loop")

    async def _loop(self) -> None:
        try:
            self.task_running.set()
            await self.crash_now.wait()
            if self.error is not None:
                raise self.error
            await anyio.sleep_forever()
        finally:
            self.seen.append(("task ended in", startable.of(self).state))

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        self.seen.append(
            ("raw stop, task alive", not any(s[0] == "task ended in" for s in self.seen))
        )


async def test_background_task_lives_until_the_end_of_stopping() -> None:
    worker = Worker()
    with anyio.fail_after(5):
        async with startable.running(worker):
            await worker.task_running.wait()
            assert startable.of(worker).statistics().tasks == 1
    assert worker.seen == [("raw stop, task alive", True), ("task ended in", STOPPING)]
    assert startable.of(worker).statistics().tasks == 0


async def test_crashing_background_task_stops_its_service_with_the_error() -> None:
    worker = Worker()
    worker.error = ZeroDivisionError("in the loop")
    with anyio.fail_after(5):
        with pytest.raises(ZeroDivisionError) as caught:
            async with startable.running(worker):
                await worker.task_running.wait()
                worker.crash_now.set()
                await anyio.sleep_forever()
    assert caught.value is worker.error
    assert startable.of(worker).state is STOPPED
    assert startable.of(worker).statistics().stop_reason is worker.error


async def test_crash_during_starting_stops_the_service_after_its_raw_start() -> None:
    crashed = anyio.Event()
    boom = RuntimeError("early crash")

    class Early:
        def __init__(self) -> None:
            self.stop_reasons: list[BaseException | None] = []

        @startable.as_raw_start
        async def _start(self) -> None:
            async def crash() -> None:
                try:
                    raise boom
                finally:
                    crashed.set()

            startable.of(self).start_soon(crash)
            await crashed.wait()
            await anyio.lowlevel.checkpoint()

        @startable.as_raw_stop
        def _stop(self, err: BaseException | None) -> None:
            self.stop_reasons.append(err)

    early = Early()
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(early).start()
            await startable.of(early).wait_state(STOPPED)
    assert early.stop_reasons == [boom]


async def test_start_task_returns_the_started_value_and_raises_early_errors() -> None:
    class Server:
        def __init__(self, fail: bool) -> None:
            self.fail = fail
            self.port: int | None = None

        async def _serve(self, *, task_status: anyio.abc.TaskStatus[int]) -> None:
            if self.fail:
                raise OSError("address in use")
            task_status.started(8080)
            await anyio.sleep_forever()

        @startable.as_raw_start
        async def _start(self) -> None:
            self.port = await startable.of(self).start_task(self._serve)

    with anyio.fail_after(5):
        good = Server(fail=False)
        async with startable.running(good):
            assert good.port == 8080
        bad = Server(fail=True)
        async with startable.open_owner():
            with pytest.raises(OSError, match="address in use"):
                await startable.of(bad).start()
        assert startable.of(bad).state is STOPPED


async def test_tasks_cannot_be_started_outside_a_cycle() -> None:
    worker = Worker()
    with pytest.raises(StateError, match="background tasks"):
        startable.of(worker).start_soon(anyio.sleep_forever)
    with anyio.fail_after(10):
        async with startable.running(worker):
            pass
        with pytest.raises(StateError, match="STOPPED"):
            startable.of(worker).start_soon(anyio.sleep_forever)
        with pytest.raises(StateError):
            await startable.of(worker).start_task(anyio.sleep_forever)


async def test_background_task_may_await_its_own_stop() -> None:
    reason = RuntimeError("the connection closed")

    class SelfStopper:
        def __init__(self) -> None:
            self.after_stop_returned = False
            self.reasons: list[BaseException | None] = []

        @startable.as_raw_start
        async def _start(self) -> None:
            startable.of(self).start_soon(self._watch)

        async def _watch(self) -> None:
            await anyio.lowlevel.checkpoint()
            await startable.of(self).stop(reason)
            self.after_stop_returned = True  # never: the task is cancelled by the stop

        @startable.as_raw_stop
        async def _stop(self, err: BaseException | None) -> None:
            self.reasons.append(err)

    stopper = SelfStopper()
    with anyio.fail_after(5):
        with pytest.raises(RuntimeError) as caught:
            async with startable.running(stopper):
                await anyio.sleep_forever()
    assert caught.value is reason
    assert stopper.reasons == [reason]
    assert not stopper.after_stop_returned


async def test_task_crash_while_stopping_is_an_error_of_the_stop() -> None:
    class Fragile:
        def __init__(self) -> None:
            self.closed = anyio.Event()

        @startable.as_raw_start
        async def _start(self) -> None:
            startable.of(self).start_soon(self._reader)

        async def _reader(self) -> None:
            await self.closed.wait()
            raise anyio.ClosedResourceError

        @startable.as_raw_stop
        async def _stop(self) -> None:
            self.closed.set()
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()

    fragile = Fragile()
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(fragile).start()
            with pytest.raises(anyio.ClosedResourceError) as caught:
                await startable.of(fragile).stop()
    assert any("while it was STOPPING" in note for note in caught.value.__notes__)


async def test_raising_hook_does_not_block_the_raw_stop_and_is_reported() -> None:
    probe = Probe()
    later: list[BaseException | None] = []

    def bad_hook(err: BaseException | None) -> None:
        raise LookupError("hook failed")

    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(probe).start(bad_hook)
            await startable.of(probe).start(later.append)
            with pytest.raises(LookupError) as caught:
                await startable.of(probe).stop()
    assert probe.stop_calls == 1  # raw stop ran anyway
    assert later == [None]  # the other hook ran too
    assert any("on_stopping hook" in note and "bad_hook" in note for note in caught.value.__notes__)
    assert startable.of(probe).state is STOPPED


async def test_async_hook_runs_as_a_task_of_the_owner() -> None:
    probe = Probe()
    done = anyio.Event()
    seen: list[BaseException | None] = []

    async def async_hook(err: BaseException | None) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(err)
        done.set()

    reason = RuntimeError("r")
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(probe).start(async_hook)
            await startable.of(probe).stop(reason)
            await done.wait()
    assert seen == [reason]


async def test_failing_async_hook_fails_the_owner() -> None:
    probe = Probe()

    async def async_hook(err: BaseException | None) -> None:
        raise KeyError("async hook")

    with anyio.fail_after(5):
        with pytest.raises(KeyError, match="async hook"):
            async with startable.open_owner():
                await startable.of(probe).start(async_hook)
                await startable.of(probe).stop()
                await anyio.sleep_forever()  # cancelled by the failure


async def test_unawaited_raw_stop_failure_goes_to_the_owner() -> None:
    probe = Probe()
    boom = OSError("raw stop failed, nobody waiting")
    probe.fail_stop = boom
    with anyio.fail_after(5):
        with pytest.raises(OSError) as caught:
            async with startable.open_owner():
                await startable.of(probe).start()
                startable.of(probe).stop_nowait(RuntimeError("spontaneous"))
                await anyio.sleep_forever()
    assert caught.value is boom


async def test_stop_nowait_in_ready_and_starting() -> None:
    probe = Probe()
    startable.of(probe).stop_nowait()
    assert startable.of(probe).state is STOPPED
    starting = Probe()
    starting.start_gate = anyio.Event()
    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as tg:
            tg.start_soon(startable.of(starting).start)
            await starting.start_entered.wait()
            startable.of(starting).stop_nowait()
            assert startable.of(starting).state is STARTING
            starting.start_gate.set()
            await startable.of(starting).wait_state(STOPPED)
    assert starting.stop_calls == 1
