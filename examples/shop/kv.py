"""The store: keys and values in memory; says on "kv.changed" what changed."""

from __future__ import annotations

from typing import Any

import startable
from startable.cluster import ServiceClient, handler, this_service


class KeyValueStore:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.client: ServiceClient | None = None

    @startable.as_raw_start
    async def _start(self) -> None:
        self.client = this_service()
        print("kv: ready")

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        print(f"kv: closing with {len(self.data)} keys")

    @handler
    def get(self, key: str) -> Any:
        return self.data.get(key)

    @handler
    async def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        assert self.client is not None
        await self.client.emit("kv.changed", key)

    @handler
    def count(self) -> int:
        return len(self.data)
