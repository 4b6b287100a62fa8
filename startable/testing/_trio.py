"""What the checker needs of trio: counting task steps, and abandoning a run that cannot end."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from typing import Any

import trio
import trio.testing


class TrioSteps(trio.abc.Instrument):
    """Counts trio task steps, so "in the same step" can be checked exactly.

    It also tells a caller when its task next resumes: a lifecycle call
    begins with one checkpoint and then reads the state, so what the state
    is when the caller first resumes is what the call saw.
    """

    def __init__(self) -> None:
        self.count = 0
        self.watch: dict[trio.lowlevel.Task, Callable[[], None]] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.count += 1
        if self.watch:
            resumed = self.watch.pop(task, None)
            if resumed is not None:
                resumed()


class Hung(Exception):
    """Raised by the watchdog clock to abandon a trio run that can never end."""


class WatchdogClock:
    """trio's MockClock (autojump), which can abandon the run it drives.

    A run whose remaining tasks wait for something no cancellation can reach
    never ends by itself. Once the checker's watchdog has decided the run is
    hung, the clock raises from the run loop the next time it is asked how
    long to sleep; trio then ends the run with TrioInternalError, which
    `_run` turns into a DEADLINE violation. (MockClock cannot be subclassed,
    and only a MockClock autojumps: its instance gets the one method.)
    """

    def __init__(self) -> None:
        self.clock = trio.testing.MockClock(autojump_threshold=0)
        self.abandon = False
        sleep_time = self.clock.deadline_to_sleep_time

        def deadline_to_sleep_time(deadline: float) -> float:
            if self.abandon:
                raise Hung
            return sleep_time(deadline)

        self.clock.deadline_to_sleep_time = deadline_to_sleep_time  # type: ignore[method-assign]


def coroutines_of(task: trio.lowlevel.Task) -> list[Any]:
    """The coroutines of `task` and of every task below it, innermost last."""
    found = [task.coro]
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            found.extend(coroutines_of(child))
    return found


def close_abandoned(coroutines: list[Any]) -> None:
    """Finish off the coroutines of an abandoned run, now, quietly.

    Each is closed, innermost first, whatever its clean-up raises (it runs
    outside any event loop: the run is gone, and nothing it does can matter).
    The async generators they held (`async with` blocks) are collected at
    once too: trio's finalizer for them would otherwise run at some later
    garbage collection and complain of the loop that no longer exists.
    """
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        for coroutine in reversed(coroutines):
            try:
                coroutine.close()
            except BaseException:
                pass
        coroutines.clear()
        gc.collect()
    finally:
        sys.unraisablehook = hook
