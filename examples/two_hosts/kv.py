"""The store of the two-hosts example: it runs on the first host."""

from __future__ import annotations

import os
from typing import Any

import startable
from startable.cluster import handler


class KeyValueStore:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    @startable.as_raw_start
    async def _start(self) -> None:
        print(f"kv: ready in process {os.getpid()}")

    @handler(idempotent=True)  # a read: asking twice does no harm
    def get(self, key: str) -> Any:
        return self.data.get(key)

    @handler
    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
