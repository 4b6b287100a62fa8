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


async def poll(condition: Callable[[], bool], interval: float = 0.01) -> None:
    """Wait until `condition()` holds, checking it every `interval` seconds: for
    what sends no event (another process, a socket, a file).

    Bound it with `anyio.fail_after` in the test.
    """
    while not condition():  # noqa: ASYNC110 - nothing to wait on but the condition
        await anyio.sleep(interval)
