"""The API of the two-hosts example: it runs on the second host, and calls kv on the first."""

from __future__ import annotations

from typing import Any

import anyio

import startable
from startable.cluster import ServiceClient, handler, this_service


class Api:
    def __init__(self) -> None:
        self.client: ServiceClient | None = None
        self.greeting = "hello"

    @startable.as_raw_start
    async def _start(self) -> None:
        self.client = this_service()
        # kv is STARTED here only once it is live on some host: this call crosses hosts.
        await self.client.request("kv", "put", "greeting", "hello from another host")
        print("api: ready; kv says", await self.client.request("kv", "get", "greeting"))
        watching = anyio.Event()
        startable.of(self).start_soon(self._follow_config, watching)
        await watching.wait()

    async def _follow_config(self, watching: anyio.Event) -> None:
        """Keep `greeting` as api's configuration says, whichever host changes it."""
        assert self.client is not None
        config = self.client.config()
        async with config.watch() as changes:
            watching.set()
            self.greeting = await config.get("greeting", self.greeting)  # (after the watch began)
            async for change in changes:
                if change.key == "greeting":
                    self.greeting = change.value if not change.deleted else "hello"
                    print("api: the greeting is now", repr(self.greeting))

    @handler
    def greet(self, name: str) -> str:
        return f"{self.greeting}, {name}"

    @handler
    async def remember(self, key: str, value: Any) -> None:
        assert self.client is not None
        await self.client.request("kv", "put", key, value)

    @handler
    async def recall(self, key: str) -> Any:
        assert self.client is not None
        return await self.client.request("kv", "get", key, retries=2)
