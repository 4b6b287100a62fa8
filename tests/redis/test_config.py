"""Each service's configuration in Redis, shared by its hosts: a change made on one
host is seen on the others, forged values and announcements are ignored and
counted, and a store that cannot be reached fails clearly."""

from __future__ import annotations

import functools
import time

import anyio
import coredis
import msgspec
import pytest

from startable.cluster import (
    ConfigChange,
    ConfigChanges,
    EmbeddedRedis,
    RequestRefused,
    ServiceClient,
    ServicesManager,
    ServiceUnavailable,
)
from startable.cluster._redis import config as redis_config
from startable.cluster._redis.config import RedisConfig
from startable.cluster._redis.envelope import envelope_key, seal

from .test_hosts import KEY, REMOTE_STORE, host, hosts, store

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.processes,
]


def client_of(manager: ServicesManager) -> ServiceClient:
    client = manager["store"].client
    assert client is not None
    return client


async def next_change(changes: ConfigChanges) -> ConfigChange:
    with anyio.fail_after(5):
        return await changes.receive()


async def test_budgets_are_kept_in_redis_too(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_config, "MAX_CONFIG_BYTES", 100)
    monkeypatch.setattr(redis_config, "MAX_CONFIG_KEYS", 2)
    b = host(redis_server, store())
    with anyio.fail_after(30):
        async with hosts(b):
            config = client_of(b).config()
            await config.set("a", "x" * 40)
            await config.set("a", "y" * 90)  # (replacing a value counts the new one only)
            with pytest.raises(RequestRefused, match="more than 100 bytes"):
                await config.set("b", "z" * 20)
            await config.set("b", 1)
            with pytest.raises(RequestRefused, match="has 2 configuration keys already"):
                await config.set("c", 1)
            assert await config.items() == {"a": "y" * 90, "b": 1}


async def test_a_change_on_one_host_is_seen_on_every_other(redis_server: EmbeddedRedis) -> None:
    b, c = host(redis_server, store()), host(redis_server, store())
    a = host(redis_server, REMOTE_STORE)
    with anyio.fail_after(30):
        async with hosts(b, c, a):
            on_b, on_c = client_of(b).config(), client_of(c).config()
            async with on_b.watch() as seen_b, on_c.watch() as seen_c:
                await a.client.config("store").set("limit", 5)  # the operator of a third host
                expected = ConfigChange("store", "limit", 5)
                assert await next_change(seen_b) == expected
                assert await next_change(seen_c) == expected
                await on_b.set("limit", {"per": "minute", "n": 6})
                assert (await next_change(seen_c)).value == {"per": "minute", "n": 6}
                assert (await next_change(seen_b)).value == {"per": "minute", "n": 6}
                assert await on_c.get("limit") == {"per": "minute", "n": 6}
                assert await on_c.delete("limit") is True
                deleted = ConfigChange("store", "limit", None, deleted=True)
                assert await next_change(seen_b) == deleted
                assert await next_change(seen_c) == deleted
                await on_c.set("mode", "fast")
                assert await a.client.config("store").items() == {"mode": "fast"}
            assert isinstance(a.config_store, RedisConfig)


async def test_changes_from_many_hosts_arrive_everywhere_in_one_order(
    redis_server: EmbeddedRedis,
) -> None:
    b, c = host(redis_server, store()), host(redis_server, store())
    with anyio.fail_after(30):
        async with hosts(b, c):
            on_b, on_c = client_of(b).config(), client_of(c).config()
            async with on_b.watch(buffer=100) as seen_b, on_c.watch(buffer=100) as seen_c:
                async with anyio.create_task_group() as group:
                    for n in range(20):
                        group.start_soon((on_b if n % 2 else on_c).set, "n", n)
                order_b = [(await next_change(seen_b)).value for _ in range(20)]
                order_c = [(await next_change(seen_c)).value for _ in range(20)]
            assert sorted(order_b) == list(range(20))
            assert order_b == order_c  # the order Redis stored them in, on both hosts
            assert await on_b.get("n") == order_b[-1]  # and the last one is what is stored


async def test_forged_values_and_announcements_are_ignored_and_counted(
    redis_server: EmbeddedRedis,
) -> None:
    b = host(redis_server, store())
    with anyio.fail_after(30):
        async with hosts(b), coredis.Redis.from_url(redis_server.url) as raw:
            assert b.link is not None and b.link.registry is not None
            keys, config = b.link.keys, client_of(b).config()
            store_of_b = b.config_store
            assert isinstance(store_of_b, RedisConfig)
            await config.set("good", 1)
            # Values written by someone who reaches Redis without the key.
            await raw.hset(keys.config("store"), {"forged": b"\x00" * 32 + b"\x01"})
            await raw.hset(keys.config("store"), {"short": b"x"})
            good = await raw.hget(keys.config("store"), "good")
            assert good is not None
            await raw.hset(keys.config("store"), {"moved": good})  # a real tag, another key
            assert await config.get("forged") is None
            assert await config.get("moved") is None
            assert await config.items() == {"good": 1}
            assert store_of_b.ignored >= 5

            # Announcements: garbage, a bad tag, a host posing as a service it does not run.
            evil = "evil.1.cafe"
            await b.link.registry.declare(evil, ["api"])
            seqs = iter(range(1, 100))

            def announcement(writer: str, change: ConfigChange, key: bytes = KEY.encode()) -> bytes:
                return seal(
                    envelope_key(key),
                    cluster="shop",
                    channel=keys.config_changes,
                    sender=evil,
                    service=writer,
                    seq=next(seqs),
                    sent_ms=time.time_ns() // 1_000_000,
                    body=msgspec.msgpack.encode(change),
                )

            forged = ConfigChange("store", "good", 666)
            hostile = [
                b"garbage" * 10,
                announcement("store", forged, key=b"y" * 32),
                announcement("store", forged),  # evil does not run store
                announcement("api", forged),  # api may not announce store's changes
                announcement("api", ConfigChange("bad name", "k", 1)),
            ]
            async with config.watch() as changes:
                received = b.link.statistics.received
                for data in hostile:
                    await raw.publish(keys.config_changes, data)
                await config.set("after", True)
                assert await next_change(changes) == ConfigChange("store", "after", True)
            assert b.link.statistics.received >= received + len(hostile) + 1
            refused = b.link.statistics.refused
            assert refused == {"tag": 2, "identity": 2, "malformed": 1}, refused
            assert await config.get("good") == 1


async def test_a_store_that_cannot_be_reached_fails_clearly(redis_server: EmbeddedRedis) -> None:
    b = host(redis_server, store())
    with anyio.fail_after(30):
        async with (
            hosts(b),
            client_of(b).config().watch() as changes,
            anyio.create_task_group() as group,
        ):
            config = client_of(b).config()
            await config.set("k", 1)
            assert await next_change(changes) == ConfigChange("store", "k", 1)
            group.start_soon(functools.partial(redis_server.restart, down=3.0))
            failure: ServiceUnavailable | None = None
            while failure is None:  # until the server is down (it is killed first)
                try:
                    await config.get("k", deadline=5)
                except ServiceUnavailable as exc:
                    failure = exc
                await anyio.sleep(0.05)
            assert "configuration of 'store' cannot be reached" in str(failure)
            # Once this host's subscription is back, its watchers are told to read again.
            with anyio.fail_after(15):
                assert await changes.receive() == ConfigChange("store", "", resync=True)
        # Back (empty, as a restarted server without persistence is).
        async with hosts(b):
            assert await client_of(b).config().get("k") is None
