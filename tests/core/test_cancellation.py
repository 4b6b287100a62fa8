"""Cancellation of starters, stoppers, joiners and owners; waits that would never end."""

from __future__ import annotations

import anyio
import pytest

import startable
from startable import AbortedError, NoOwnerError, State, StateError

from ..probes import Probe, wait_until

pytestmark = pytest.mark.anyio

READY, STARTING, STARTED, STOPPING, STOPPED = State


async def test_cancelling_the_starter_abandons_the_start_and_cleans_up() -> None:
    probe = Probe()
    probe.start_gate = anyio.Event()  # never set: the raw start hangs
    joiner_saw: list[BaseException] = []

    async def joiner() -> None:
        try:
            await startable.of(probe).start()
        except AbortedError as exc:
            joiner_saw.append(exc)

    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as tg:
            with anyio.CancelScope() as scope:
                tg.start_soon(joiner)

                async def cancel_when_started() -> None:
                    await probe.start_entered.wait()
                    await wait_until(lambda: startable.of(probe)._cycle.start_event is not None)  # type: ignore[union-attr]
                    scope.cancel("the operator changed their mind")

                tg.start_soon(cancel_when_started)
                await startable.of(probe).start()
            assert scope.cancelled_caught
            # The clean-up runs in a task of the owner; stop() waits for it.
            await startable.of(probe).stop()
    assert startable.of(probe).state is STOPPED
    assert len(joiner_saw) == 1
    (reason,) = probe.stop_reasons
    assert isinstance(reason, AbortedError)
    # The raw stop learns why: the reason the cancellation gave.
    assert reason.why == "the operator changed their mind"
    assert str(reason).endswith("was abandoned: the operator changed their mind")


async def test_start_timeout_with_fail_after() -> None:
    probe = Probe()
    probe.start_gate = anyio.Event()
    with anyio.fail_after(5):
        async with startable.open_owner():
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.01):
                    await startable.of(probe).start()
            await startable.of(probe).wait_state(STOPPED)
    assert probe.stop_calls == 1
    (reason,) = probe.stop_reasons
    assert isinstance(reason, AbortedError) and reason.why == "a deadline passed"


async def test_cancelling_a_joiner_only_stops_its_wait() -> None:
    probe = Probe()
    probe.start_gate = anyio.Event()
    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as tg:
            tg.start_soon(startable.of(probe).start)
            await probe.start_entered.wait()
            with anyio.CancelScope() as scope:
                scope.cancel()
                await startable.of(probe).start()
            assert scope.cancelled_caught
            probe.start_gate.set()
            await startable.of(probe).wait_state(STARTED)
            await startable.of(probe).stop()
    assert probe.start_calls == 1


async def test_cancelling_the_stopper_forces_the_stop() -> None:
    probe = Probe()
    probe.stop_gate = anyio.Event()  # never set: the raw stop hangs
    joiner_saw: list[BaseException] = []

    class WithTask:
        def __init__(self) -> None:
            self.task_ended = False

        @startable.as_raw_start
        async def _start(self) -> None:
            await startable.of(probe).start()
            startable.of(self).start_soon(self._background)

        async def _background(self) -> None:
            try:
                await anyio.sleep_forever()
            finally:
                self.task_ended = True

        @startable.as_raw_stop
        async def _stop(self) -> None:
            await startable.of(probe).stop()

    service = WithTask()

    async def joiner() -> None:
        try:
            await startable.of(service).stop()
        except AbortedError as exc:
            joiner_saw.append(exc)

    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as tg:
            await startable.of(service).start()
            with anyio.move_on_after(0.01):
                tg.start_soon(joiner)
                await startable.of(service).stop()
    assert startable.of(service).state is STOPPED
    assert startable.of(probe).state is STOPPED
    assert service.task_ended
    assert len(joiner_saw) == 1


async def test_cancelled_caller_does_not_begin_anything() -> None:
    probe = Probe()
    with anyio.fail_after(5):
        async with startable.open_owner():
            with anyio.CancelScope() as scope:
                scope.cancel()
                await startable.of(probe).start()
            assert startable.of(probe).state is READY
            await startable.of(probe).start()
            with anyio.CancelScope() as scope:
                scope.cancel()
                await startable.of(probe).stop()
            assert startable.of(probe).state is STARTED
            await startable.of(probe).stop()


async def test_cancelling_the_owner_forces_everything_to_stopped() -> None:
    outer = Probe("outer")
    inner = Probe("inner")
    inner.stop_gate = anyio.Event()  # the graceful stop would hang

    async def start_inner() -> None:
        await startable.of(inner).start(startable.of(outer).stop)

    outer.on_start = start_inner
    with anyio.fail_after(5):
        with anyio.CancelScope() as scope:
            async with startable.open_owner():
                await startable.of(outer).start()
                scope.cancel()
                await anyio.sleep_forever()
    assert startable.of(outer).state is STOPPED
    assert startable.of(inner).state is STOPPED


async def test_start_without_an_owner() -> None:
    probe = Probe()
    with anyio.fail_after(10):
        with pytest.raises(NoOwnerError, match="has no owner"):
            await startable.of(probe).start()
    assert startable.of(probe).state is READY


async def test_awaiting_own_start_or_stop_inside_raw_start_is_refused() -> None:
    errors: list[StateError] = []

    class Loop:
        @startable.as_raw_start
        async def _start(self) -> None:
            for call in (startable.of(self).start, startable.of(self).stop):
                try:
                    await call()
                except StateError as exc:
                    errors.append(exc)

    with anyio.fail_after(5):
        async with startable.running(Loop()):
            pass
    assert len(errors) == 2
    assert all("would wait for itself" in str(e) for e in errors)


async def test_awaiting_own_stop_inside_raw_stop_is_refused() -> None:
    errors: list[StateError] = []

    class Loop:
        @startable.as_raw_stop
        async def _stop(self) -> None:
            try:
                await startable.of(self).stop()
            except StateError as exc:
                errors.append(exc)

    with anyio.fail_after(5):
        async with startable.running(Loop()):
            pass
    assert len(errors) == 1


async def test_start_refused_while_the_owner_closes() -> None:
    late = Probe("late")
    errors: list[BaseException] = []

    class Closing:
        @startable.as_raw_start
        async def _start(self) -> None:
            startable.of(self).start_soon(self._task)

        async def _task(self) -> None:
            try:
                await anyio.sleep_forever()
            finally:  # cancelled by the teardown: the owner is closing
                with anyio.CancelScope(shield=True):
                    try:
                        await startable.of(late).start()
                    except NoOwnerError as exc:
                        errors.append(exc)

    closing = Closing()
    with anyio.fail_after(5):
        async with startable.running(closing):
            pass
    assert startable.of(late).state is READY
    assert len(errors) == 1
    assert "is stopping" in str(errors[0])
