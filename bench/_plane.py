"""Services for bench/manager.py's data-plane figures, run in child processes.

`Caller` measures in its own process, once STARTED, and prints one line of
JSON: the same code whether its link goes through the manager or straight
to `Echo`'s process.
"""

from __future__ import annotations

import json
import os
import time

import anyio

import startable
from startable.cluster import ServiceClient, handler, this_service


class Echo:
    @startable.as_raw_start
    async def _start(self) -> None:
        pass

    @handler
    def echo(self, payload: bytes) -> bytes:
        return payload


class Caller:
    @startable.as_raw_start
    async def _start(self) -> None:
        self.client = this_service()
        startable.of(self).start_soon(self._measure)

    async def _measure(self) -> None:
        sequential = int(os.environ["BENCH_SEQUENTIAL"])
        total, in_flight = int(os.environ["BENCH_TOTAL"]), int(os.environ["BENCH_IN_FLIGHT"])
        payload = b"x" * 64
        for _ in range(sequential // 10):  # warm up
            await self._call(payload)
        began = time.perf_counter()
        for _ in range(sequential):
            await self._call(payload)
        round_trip = (time.perf_counter() - began) / sequential
        began = time.perf_counter()
        async with anyio.create_task_group() as group:
            for _ in range(in_flight):
                group.start_soon(self._calls, payload, total // in_flight)
        throughput = total // in_flight * in_flight / (time.perf_counter() - began)
        print("RESULT " + json.dumps({"round_trip": round_trip, "throughput": throughput}))

    async def _calls(self, payload: bytes, count: int) -> None:
        for _ in range(count):
            await self._call(payload)

    async def _call(self, payload: bytes) -> None:
        client: ServiceClient = self.client
        await client.request("echo", "echo", payload)
