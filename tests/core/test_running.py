"""running(), open_owner(), and observing a lifecycle."""

from __future__ import annotations

import logging

import anyio
import pytest

import startable
from startable import State, StateChange, StoppedError

from ..probes import Probe

pytestmark = pytest.mark.anyio

READY, STARTING, STARTED, STOPPING, STOPPED = State


async def test_running_starts_yields_the_object_and_stops() -> None:
    probe = Probe()
    with anyio.fail_after(5):
        async with startable.running(probe) as same:
            assert same is probe
            assert startable.of(probe).state is STARTED
    assert startable.of(probe).state is STOPPED
    assert probe.stop_reasons == [None]


async def test_running_passes_the_body_error_as_stop_reason() -> None:
    probe = Probe()
    boom = ValueError("body")
    with anyio.fail_after(5):
        with pytest.raises(ValueError) as caught:
            async with startable.running(probe):
                raise boom
    assert caught.value is boom
    assert probe.stop_reasons == [boom]


async def test_running_cancels_the_body_and_raises_the_reason() -> None:
    probe = Probe()
    reason = ConnectionResetError("peer")
    after_sleep: list[str] = []
    with anyio.fail_after(5):
        with pytest.raises(ConnectionResetError) as caught:
            async with startable.running(probe):
                startable.of(probe).stop_nowait(reason)
                await anyio.sleep_forever()
                after_sleep.append("not reached")
    assert caught.value is reason
    assert after_sleep == []


async def test_running_raises_stopped_error_when_stopped_without_reason() -> None:
    probe = Probe()
    with anyio.fail_after(5):
        with pytest.raises(StoppedError, match="stopped on its own"):
            async with startable.running(probe):
                await startable.of(probe).stop()
                await anyio.sleep_forever()


async def test_running_raises_the_body_error_with_the_stop_error_attached() -> None:
    # The rule of item 22: the first error comes out as itself, whatever else
    # fails while cleaning up after it (this test used to expect a group).
    probe = Probe("named-probe")
    probe.fail_stop = KeyError("stop")
    boom = ValueError("body")
    with anyio.fail_after(5):
        with pytest.raises(ValueError) as caught:
            async with startable.running(probe):
                raise boom
    assert caught.value is boom
    (note,) = caught.value.__notes__
    assert "running(" in note and "KeyError: 'stop'" in note and "raise self.fail_stop" in note
    assert "ValueError" not in note  # the primary is not repeated in it


async def test_running_start_failure_skips_the_body() -> None:
    probe = Probe()
    probe.fail_start = OSError("cannot start")
    ran: list[str] = []
    with anyio.fail_after(5):
        with pytest.raises(OSError, match="cannot start"):
            async with startable.running(probe):
                ran.append("body")
    assert ran == []


async def test_open_owner_stops_what_is_left_newest_first() -> None:
    log: list[tuple[object, ...]] = []
    first, second = Probe("first", log), Probe("second", log)
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(first).start()
            await startable.of(second).start()
    assert [e[0] for e in log if e[1] == "stop"] == ["second", "first"]


async def test_open_owner_groups_several_errors_with_names() -> None:
    first, second = Probe("first"), Probe("second")
    first.fail_stop = KeyError("first")
    second.fail_stop = KeyError("second")
    with anyio.fail_after(5):
        with pytest.raises(ExceptionGroup) as caught:
            async with startable.open_owner():
                await startable.of(first).start()
                await startable.of(second).start()
    notes = [note for e in caught.value.exceptions for note in e.__notes__]
    assert any("Probe" in n for n in notes)
    assert len(caught.value.exceptions) == 2


async def test_subscribe_reports_every_move_with_reasons() -> None:
    probe = Probe()
    changes: list[StateChange] = []
    lifecycle = startable.of(probe)
    unsubscribe = lifecycle.subscribe(changes.append)
    reason = RuntimeError("why")
    with anyio.fail_after(5):
        async with startable.open_owner():
            await lifecycle.start()
            await lifecycle.stop(reason)
            unsubscribe()
            unsubscribe()
            await lifecycle.start()
            await lifecycle.stop()
    assert [(c.previous, c.current, c.reason, c.cycle) for c in changes] == [
        (READY, STARTING, None, 1),
        (STARTING, STARTED, None, 1),
        (STARTED, STOPPING, reason, 1),
        (STOPPING, STOPPED, reason, 1),
    ]
    assert all(c.startable is lifecycle for c in changes)


async def test_a_failing_subscriber_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    probe = Probe()

    def bad(change: StateChange) -> None:
        raise RuntimeError("subscriber bug")

    startable.of(probe).subscribe(bad)
    with caplog.at_level(logging.ERROR, logger="startable"), anyio.fail_after(5):
        async with startable.running(probe):
            pass
    assert startable.of(probe).state is STOPPED
    assert "subscriber" in caplog.text and "subscriber bug" in caplog.text


async def test_wait_state_and_statistics() -> None:
    probe = Probe()
    probe.start_gate = anyio.Event()
    lifecycle = startable.of(probe)
    assert lifecycle.statistics() == startable.StartableStatistics(
        READY, 0, None, None, None, None, 0, 0, 0
    )
    with anyio.fail_after(5):
        async with startable.open_owner(), anyio.create_task_group() as tg:
            tg.start_soon(lifecycle.start, lambda err: None)
            assert await lifecycle.wait_state(STARTING) is STARTING
            probe.start_gate.set()
            assert await lifecycle.wait_state(STARTED, STOPPED) is STARTED
            stats = lifecycle.statistics()
            assert stats.state is STARTED and stats.cycle == 1 and stats.hooks == 1
            assert stats.start_duration is not None and stats.start_duration >= 0
            assert stats.stop_duration is None
            await lifecycle.stop(KeyError("k"))
    stats = lifecycle.statistics()
    assert stats.state is STOPPED
    assert stats.stop_duration is not None
    assert isinstance(stats.stop_reason, KeyError)
    assert stats.last_error is stats.stop_reason
    with pytest.raises(TypeError):
        await lifecycle.wait_state()


async def test_owned_count_in_statistics() -> None:
    parent = Probe("parent")
    child = Probe("child")

    async def start_child() -> None:
        await startable.of(child).start()

    parent.on_start = start_child
    with anyio.fail_after(5):
        async with startable.running(parent):
            assert startable.of(parent).statistics().owned == 1
    assert startable.of(child).state is STOPPED  # left running, stopped by its owner


@pytest.mark.parametrize("stop_is_slow", [False, True])
async def test_running_raises_the_reason_whatever_fails_in_the_cascade(
    stop_is_slow: bool,
) -> None:
    # The service stops on its own; its raw stop fails too. Whether that
    # failure reaches running() through its own stop() (the raw stop is still
    # running when the body ends) or through the owner (it has already
    # failed), the reason comes out as itself, the stop's error attached.
    probe = Probe()
    probe.fail_stop = KeyError("raw stop")
    if stop_is_slow:
        probe.stop_gate = anyio.Event()
    reason = ConnectionResetError("peer")

    async def release() -> None:
        await probe.stop_entered.wait()
        probe.stop_gate.set()  # type: ignore[union-attr]

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            if stop_is_slow:  # running() joins the stop while the raw stop runs
                group.start_soon(release)
            with pytest.raises(ConnectionResetError) as caught:
                async with startable.running(probe):
                    startable.of(probe).stop_nowait(reason)
                    if not stop_is_slow:  # the raw stop fails before the body ends
                        with anyio.CancelScope(shield=True):
                            await startable.of(probe).wait_state(STOPPED)
                    await anyio.sleep_forever()
    assert caught.value is reason
    assert any("KeyError: 'raw stop'" in note for note in caught.value.__notes__)


async def test_running_groups_only_a_stop_that_failed_in_several_ways() -> None:
    # No error before the stop: the stop's own outcome comes out as it is.
    log: list[tuple[object, ...]] = []
    parent, child = Probe("parent", log), Probe("child", log)
    parent.fail_stop = KeyError("parent")
    child.fail_stop = ValueError("child")

    async def start_child() -> None:
        await startable.of(child).start()  # left running: stopped by the parent's owner

    parent.on_start = start_child
    with anyio.fail_after(5):
        with pytest.raises(ExceptionGroup) as caught:
            async with startable.running(parent):
                pass
    assert {type(e) for e in caught.value.exceptions} == {KeyError, ValueError}
