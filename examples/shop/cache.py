"""A least-recently-used cache in front of the store, kept fresh by its events."""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import anyio

import startable
from startable.cluster import ServiceClient, handler, this_service


class Cache:
    def __init__(self) -> None:
        self.size = int(os.environ.get("CACHE_SIZE", "128"))
        self.entries: OrderedDict[str, Any] = OrderedDict()
        self.hits = self.misses = 0
        self.client: ServiceClient | None = None

    @startable.as_raw_start
    async def _start(self) -> None:
        self.client = this_service()
        listening = anyio.Event()
        startable.of(self).start_soon(self._invalidate, listening)
        await listening.wait()  # from now on, no change to the store goes unseen
        print(f"cache: {self.size} entries")

    async def _invalidate(self, listening: anyio.Event) -> None:
        assert self.client is not None
        async with self.client.subscribe("kv.changed") as changes:
            listening.set()
            async for change in changes:
                self.entries.pop(change.payload, None)

    @handler
    async def get(self, key: str) -> dict[str, Any]:
        if key in self.entries:
            self.hits += 1
            self.entries.move_to_end(key)
            return {"value": self.entries[key], "hit": True}
        self.misses += 1
        assert self.client is not None
        value = await self.client.request("kv", "get", key, deadline=2)
        self.entries[key] = value
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return {"value": value, "hit": False}

    @handler
    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self.entries)}
