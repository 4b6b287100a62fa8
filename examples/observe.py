"""Watching a lifecycle: subscribe to its moves, read its statistics.

`subscribe()` calls a function on every move, with the reason for moves
into STOPPING and STOPPED; `statistics()` is a snapshot of the current cycle;
`wait_state()` waits for a state.
"""

from __future__ import annotations

import anyio

import startable


class Job:
    def __init__(self) -> None:
        self.done = anyio.Event()

    @startable.as_raw_start
    async def _start(self) -> None:
        startable.of(self).start_soon(self._work)

    async def _work(self) -> None:
        await anyio.sleep(0.01)
        raise TimeoutError("the upstream did not answer")

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        pass


def show(change: startable.StateChange) -> None:
    reason = f" because {change.reason!r}" if change.reason else ""
    print(f"cycle {change.cycle}: {change.previous.name} -> {change.current.name}{reason}")


async def main() -> None:
    job = Job()
    lifecycle = startable.of(job)
    unsubscribe = lifecycle.subscribe(show)
    async with startable.open_owner():
        await lifecycle.start()
        print("now:", lifecycle)
        await lifecycle.wait_state(startable.State.STOPPED)
    unsubscribe()
    stats = lifecycle.statistics()
    print(f"stopped after cycle {stats.cycle}, reason: {stats.stop_reason!r}")
    print(f"raw start took {stats.start_duration:.6f}s, the stop {stats.stop_duration:.6f}s")


if __name__ == "__main__":
    anyio.run(main, backend="trio")
