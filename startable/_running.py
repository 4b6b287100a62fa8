"""Entry points: `running()` for code, `run()` for programs."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

import anyio

from ._exceptions import AbortedError, StoppedError
from ._instrument import Instrument, instrumented
from ._owner import open_root, raise_primary
from ._program import EXIT_FAILED as EXIT_FAILED
from ._program import EXIT_FORCED as EXIT_FORCED
from ._program import EXIT_OK as EXIT_OK
from ._program import Phase, configure_logging, drive
from ._startable import Startable, StateChange, of, own_name

T = TypeVar("T")

logger = logging.getLogger("startable")


@asynccontextmanager
async def running(obj: T) -> AsyncIterator[T]:
    """Start `obj` on entry and stop it on exit; yields `obj`.

    The stop on exit gets the body's exception (if any) as its reason. If the
    service stops on its own while the body runs (a crash, a child's crash, a
    background task's error), the body is cancelled and the reason is raised
    — or `StoppedError` if it stopped without one.

    One error comes out, always the first that happened, as itself: the
    reason the service stopped on its own if it did, else the body's error,
    else the stop's (raw stop, hooks, children left running). Errors raised
    while cleaning up after it (a failing raw stop after a body error, say)
    are attached to it as notes with their tracebacks, never put in its
    place. An `ExceptionGroup` comes out only when the stop itself failed in
    several ways and nothing failed before it.

    The block is the service's owner (see `open_owner`); anything else
    started in the body without being stopped is stopped on exit too.

    Example:
        ```python
        async with startable.running(Server()) as server:
            await serve_forever(server)
        ```
    """
    lifecycle = of(obj)
    async with open_root() as root:
        body = anyio.CancelScope()
        exiting = False
        on_its_own: list[BaseException | None] = []

        def on_stopping(reason: BaseException | None) -> None:
            if not exiting:
                on_its_own.append(reason)
                body.cancel()

        await lifecycle.start(on_stopping)
        body_error: BaseException | None = None
        try:
            # The block's own scope (cancelled when one of its tasks fails)
            # covers the body only: the stop below must still run then.
            with root.body, body:
                yield obj
        except BaseException as exc:
            body_error = exc
        exiting = True
        primary: BaseException | None = None
        secondary: list[Exception] = []
        if on_its_own:
            primary = on_its_own[0]
            if primary is None:
                primary = StoppedError(
                    f"{lifecycle!r} stopped on its own while running() was active"
                )
            if isinstance(body_error, Exception):
                secondary.append(body_error)  # most likely a consequence of the stop
        else:
            primary = body_error
        try:
            await lifecycle.stop(body_error if isinstance(body_error, Exception) else None)
        except Exception as exc:
            if primary is None:
                primary = exc
            else:
                secondary.append(exc)
        raise_primary(
            primary,
            secondary,
            f"while running({lifecycle!r}) stopped it after this error, this was raised too",
            f"errors in running({lifecycle!r})",
        )


def run(
    obj: object,
    *,
    backend: Literal["trio", "asyncio"] = "trio",
    backend_options: dict[str, Any] | None = None,
    start_timeout: float | None = None,
    stop_timeout: float | None = None,
    log_level: int | str | None = None,
) -> int:
    """Run `obj` as a program: start it, wait, stop it on SIGINT or SIGTERM.

    Every state change is logged on the `startable` logger: those of `obj`
    at INFO, those of every lifecycle started under it (its children, and
    theirs) at DEBUG; errors at ERROR. A first signal while it is still
    starting abandons the start (which is undone) and stops it; the log
    says why the start was abandoned (the signal, the start timeout, or a
    cancellation). A second SIGINT while stopping forces the stop (the raw
    stop is cancelled). A service that stops on its own ends the program
    too.

    Args:
        obj: anything `of` accepts.
        backend: the anyio backend.
        backend_options: passed to `anyio.run`.
        start_timeout: seconds the start may take; then it is abandoned.
        stop_timeout: seconds the stop may take; then it is forced.
        log_level: if given (`"INFO"`, `logging.DEBUG`...), set up logging
            as `startable run` does: the root logger gets this level and,
            if it has no handler yet, one that writes to stderr in the
            command's format. By default logging is left as it is.

    Returns:
        The exit code: 0 when the service stopped cleanly (on a signal, or on
        its own without a reason), 130 when a second SIGINT forced the stop,
        1 otherwise (failed or timed-out start, stop reason, failed stop).

    Raises:
        ValueError: a timeout that is not a positive, finite number, or an
            unknown `log_level`; before anything starts.
        TypeError: a `log_level` that is neither a string nor an integer.

    Example:
        ```python
        if __name__ == "__main__":
            sys.exit(startable.run(Server(), log_level="INFO"))
        ```
    """
    lifecycle = of(obj)
    for name, timeout in (("start_timeout", start_timeout), ("stop_timeout", stop_timeout)):
        if timeout is not None and not (0 < timeout < math.inf):  # NaN fails too
            raise ValueError(f"{name} must be a positive, finite number, not {timeout!r}")
    if log_level is not None:
        configure_logging(log_level)
    return anyio.run(
        _serve,
        lifecycle,
        start_timeout,
        stop_timeout,
        backend=backend,
        backend_options=backend_options,
    )


def _label(lifecycle: Startable) -> str:
    """`lifecycle.name`, with the object's own `name` if it has one (`ServiceNode 'kv'`)."""
    own = own_name(lifecycle.target)
    return f"{lifecycle.name} {own!r}" if own is not None else lifecycle.name


def _log_change(change: StateChange, *, level: int = logging.INFO, why: str | None = None) -> None:
    """Log one move; `why` replaces the reason of an abandoned start."""
    if not logger.isEnabledFor(level):
        return
    lifecycle = change.startable
    name = lifecycle.name if level >= logging.INFO else _label(lifecycle)
    move = f"{change.previous.name} → {change.current.name}"
    if why is not None:
        logger.log(level, "%s: %s (start abandoned: %s)", name, move, why)
    elif change.reason is not None:
        logger.log(level, "%s: %s (reason: %r)", name, move, change.reason)
    else:
        logger.log(level, "%s: %s", name, move)


class _LogNarrator:
    """`run()` tells what happens on the `startable` logger."""

    def enter(self, phase: Phase) -> None:
        pass  # the moves are logged as they happen (`_MoveLog`)

    def say(self, text: str, *, failed: bool = False, error: BaseException | None = None) -> None:
        if error is not None:
            logger.error("%s", text, exc_info=error)
        else:
            logger.log(logging.ERROR if failed else logging.INFO, "%s", text)


class _MoveLog(Instrument):
    """Logs every move of every lifecycle whose cycle begins under `run()`."""

    def __init__(self, root: Startable) -> None:
        self.root = root

    def on_move(self, change: StateChange) -> None:
        if change.startable is not self.root:
            _log_change(change, level=logging.DEBUG)
            return
        reason = change.reason  # an abandoned start says why it was abandoned
        _log_change(change, why=reason.why if isinstance(reason, AbortedError) else None)


async def _serve(
    lifecycle: Startable, start_timeout: float | None, stop_timeout: float | None
) -> int:
    narrator = _LogNarrator()
    with instrumented(_MoveLog(lifecycle)):
        return await drive(
            lifecycle, narrator, start_timeout=start_timeout, stop_timeout=stop_timeout
        )
