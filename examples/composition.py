"""Composition: a parent starts its children and stops with them.

``await startable.of(child).start(startable.of(self).stop)`` passes the
parent's ``stop`` as the child's on_stopping hook: if a child ever stops on
its own, the parent begins stopping in the same step, with the child's reason.
The second child needs a value from the first, so they start in order.
"""

from __future__ import annotations

import anyio

import startable


class Database:
    @startable.as_raw_start
    async def _connect(self) -> None:
        await anyio.sleep(0.01)
        print("database: connected")

    @startable.as_raw_stop
    async def _disconnect(self) -> None:
        print("database: disconnected")

    @startable.assert_state()
    async def setting(self, key: str) -> str:
        return {"cache_size": "128"}[key]


class Cache:
    def __init__(self, size: int) -> None:
        self.size = size

    @startable.as_raw_start
    async def _fill(self) -> None:
        print(f"cache: {self.size} slots ready")

    @startable.as_raw_stop
    async def _drop(self) -> None:
        print("cache: dropped")


# --8<-- [start:class-app]
class App:
    def __init__(self) -> None:
        self.database = Database()
        self.cache: Cache | None = None

    @startable.as_raw_start
    async def _start(self) -> None:
        await startable.of(self.database).start(startable.of(self).stop)
        size = int(await self.database.setting("cache_size"))
        self.cache = Cache(size)
        await startable.of(self.cache).start(startable.of(self).stop)

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        if self.cache is not None:
            await startable.of(self.cache).stop()
        await startable.of(self.database).stop()


# --8<-- [end:class-app]


async def main() -> None:
    async with startable.running(App()) as app:
        print("app:", startable.of(app).state.name)


if __name__ == "__main__":
    anyio.run(main, backend="trio")
