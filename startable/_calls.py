"""Guarded calls in flight, and the drain that lets them finish before a raw stop.

A method guarded with `assert_state(drain=...)` registers each call here for
as long as it runs, under a cancel scope of its own. When the service stops,
the stop waits for those calls before it runs the raw stop, each for at most
its method's drain timeout: the scope's deadline is moved forward so the call
cancels itself then, and the stop only waits for the count to reach zero.
Guards without drain never come here.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ._exceptions import AbortedError


class Calls:
    """The draining calls in flight on one object."""

    __slots__ = ("forced", "idle", "scopes", "since")

    def __init__(self) -> None:
        self.scopes: dict[anyio.CancelScope, float] = {}  # scope -> drain timeout
        self.since: float | None = None  # when the drain in progress began
        self.idle: anyio.Event | None = None
        self.forced = False  # the drain in progress was itself cancelled

    async def run(
        self,
        func: Callable[..., Awaitable[Any]],
        obj: object,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        bound: float,
        name: str,
    ) -> Any:
        """Run one guarded call, counted, under a scope a drain can end."""
        scope = anyio.CancelScope()
        if self.since is not None:  # a stop is already draining: this call is bounded too
            scope.deadline = self.since + bound
        self.scopes[scope] = bound
        try:
            with scope:
                return await func(obj, *args, **kwargs)
        finally:
            del self.scopes[scope]
            if not self.scopes and self.idle is not None:
                self.idle.set()
        # Only reached when the drain cancelled the call.
        if self.forced:
            raise AbortedError(f"{name}() was cut short: the stop was forced")
        raise AbortedError(
            f"{name}() was cut short: the stop waited {bound:g}s for it "
            "(its drain timeout), then ran the raw stop"
        )

    async def drain(self) -> None:
        """Wait for the calls in flight, each at most its drain timeout.

        If the wait is cancelled (a forced stop), the calls are cancelled and
        waited for, shielded, as a nursery waits for its cancelled children:
        the raw stop never runs under a call that is still running.
        """
        now = anyio.current_time()
        self.since = now
        for scope, timeout in self.scopes.items():
            if not math.isinf(timeout):
                scope.deadline = min(scope.deadline, now + timeout)
        try:
            try:
                await self._wait()
            except BaseException:
                self.forced = True
                for scope in list(self.scopes):
                    scope.cancel()
                with anyio.CancelScope(shield=True):
                    await self._wait()
                raise
        finally:
            self.since = None
            self.forced = False

    async def _wait(self) -> None:
        while self.scopes:
            self.idle = anyio.Event()
            await self.idle.wait()
        self.idle = None
