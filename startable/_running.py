"""Entry points: `running()` for code, `run()` for programs."""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

import anyio

from ._exceptions import StoppedError
from ._owner import combine, open_owner
from ._startable import Startable, StateChange, of

T = TypeVar("T")

logger = logging.getLogger("startable")

#: Exit codes of `run`.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_FORCED = 130


@asynccontextmanager
async def running(obj: T) -> AsyncIterator[T]:
    """Start `obj` on entry and stop it on exit; yields `obj`.

    The stop on exit gets the body's exception (if any) as its reason. If the
    service stops on its own while the body runs (a crash, a child's crash, a
    background task's error), the body is cancelled and the reason is raised
    — or `StoppedError` if it stopped without one. Errors from the
    body, the reason and the stop come out as the single error, or as an
    `ExceptionGroup` when there are several.

    The block is the service's owner (see `open_owner`); anything else
    started in the body without being stopped is stopped on exit too.

    Example:
        ```python
        async with startable.running(Server()) as server:
            await serve_forever(server)
        ```
    """
    lifecycle = of(obj)
    async with open_owner():
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
            with body:
                yield obj
        except BaseException as exc:
            body_error = exc
        exiting = True
        errors: list[Exception] = []
        if on_its_own:
            reason = on_its_own[0]
            if reason is None:
                reason = StoppedError(
                    f"{lifecycle!r} stopped on its own while running() was active"
                )
            if not isinstance(reason, Exception):
                raise reason
            errors.append(reason)
        if isinstance(body_error, Exception):
            errors.append(body_error)
        try:
            await lifecycle.stop(body_error if isinstance(body_error, Exception) else None)
        except Exception as exc:
            errors.append(exc)
        error = combine(errors, f"errors in running({lifecycle!r})")
        if error is not None:
            raise error
        if body_error is not None:
            raise body_error


def run(
    obj: object,
    *,
    backend: Literal["trio", "asyncio"] = "trio",
    backend_options: dict[str, Any] | None = None,
    start_timeout: float | None = None,
    stop_timeout: float | None = None,
) -> int:
    """Run `obj` as a program: start it, wait, stop it on SIGINT or SIGTERM.

    State changes and errors are logged on the `startable` logger. A second
    SIGINT while stopping forces the stop (the raw stop is cancelled). A
    service that stops on its own ends the program too.

    Args:
        obj: anything `of` accepts.
        backend: the anyio backend.
        backend_options: passed to `anyio.run`.
        start_timeout: seconds the start may take; then it is abandoned.
        stop_timeout: seconds the stop may take; then it is forced.

    Returns:
        The exit code: 0 when the service stopped cleanly (on a signal, or on
        its own without a reason), 130 when a second SIGINT forced the stop,
        1 otherwise (failed or timed-out start, stop reason, failed stop).

    Example:
        ```python
        if __name__ == "__main__":
            sys.exit(startable.run(Server()))
        ```
    """
    lifecycle = of(obj)
    return anyio.run(
        _serve,
        lifecycle,
        start_timeout,
        stop_timeout,
        backend=backend,
        backend_options=backend_options,
    )


def _log_change(change: StateChange) -> None:
    name = change.startable.name
    move = f"{change.previous.name} → {change.current.name}"
    if change.reason is not None:
        logger.info("%s: %s (reason: %r)", name, move, change.reason)
    else:
        logger.info("%s: %s", name, move)


async def _serve(
    lifecycle: Startable, start_timeout: float | None, stop_timeout: float | None
) -> int:
    unsubscribe = lifecycle.subscribe(_log_change)
    force = anyio.CancelScope()
    wake = anyio.Event()
    signalled: list[int] = []
    code = EXIT_FAILED
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as watchers:

                async def watch_signals() -> None:
                    async for signum in signals:
                        signalled.append(signum)
                        name = signal.Signals(signum).name
                        if len(signalled) == 1:
                            logger.info("%s received: stopping (press Ctrl-C again to force)", name)
                            wake.set()
                        elif signum == signal.SIGINT:
                            logger.warning("%s received again: forcing the stop", name)
                            force.cancel()

                watchers.start_soon(watch_signals)
                with force:
                    code = await _main(
                        lifecycle, wake, signalled, force, start_timeout, stop_timeout
                    )
                watchers.cancel_scope.cancel()
    finally:
        unsubscribe()
    if force.cancelled_caught:
        return EXIT_FORCED if len(signalled) > 1 else EXIT_FAILED
    return code


async def _main(
    lifecycle: Startable,
    wake: anyio.Event,
    signalled: list[int],
    force: anyio.CancelScope,
    start_timeout: float | None,
    stop_timeout: float | None,
) -> int:
    reasons: list[BaseException | None] = []

    def on_stopping(reason: BaseException | None) -> None:
        reasons.append(reason)
        wake.set()

    async def stop(label: str) -> bool:
        with anyio.move_on_after(stop_timeout):
            try:
                await lifecycle.stop()
            except Exception:
                logger.exception("%s of %r failed", label, lifecycle)
                return False
            return True
        logger.error("%s of %r took more than %ss: forcing it", label, lifecycle, stop_timeout)
        force.cancel()
        return False

    async with open_owner():
        with anyio.move_on_after(start_timeout) as started:
            try:
                await lifecycle.start(on_stopping)
            except Exception:
                logger.exception("start of %r failed", lifecycle)
                return EXIT_FAILED
        if started.cancelled_caught:
            logger.error("start of %r took more than %ss: abandoned", lifecycle, start_timeout)
            await stop("clean-up after the abandoned start")
            return EXIT_FAILED
        await wake.wait()
        if reasons and not signalled:
            reason = reasons[0]
            stopped_cleanly = await stop("stop")
            if reason is not None:
                logger.error("%r stopped on its own: %r", lifecycle, reason)
                return EXIT_FAILED
            return EXIT_OK if stopped_cleanly else EXIT_FAILED
        return EXIT_OK if await stop("stop") else EXIT_FAILED
