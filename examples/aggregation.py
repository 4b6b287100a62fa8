"""Aggregation: a child made elsewhere and handed in (dependency injection).

Two handlers share one connection pool. Each starts it with its own stop as
hook, and so each holds it: the pool starts once, stays up while either
handler runs, and is stopped when the last one lets go. If the pool itself
fails, every handler still running stops with its reason.

A handler does not stop the pool in its raw stop: it was handed the pool, it
did not make it. (One that did would stop it for the other handler too,
which would then stop with a `StoppedError` naming who stopped the pool.)
"""

from __future__ import annotations

import anyio

import startable


class Pool:
    @startable.as_raw_start
    async def _open(self) -> None:
        print("pool: open")

    @startable.as_raw_stop
    async def _close(self, err: BaseException | None) -> None:
        print(f"pool: closed ({err!r})")


class Handler:
    def __init__(self, name: str, pool: Pool) -> None:
        self.name = name
        self.pool = pool

    @startable.as_raw_start
    async def _start(self) -> None:
        await startable.of(self.pool).start(startable.of(self).stop)

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        print(f"{self.name}: stopped because {err!r}")  # the pool is not ours to stop


async def main() -> None:
    pool = Pool()
    orders, users = Handler("orders", pool), Handler("users", pool)
    async with startable.open_owner():
        await startable.of(orders).start()
        await startable.of(users).start()
        print("both handlers started; pool started once")
        await startable.of(orders).stop()
        print(f"orders let go of the pool; users still holds it: {startable.of(pool).state.name}")
        startable.of(pool).stop_nowait(ConnectionError("database went away"))
        await startable.of(users).wait_state(startable.State.STOPPED)


if __name__ == "__main__":
    anyio.run(main, backend="trio")
