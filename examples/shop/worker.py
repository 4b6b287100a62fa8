"""Places orders through the API, reads each back twice; crashes now and then."""

from __future__ import annotations

import os
import random

import anyio

import startable
from startable.cluster import ClusterError, ServiceClient, this_service


class Worker:
    def __init__(self) -> None:
        self.interval = 1 / float(os.environ.get("ORDERS_PER_SECOND", "2"))
        self.crash_one_in = int(os.environ.get("CRASH_ONE_IN", "0"))
        self.client: ServiceClient | None = None

    @startable.as_raw_start
    async def _start(self) -> None:
        self.client = this_service()
        startable.of(self).start_soon(self._work)

    async def _work(self) -> None:
        assert self.client is not None
        api = self.client
        for number in range(1, 1_000_000):
            key = f"order:{os.getpid()}:{number}"
            try:
                await api.request("api", "write", key, {"items": random.randint(1, 5)}, deadline=5)
                first = await api.request("api", "read", key, deadline=5)
                again = await api.request("api", "read", key, deadline=5)
            except ClusterError as exc:  # the API or what it uses is restarting: try later
                print(f"worker: {key} failed ({type(exc).__name__}), will retry")
            else:
                hits = ["hit" if answer["hit"] else "miss" for answer in (first, again)]
                print(f"worker: {key} stored, read back ({hits[0]}, then {hits[1]})")
            if self.crash_one_in and random.randrange(self.crash_one_in) == 0:
                raise RuntimeError(f"worker crashed on purpose after {number} orders")
            await anyio.sleep(self.interval)
