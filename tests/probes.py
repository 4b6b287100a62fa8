"""Services for the tests: every raw hook can be held, made to fail, and counted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel

import startable
from startable import State


class Probe:
    """A service whose raw start and raw stop can be held at a gate and made to fail.

    ``log`` (shared between probes to see the global order) records
    ``(name, "start")``, ``(name, "started")``, ``(name, "stop", reason)`` and
    ``(name, "stopped")``.
    """

    def __init__(self, name: str = "probe", log: list[tuple[Any, ...]] | None = None) -> None:
        self.name = name
        self.log: list[tuple[Any, ...]] = log if log is not None else []
        self.start_entered = anyio.Event()
        self.stop_entered = anyio.Event()
        self.start_gate: anyio.Event | None = None
        self.stop_gate: anyio.Event | None = None
        self.fail_start: BaseException | None = None
        self.fail_stop: BaseException | None = None
        self.start_calls = 0
        self.stop_calls = 0
        self.stop_reasons: list[BaseException | None] = []
        self.in_start = False
        self.in_stop = False
        self.on_start: Callable[[], Any] | None = None
        self.on_stop: Callable[[], Any] | None = None

    def __repr__(self) -> str:
        return f"Probe({self.name})"

    @startable.as_raw_start
    async def _start(self) -> None:
        assert not self.in_stop, "raw start overlapped raw stop"
        self.in_start = True
        self.start_calls += 1
        self.log.append((self.name, "start"))
        self.start_entered.set()
        try:
            if self.start_gate is not None:
                await self.start_gate.wait()
            if self.on_start is not None:
                await self.on_start()
            if self.fail_start is not None:
                raise self.fail_start
            self.log.append((self.name, "started"))
        finally:
            self.in_start = False

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        assert not self.in_start, "raw stop began before raw start finished"
        self.in_stop = True
        self.stop_calls += 1
        self.stop_reasons.append(err)
        self.log.append((self.name, "stop", err))
        self.stop_entered.set()
        if self.on_stop is not None:
            self.on_stop()
        try:
            if self.stop_gate is not None:
                await self.stop_gate.wait()
            if self.fail_stop is not None:
                raise self.fail_stop
            self.log.append((self.name, "stopped"))
        finally:
            self.in_stop = False

    @startable.assert_state()
    async def ping(self) -> str:
        return "pong"

    @startable.assert_state(State.STARTED, State.STOPPING)
    def peek(self) -> str:
        return self.name


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Yield to other tasks until ``predicate()`` holds (bounded by the caller's fail_after)."""
    while not predicate():
        await anyio.lowlevel.checkpoint()
