"""The implementation of `startable.program` (see there)."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import AsyncIterator
from typing import Literal, Protocol

import anyio

from ._markers import spec_for
from ._owner import open_owner
from ._startable import Startable

#: Exit codes of a program: it stopped cleanly; it failed (a failed or
#: timed-out start, a stop reason, a failed or timed-out stop); it was
#: forced to stop by a second SIGINT; its command line was wrong.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_FORCED = 130
EXIT_USAGE = 2

#: Where a driven program is; `Narrator.enter` is told each one in turn.
Phase = Literal["starting", "running", "stopping", "stopped"]


class Narrator(Protocol):
    """What `drive` tells the user as it goes, and how."""

    def enter(self, phase: Phase) -> None:
        """The program moved to `phase`."""

    def say(self, text: str, *, failed: bool = False, error: BaseException | None = None) -> None:
        """Say `text`: a failure if `failed` or there is an `error` (which it is about)."""


async def drive(
    lifecycle: Startable,
    narrator: Narrator,
    *,
    label: str | None = None,
    start_timeout: float | None = None,
    stop_timeout: float | None = None,
) -> int:
    """Start `lifecycle`, wait for SIGINT or SIGTERM or for it to stop on its own, stop it.

    `label` names it in what the narrator says (by default `lifecycle.name`).

    A first signal stops it; if it is still starting, the start is abandoned
    (and undone) first. A second SIGINT forces the stop: the raw stop is
    cancelled. A start longer than `start_timeout` is abandoned, a stop
    longer than `stop_timeout` is forced.

    Returns:
        The exit code: `EXIT_OK` when it stopped cleanly, on a signal or on
        its own without a reason; `EXIT_FORCED` when a second SIGINT forced
        the stop; `EXIT_FAILED` otherwise (a failed or timed-out start, a
        stop reason, a failed or timed-out stop).
    """
    run = _Run(lifecycle, narrator, label or lifecycle.name, start_timeout, stop_timeout)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as watchers:
            watchers.start_soon(run.watch, signals)
            code = EXIT_FAILED
            with run.force:
                code = await run.main()
            narrator.enter("stopped")
            watchers.cancel_scope.cancel()
    if run.force.cancelled_caught:  # by a second SIGINT, or by the stop timeout
        return EXIT_FORCED if run.forced_by_user else EXIT_FAILED
    return code


class _Run:
    def __init__(
        self,
        lifecycle: Startable,
        narrator: Narrator,
        label: str,
        start_timeout: float | None,
        stop_timeout: float | None,
    ) -> None:
        self.lifecycle = lifecycle
        self.narrator = narrator
        self.label = label
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.force = anyio.CancelScope()
        self.starting = anyio.CancelScope()  # cancelled to abandon the start, with why
        self.wake = anyio.Event()
        self.signals = 0
        self.forced_by_user = False
        #: Why it began stopping (the hook runs once a cycle: on its own, or by our stop).
        self.reason: BaseException | None = None

    async def watch(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            self.signals += 1
            name = signal.Signals(signum).name
            if self.signals == 1:
                self.narrator.say(
                    f"{name} received: stopping {self.label} (press Ctrl-C again to force)"
                )
                self.starting.cancel(f"{name} received")  # what an abandoned start says
                self.wake.set()
            elif signum == signal.SIGINT:
                self.narrator.say(f"{name} received again: forcing the stop", failed=True)
                self.forced_by_user = True
                self.force.cancel()

    async def time_out(self, seconds: float) -> None:
        await anyio.sleep(seconds)
        # A reason, rather than the scope's deadline: the abandoned start says it.
        self.starting.cancel(f"the start timeout of {seconds:g}s passed")

    def on_stopping(self, reason: BaseException | None) -> None:
        self.reason = reason
        self.wake.set()

    async def main(self) -> int:
        name = self.label
        async with open_owner():
            self.narrator.enter("starting")
            with self.starting:
                async with anyio.create_task_group() as timing:
                    if self.start_timeout is not None:
                        timing.start_soon(self.time_out, self.start_timeout)
                    try:
                        await self.lifecycle.start(self.on_stopping)
                    except Exception as exc:
                        self.narrator.say(f"{name} failed to start", error=exc)
                        return EXIT_FAILED
                    finally:
                        timing.cancel_scope.cancel()
            if self.starting.cancelled_caught:  # abandoned, and undone by the stop below
                if not self.signals:
                    self.narrator.say(
                        f"{name} took more than {self.start_timeout:g}s to start: abandoned",
                        failed=True,
                    )
                stopped = await self.stop()
                return EXIT_OK if stopped and self.signals else EXIT_FAILED
            self.narrator.enter("running")
            await self.wake.wait()
            # Read before our own stop, during which a signal may come: it
            # does not undo a crash.
            crash = self.reason if not self.signals else None
            stopped = await self.stop()
            if crash is not None:
                self.narrator.say(f"{name} stopped on its own", error=crash)
                return EXIT_FAILED
            return EXIT_OK if stopped else EXIT_FAILED

    async def stop(self) -> bool:
        """Stop it, within the stop timeout (then force it); whether it stopped cleanly."""
        name = self.label
        self.narrator.enter("stopping")
        with anyio.move_on_after(self.stop_timeout):
            try:
                await self.lifecycle.stop()
            except Exception as exc:
                self.narrator.say(f"stopping {name} failed", error=exc)
                return False
            self.narrator.say(f"{name}: stopped")
            return True
        self.narrator.say(
            f"{name} took more than {self.stop_timeout:g}s to stop: forcing it", failed=True
        )
        self.force.cancel()
        return False


#: The format of `startable run`'s log records.
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: int | str) -> None:
    """Log to stderr as `startable run` does (see `run`'s `log_level`).

    Raises:
        ValueError: `level` is not a level name (`"DEBUG"`, `"info"`...).
        TypeError: `level` is neither a string nor an integer.
    """
    if isinstance(level, str):
        number = logging.getLevelNamesMapping().get(level.upper())
        if number is None:
            names = ", ".join(logging.getLevelNamesMapping())
            raise ValueError(f"unknown log level {level!r} (known: {names})")
    elif isinstance(level, int) and not isinstance(level, bool):
        number = level
    else:
        raise TypeError(f"a log level is a name or a number, not {level!r}")
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(number)


def has_lifecycle(obj: object) -> bool:
    """Whether `startable.of(obj)` would work on `obj`."""
    if isinstance(obj, Startable):
        return True
    try:
        spec_for(type(obj))
    except TypeError:
        return False
    return True


def lifecycle_object(obj: object, label: str = "the target") -> object:
    """`obj` if it has a lifecycle, else what calling it (a factory) returns.

    `startable run` and a container's child process make the object they run
    this way from the entry the user named (`module:name`).

    Raises:
        TypeError: naming `label`, if `obj` has no lifecycle and is not
            callable, or returns an object without one. What the factory
            raises is raised as it is.
    """
    if has_lifecycle(obj):
        return obj
    if not callable(obj):
        raise TypeError(f"{label} is neither an object with a lifecycle nor a factory: {obj!r}")
    made = obj()
    if not has_lifecycle(made):
        raise TypeError(f"{label}() returned {made!r}, which has no lifecycle")
    return made
