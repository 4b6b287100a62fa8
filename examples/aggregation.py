"""Aggregation: a child made elsewhere and handed in (dependency injection).

Two handlers share one connection pool. Each starts it with its own stop as
hook; the pool starts once, and when it fails, both handlers stop with its
reason.
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
        print(f"{self.name}: stopped because {err!r}")


async def main() -> None:
    pool = Pool()
    orders, users = Handler("orders", pool), Handler("users", pool)
    async with startable.open_owner():
        await startable.of(orders).start()
        await startable.of(users).start()
        print("both handlers started; pool started once")
        await startable.of(pool).stop(ConnectionError("database went away"))
        await startable.of(orders).wait_state(startable.State.STOPPED)
        await startable.of(users).wait_state(startable.State.STOPPED)


if __name__ == "__main__":
    anyio.run(main, backend="trio")
