"""The registry in a real Redis: register, beat, expire, sweep, leave; forged entries ignored."""

from __future__ import annotations

import anyio
import coredis
import pytest

from startable.cluster._redis.registry import Registry

pytestmark = [pytest.mark.anyio, pytest.mark.processes]

KEY = b"k" * 32


async def test_registered_instances_are_live_until_they_leave(redis: coredis.Redis[bytes]) -> None:
    registry = Registry(redis, "shop", KEY)
    with anyio.fail_after(10):
        await registry.register("host-a.1", "kv", host="host-a", pid=100, load=2)
        await registry.register("host-b.1", "kv", host="host-b", pid=200)
        live = await registry.live("kv")
        assert [(i.id, i.host, i.pid, i.load) for i in live] == [
            ("host-a.1", "host-a", 100, 2),
            ("host-b.1", "host-b", 200, 0),
        ]
        assert await registry.beat("host-a.1", "kv", load=5)
        assert {i.id: i.load for i in await registry.live("kv")}["host-a.1"] == 5
        await registry.leave("host-a.1", "kv")
        assert [i.id for i in await registry.live("kv")] == ["host-b.1"]
        assert not await registry.beat("host-a.1", "kv")  # gone: it must register again
        assert await registry.services() == ["kv"]


async def test_an_instance_that_stops_beating_expires_and_is_swept(
    redis: coredis.Redis[bytes],
) -> None:
    registry = Registry(redis, "shop", KEY, ttl=0.2)
    with anyio.fail_after(10):
        await registry.register("host-a.1", "kv", host="host-a", pid=100)
        await registry.register("host-b.1", "kv", host="host-b", pid=200)
        for _ in range(5):  # b beats, a does not
            await anyio.sleep(0.06)
            assert await registry.beat("host-b.1", "kv")
        assert [i.id for i in await registry.live("kv")] == ["host-b.1"]  # a expired
        assert await registry.sweep("kv") == 1
        assert not await redis.exists(["startable:{shop}:inst:host-a.1"])
        assert not await registry.beat("host-a.1", "kv")  # swept: told to register again


async def test_entries_without_the_keys_tag_or_with_bad_fields_are_ignored(
    redis: coredis.Redis[bytes],
) -> None:
    registry = Registry(redis, "shop", KEY)
    with anyio.fail_after(10):
        await registry.register("host-a.1", "kv", host="host-a", pid=100)
        far = 2**62
        forged = {
            "forged.1": {"service": "kv", "host": "x", "pid": "1", "load": "0", "started": "1",
                         "tag": "00" * 32},
            "nan.1": {"service": "kv", "host": "x", "pid": "nan", "load": "0", "started": "1"},
            "huge.1": {"service": "kv", "host": "x", "pid": "1", "load": str(2**70),
                       "started": "1"},
            "other.1": {"service": "billing", "host": "x", "pid": "1", "load": "0",
                        "started": "1"},
        }  # fmt: skip
        for instance, fields in forged.items():
            await redis.zadd("startable:{shop}:svc:kv", {instance: far})
            await redis.hset(f"startable:{{shop}}:inst:{instance}", fields)
        await redis.zadd("startable:{shop}:svc:kv", {"no hash.1": far, "-bad": far})
        # a tag copied from a real entry does not fit another instance
        real = await redis.hgetall("startable:{shop}:inst:host-a.1")
        await redis.zadd("startable:{shop}:svc:kv", {"copy.1": far})
        await redis.hset("startable:{shop}:inst:copy.1", real)
        live = await registry.live("kv")
        assert [i.id for i in live] == ["host-a.1"]
        assert registry.ignored == 7
        other = Registry(redis, "shop", b"o" * 32)  # a host with another key trusts none
        assert await other.live("kv") == []


async def test_bad_registrations_are_refused_naming_the_field(
    redis: coredis.Redis[bytes],
) -> None:
    registry = Registry(redis, "shop", KEY)
    good: dict[str, object] = {"host": "h", "pid": 1, "load": 0}
    cases: list[tuple[str, str, dict[str, object], str]] = [
        ("bad id", "kv", {}, "an instance id"),
        ("h.1", "Bad", {}, "a service's name"),
        ("h.1", "kv", {"pid": -1}, "a pid"),
        ("h.1", "kv", {"pid": True}, "a pid"),
        ("h.1", "kv", {"load": -1}, "a load"),
        ("h.1", "kv", {"host": ""}, "a host"),
    ]
    for instance, service, fields, says in cases:
        with pytest.raises(ValueError, match=says):
            await registry.register(instance, service, **{**good, **fields})  # type: ignore[arg-type]
    assert await registry.services() == []  # nothing was written
    with pytest.raises(ValueError, match="ttl"):
        Registry(redis, "shop", KEY, ttl=0)
