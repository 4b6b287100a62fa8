"""Waiting on a ServicesManager without sleeping."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from startable.cluster import ServicesManager


async def until(manager: ServicesManager, condition: Callable[[], bool]) -> None:
    """Wait until `condition()` holds, checking it after every event of `manager`.

    Bound it with `anyio.fail_after` in the test.
    """
    while not condition():
        moved = anyio.Event()
        unsubscribe = manager.subscribe(lambda _, moved=moved: moved.set())
        try:
            await moved.wait()
        finally:
            unsubscribe()
