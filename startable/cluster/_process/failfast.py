"""Starting a child from a raw start, and knowing at once when its start fails.

`await child.start()` raises a failed start's error only once the child's
raw stop has run. For a container that is the whole stop ladder (a close
request, then signals, each with its timeout), during which its parents
would still look STARTING. `FailFast` starts the child in a task of the
parent's cycle instead, and raises the child's error as soon as the child
leaves STARTING: the parent's own stop then begins while the child's
clean-up goes on, and the parent's raw stop joins it (`FailFast.stop`).
"""

from __future__ import annotations

import anyio

from ... import AbortedError, Hook, Startable, State, StateChange

READY, STARTING, STARTED, STOPPED = State.READY, State.STARTING, State.STARTED, State.STOPPED


class FailFast:
    """One child started this way, by one parent's raw start (and stopped by its raw stop)."""

    def __init__(self) -> None:
        self._starting: anyio.CancelScope | None = None

    async def start(self, parent: Startable, child: Startable, hook: Hook | None) -> None:
        """Start `child` in a task of `parent`'s cycle; return once it is STARTED.

        Raises:
            Exception: the child's start error, as soon as it is known (the
                child is STOPPING then; call `stop` from the raw stop).
        """
        left: list[StateChange] = []
        moved = anyio.Event()

        def watch(change: StateChange) -> None:
            if change.current is not STARTING and not left:
                left.append(change)
                moved.set()

        starting = self._starting = anyio.CancelScope()
        refused: list[Exception] = []

        async def run() -> None:
            try:
                with starting:
                    await child.start(hook)
            except Exception as exc:  # raised below if the child never moved (else: known)
                refused.append(exc)
            finally:
                moved.set()

        unsubscribe = child.subscribe(watch)
        try:
            parent.start_soon(run, name=f"start {child!r}")
            await moved.wait()
        finally:
            unsubscribe()
        if not left:  # it never began: start() refused (or the start was abandoned at once)
            if refused:
                raise refused[0]
            raise AbortedError(f"the start of {child!r} was abandoned")
        if left[0].current is STARTED:
            return
        reason = left[0].reason
        raise reason if reason is not None else AbortedError(f"the start of {child!r} failed")

    async def stop(self, child: Startable, err: BaseException | None) -> None:
        """Stop `child`: abandon its start if still in flight (or not yet begun),
        or stop it, or join its stop."""
        if child.state in (READY, STARTING) and self._starting is not None:
            self._starting.cancel("its parent is stopping")
        if child.state not in (READY, STOPPED):
            await child.stop(err)
