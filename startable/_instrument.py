"""Instruments: watch every lifecycle in a context, and wrap its raw hooks.

Modelled on `trio.abc.Instrument`: an object whose methods the engine calls
at known points. Instruments are set per context with `instrumented()`; a
cycle that begins inside the block captures them and reports all its moves
and raw hooks to them, whichever task makes them. With none set, a cycle
costs one extra context-variable read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._startable import Startable, StateChange


class Instrument:
    """Base class for instruments; override the methods you need.

    The raw-hook methods work like middleware: they receive the call to make
    and must await it (or not, or raise instead) — so an instrument can
    record a raw hook's start and end, delay it, or make it fail, which is
    what `startable.testing` does. `on_stopping_hook` does the same,
    synchronously, for each on_stopping hook.

    Example:
        ```python
        class Timing(startable.Instrument):
            async def raw_start(self, lifecycle, call):
                began = time.perf_counter()
                try:
                    await call()
                finally:
                    print(lifecycle.name, "started in", time.perf_counter() - began)

        with startable.instrumented(Timing()):
            async with startable.running(service):
                ...
        ```
    """

    def on_move(self, change: StateChange) -> None:
        """Called synchronously on every move of every lifecycle, after its subscribers.

        An exception is logged on the `startable` logger and ignored.
        """

    async def raw_start(self, lifecycle: Startable, call: Callable[[], Awaitable[None]]) -> None:
        """Wraps each raw start: `await call()` runs it (and inner instruments).

        An exception raised here is the start's failure, as if the raw start
        had raised it.
        """
        await call()

    async def raw_stop(
        self,
        lifecycle: Startable,
        reason: BaseException | None,
        call: Callable[[], Awaitable[None]],
    ) -> None:
        """Wraps each raw stop (`reason` is what the raw stop receives).

        An exception raised here is an error of the stop, as if the raw stop
        had raised it.
        """
        await call()

    def on_stopping_hook(
        self,
        lifecycle: Startable,
        hook: Callable[[BaseException | None], object],
        reason: BaseException | None,
        call: Callable[[], object],
    ) -> object:
        """Wraps each call of an on_stopping hook; `call()` makes it and returns its result.

        Synchronous, like the hooks: it runs while `lifecycle` leaves STARTED,
        before any other task runs. Return what `call()` returned; an
        exception raised here is the hook's error. When `hook` is another
        lifecycle's `stop` (the composition idiom), that lifecycle has begun
        stopping by the time `call()` returns.
        """
        return call()


#: The instruments of the current context, outermost first.
INSTRUMENTS: ContextVar[tuple[Instrument, ...]] = ContextVar("startable_instruments", default=())


@contextmanager
def instrumented(*instruments: Instrument) -> Iterator[None]:
    """Apply `instruments` to every cycle that begins inside the block.

    A cycle keeps the instruments of the place where it began until it is
    STOPPED, so they see its later moves and its raw stop even when another
    task makes them. Nests: instruments of an outer block stay active, and
    wrap those of the inner one.

    Raises:
        TypeError: if an argument is not an `Instrument`.
    """
    for instrument in instruments:
        if not isinstance(instrument, Instrument):
            raise TypeError(f"instrumented() takes Instrument objects, got {instrument!r}")
    token = INSTRUMENTS.set(INSTRUMENTS.get() + instruments)
    try:
        yield
    finally:
        INSTRUMENTS.reset(token)
