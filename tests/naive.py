"""A small second lifecycle implementation with switchable bugs.

Without bugs it keeps every invariant the checker knows (a test proves it),
so each bug switched on shows that the checker catches that one mistake. It
reports to startable's instruments like the real engine, and borrows real
`startable.Startable` objects to own its background tasks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel

import startable
from startable import State, StateChange, StateError
from startable._instrument import INSTRUMENTS

READY, STARTING, STARTED, STOPPING, STOPPED = State

BUGS = (
    "illegal move",  # a restart goes STOPPED -> READY -> STARTING
    "start does not join",  # a start during STARTING runs the raw start again
    "stop does not wait for start",  # a stop in STARTING waits for raw start to begin, not end
    "hook called twice",  # hooks fire at STOPPING and again at STOPPED
    "reason lost",  # the raw stop gets None instead of the reason
    "stop can hang",  # callers joining a stop wait for an event nobody sets
    "tasks outlive stop",  # background tasks are not cancelled by the stop
    "stop before start raises",  # stop() in READY raises RuntimeError
)


#: The lifecycles whose raw hook the current code runs inside (by id).
_INSIDE: ContextVar[tuple[int, ...]] = ContextVar("naive_inside", default=())


class Naive:
    def __init__(self, target: Any, bugs: frozenset[str]) -> None:
        unknown = bugs - set(BUGS)
        assert not unknown, unknown
        self.target = target
        self.bugs = bugs
        self.state = READY
        self.cycle = 0
        self.hooks: list[Callable[[BaseException | None], object]] = []
        self.started = anyio.Event()
        self.stopped = anyio.Event()
        self.raw_start_began = anyio.Event()
        self.start_error: BaseException | None = None
        self.stop_error: BaseException | None = None
        self.outcomes: dict[tuple[int, str], BaseException | None] = {}
        self.pending = False
        self.reason: BaseException | None = None
        self.tasks: startable.Startable | None = None
        self.runner = startable.Startable(name="naive runner")
        # Captured when a cycle begins: the helpers above run without them, so
        # faults and errors meant for the engine under test never hit plumbing.
        self.instruments: tuple[startable.Instrument, ...] = ()

    @property
    def name(self) -> str:
        return type(self.target).__qualname__

    # -- reporting to instruments, like the real engine -----------------

    def _move(self, new: State, reason: BaseException | None = None) -> None:
        change = StateChange(self, self.state, new, reason, self.cycle)  # type: ignore[arg-type]
        self.state = new
        for instrument in self.instruments:
            instrument.on_move(change)

    async def _through(self, raw: Callable[[], Awaitable[None]], reason: Any = ...) -> None:
        wrapped = raw
        for instrument in reversed(self.instruments):
            if reason is ...:
                wrapped = partial(instrument.raw_start, self, wrapped)
            else:
                wrapped = partial(instrument.raw_stop, self, reason, wrapped)
        token = _INSIDE.set((*_INSIDE.get(), id(self)))
        try:
            await wrapped()
        finally:
            _INSIDE.reset(token)

    def _refuse_waiting_for_itself(self, what: str) -> None:
        if self.state in (STARTING, STOPPING) and id(self) in _INSIDE.get():
            raise StateError(f"{what} would wait for itself", actual=self.state, expected=())

    # -- the lifecycle ----------------------------------------------------

    async def start(self, hook: Callable[[BaseException | None], object] | None = None) -> None:
        await anyio.lowlevel.checkpoint()
        self._refuse_waiting_for_itself("start()")
        if self.state in (READY, STOPPED):
            await self._run_start(hook)
        elif self.state is STARTING:
            if hook is not None:
                self.hooks.append(hook)
            if "start does not join" in self.bugs:
                await self._through(self.target.raw_start)
                return
            cycle = self.cycle
            await self.started.wait()
            error = self.outcomes.get((cycle, "start"))  # the cycle it joined, not a later one
            if error is not None:
                raise error
        elif self.state is STARTED:
            if hook is not None:
                self.hooks.append(hook)
        else:
            raise StateError("stopping", actual=self.state, expected=(READY, STARTED))

    async def _run_start(self, hook: Callable[[BaseException | None], object] | None) -> None:
        self.instruments = INSTRUMENTS.get()
        self.cycle += 1
        self.hooks = [hook] if hook is not None else []
        self.started, self.stopped = anyio.Event(), anyio.Event()
        self.raw_start_began = anyio.Event()
        self.start_error = self.stop_error = None
        self.pending = False
        self.reason = None
        if "illegal move" in self.bugs and self.state is STOPPED:
            self._move(READY)
        self._move(STARTING)  # before any await, or a second start would begin too
        try:
            # Our helpers are plumbing, not under test: no faults, no cancellation.
            with _uninstrumented(), anyio.CancelScope(shield=True):
                if self.runner.state is READY:
                    await self.runner.start()
                self.tasks = startable.Startable(name="naive tasks")
                await self.tasks.start(self.stop_nowait)  # a crashing task stops us
            await self._through(self._raw_start)
        except Exception as exc:
            self.start_error = self.reason = exc
            self.hooks = []
            self._move(STOPPING, exc)
            self.outcomes[self.cycle, "start"] = self.start_error
            self.started.set()
            await self._finish_stop()
            raise
        except BaseException:  # cancelled: abandon, and clean up in the runner
            self.start_error = self.reason = startable.AbortedError("start cancelled")
            self.hooks = []
            self._move(STOPPING, self.reason)
            self.outcomes[self.cycle, "start"] = self.start_error
            self.started.set()
            with _uninstrumented():
                self.runner.start_soon(self._finish_stop)
            raise
        self._move(STARTED)
        self.started.set()
        if self.pending:
            self._begin_stop(self.reason)
            with _uninstrumented():
                self.runner.start_soon(self._finish_stop)

    async def _raw_start(self) -> None:
        self.raw_start_began.set()
        await self.target.raw_start()

    async def stop(self, err: BaseException | None = None) -> None:
        await anyio.lowlevel.checkpoint()
        self._refuse_waiting_for_itself("stop()")
        if self.state is READY:
            if "stop before start raises" in self.bugs:
                raise RuntimeError("not started")
            self.instruments = INSTRUMENTS.get()  # no cycle: this move is its own
            self._move(STOPPED)
        elif self.state is STARTING:
            if "stop does not wait for start" in self.bugs:
                await self.raw_start_began.wait()
                if self.state is STARTING:  # the raw start is running: stop under it
                    self.reason = err
                    await self._through(partial(self.target.raw_stop, err), err)
                    return
                if self.state is STOPPING:
                    await self._join_stop()
                else:
                    await self.stop(err)
                return
            if not self.pending:
                self.pending, self.reason = True, err
            await self._join_stop()
        elif self.state is STARTED:
            self._begin_stop(err)
            await self._finish_stop()
            if self.stop_error is not None:
                raise self.stop_error
        elif self.state is STOPPING:
            if "stop can hang" in self.bugs:
                await anyio.Event().wait()
            await self._join_stop()

    async def _join_stop(self) -> None:
        cycle, stopped = self.cycle, self.stopped
        await stopped.wait()
        error = self.outcomes.get((cycle, "stop"))  # that cycle's, if another began since
        if error is not None:
            raise error

    def stop_nowait(self, err: BaseException | None = None) -> None:
        if self.state is READY:
            self.instruments = INSTRUMENTS.get()
            self._move(STOPPED)
        elif self.state is STARTING:
            if not self.pending:
                self.pending, self.reason = True, err
        elif self.state is STARTED:
            self._begin_stop(err)
            with _uninstrumented():
                self.runner.start_soon(self._finish_stop)

    def _begin_stop(self, reason: BaseException | None) -> None:
        self.reason = reason
        self._move(STOPPING, reason)
        self._call_hooks()

    def _call_hooks(self) -> None:
        for hook in self.hooks:
            try:
                result = hook(self.reason)
                if result is not None:
                    with _uninstrumented():
                        self.runner.start_soon(_await, result)
            except Exception as exc:
                self.stop_error = exc

    async def _finish_stop(self) -> None:
        reason = None if "reason lost" in self.bugs else self.reason
        interrupted = False
        try:
            try:
                await self._through(partial(self.target.raw_stop, reason), reason)
            except Exception as exc:
                self.stop_error = exc
            except BaseException:
                interrupted = True  # forced: the tasks are still stopped, then STOPPED
                raise
        finally:  # even when cancelled, the stop ends STOPPED
            if self.tasks is not None and "tasks outlive stop" not in self.bugs:
                try:
                    with _uninstrumented(), anyio.CancelScope(shield=True):
                        await self.tasks.stop()
                except Exception as exc:
                    self.stop_error = self.stop_error or exc
            if interrupted:
                self.stop_error = startable.AbortedError("the stop was interrupted")
            if "hook called twice" in self.bugs:
                self._call_hooks()
            self._move(STOPPED, self.reason)
            self.outcomes[self.cycle, "stop"] = self.stop_error
            self.stopped.set()

    def start_soon(
        self, func: Callable[..., Awaitable[Any]], *args: Any, name: object = None
    ) -> None:
        if self.state not in (STARTING, STARTED, STOPPING) or self.tasks is None:
            raise StateError("no cycle", actual=self.state, expected=(STARTING, STARTED))
        with _uninstrumented():
            self.tasks.start_soon(func, *args, name=name)


@contextmanager
def _uninstrumented() -> Iterator[None]:
    token = INSTRUMENTS.set(())
    try:
        yield
    finally:
        INSTRUMENTS.reset(token)


async def _await(awaitable: Awaitable[object]) -> None:
    await awaitable


class NaiveService:
    """The service the naive engine drives; `raw_start`/`raw_stop` checkpoint once."""

    def __init__(self, bugs: frozenset[str] = frozenset()) -> None:
        self.lifecycle = Naive(self, bugs)

    async def raw_start(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def raw_stop(self, err: BaseException | None) -> None:
        await anyio.lowlevel.checkpoint()

    async def query(self) -> str:
        """Guarded by hand, wrongly: also lets the body run while STARTING."""
        if self.lifecycle.state not in (STARTED, STARTING):
            raise StateError("not started", actual=self.lifecycle.state, expected=(STARTED,))
        return "answer"


def naive_lifecycle(service: NaiveService) -> Naive:
    return service.lifecycle
