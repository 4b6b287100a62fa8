"""The API of the two-hosts example: it runs on the second host, and calls kv on the first."""

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
        # kv is STARTED here only once it is live on some host: this call crosses hosts.
        await self.client.request("kv", "put", "greeting", "hello from another host")
        print("api: ready; kv says", await self.client.request("kv", "get", "greeting"))

    @handler
    async def remember(self, key: str, value: Any) -> None:
        assert self.client is not None
        await self.client.request("kv", "put", key, value)

    @handler
    async def recall(self, key: str) -> Any:
        assert self.client is not None
        return await self.client.request("kv", "get", key, retries=2)
