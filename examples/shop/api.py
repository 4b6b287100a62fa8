"""The API: reads through the cache, writes to the store."""

from __future__ import annotations

from typing import Any

import startable
from startable.cluster import ServiceClient, handler, this_service


class Api:
    def __init__(self) -> None:
        self.client: ServiceClient | None = None

    @startable.as_raw_start
    async def _start(self) -> None:
        self.client = this_service()
        print("api: serving")

    @handler
    async def read(self, key: str) -> dict[str, Any]:
        assert self.client is not None
        return await self.client.request("cache", "get", key, deadline=3)  # type: ignore[no-any-return]

    @handler
    async def write(self, key: str, value: Any) -> None:
        assert self.client is not None
        await self.client.request("kv", "put", key, value, deadline=3)

    @handler
    async def stats(self) -> dict[str, Any]:
        assert self.client is not None
        cache = await self.client.request("cache", "stats", deadline=3)
        keys = await self.client.request("kv", "count", deadline=3)
        return {"keys": keys, **cache}
