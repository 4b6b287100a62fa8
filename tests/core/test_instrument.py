"""Instruments: they see every move and wrap every raw hook in their context."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import pytest

import startable
from startable import State, StateChange

from ..probes import Probe

pytestmark = pytest.mark.anyio


class Log(startable.Instrument):
    def __init__(self, tag: str, log: list[object]) -> None:
        self.tag = tag
        self.log = log

    def on_move(self, change: StateChange) -> None:
        self.log.append((self.tag, change.startable.name, change.current))

    async def raw_start(
        self, lifecycle: startable.Startable, call: Callable[[], Awaitable[None]]
    ) -> None:
        self.log.append((self.tag, "enter start"))
        try:
            await call()
        finally:
            self.log.append((self.tag, "exit start"))

    async def raw_stop(
        self,
        lifecycle: startable.Startable,
        reason: BaseException | None,
        call: Callable[[], Awaitable[None]],
    ) -> None:
        self.log.append((self.tag, "enter stop", reason))
        await call()


async def test_instruments_see_moves_and_wrap_raw_hooks_outermost_first() -> None:
    log: list[object] = []
    probe = Probe("p", log)  # type: ignore[arg-type]
    reason = RuntimeError("r")
    with (
        anyio.fail_after(10),
        startable.instrumented(Log("outer", log)),
        startable.instrumented(Log("inner", log)),
    ):
        async with startable.open_owner():
            await startable.of(probe).start()
            await startable.of(probe).stop(reason)
    assert log == [
        ("outer", "Probe", State.STARTING),
        ("inner", "Probe", State.STARTING),
        ("outer", "enter start"),
        ("inner", "enter start"),
        ("p", "start"),
        ("p", "started"),
        ("inner", "exit start"),
        ("outer", "exit start"),
        ("outer", "Probe", State.STARTED),
        ("inner", "Probe", State.STARTED),
        ("outer", "Probe", State.STOPPING),
        ("inner", "Probe", State.STOPPING),
        ("outer", "enter stop", reason),
        ("inner", "enter stop", reason),
        ("p", "stop", reason),
        ("p", "stopped"),
        ("outer", "Probe", State.STOPPED),
        ("inner", "Probe", State.STOPPED),
    ]


async def test_an_instrument_can_fail_and_delay_a_raw_start() -> None:
    class Failing(startable.Instrument):
        async def raw_start(
            self, lifecycle: startable.Startable, call: Callable[[], Awaitable[None]]
        ) -> None:
            await anyio.lowlevel.checkpoint()
            raise ConnectionRefusedError("injected")

    probe = Probe()
    with anyio.fail_after(10), startable.instrumented(Failing()):
        async with startable.open_owner():
            with pytest.raises(ConnectionRefusedError):
                await startable.of(probe).start()
    assert probe.start_calls == 0  # the raw start never ran
    assert isinstance(probe.stop_reasons[0], ConnectionRefusedError)


async def test_instruments_are_scoped_to_their_context() -> None:
    log: list[object] = []
    with startable.instrumented(Log("only", log)):
        pass
    with anyio.fail_after(10):
        async with startable.running(Probe()):
            pass
    assert log == []


async def test_failing_on_move_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(startable.Instrument):
        def on_move(self, change: StateChange) -> None:
            raise KeyError("instrument bug")

    with (
        anyio.fail_after(10),
        caplog.at_level(logging.ERROR, logger="startable"),
        startable.instrumented(Broken()),
    ):
        async with startable.running(Probe()) as probe:
            pass
    assert startable.of(probe).state is State.STOPPED
    assert "instrument bug" in caplog.text


def test_instrumented_takes_instruments_only() -> None:
    with (
        pytest.raises(TypeError, match="takes Instrument objects"),
        startable.instrumented(object()),  # type: ignore[arg-type]
    ):
        pass


def test_can_move_to_and_guarded_states() -> None:
    assert State.READY.can_move_to(State.STARTING)
    assert not State.STARTING.can_move_to(State.STOPPED)
    assert startable.guarded_states(Probe.ping) == {State.STARTED}
    assert startable.guarded_states(Probe.peek) == {State.STARTED, State.STOPPING}
    assert startable.guarded_states(Probe._start) is None
