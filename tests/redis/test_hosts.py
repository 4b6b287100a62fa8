"""Hosts of one cluster, over a real Redis: managers with links, in this process.

(tests/redis/test_hosts_processes.py runs hosts as separate processes.)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest

import startable
from startable import State, of
from startable.cluster import (
    DependencyStopped,
    EmbeddedRedis,
    ServicesManager,
    ServiceSpec,
    ServiceUnavailable,
)

from .. import plane_services

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.processes,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning"),
]
KEY = "a test cluster key, long enough!!"


def host(redis: EmbeddedRedis, *specs: ServiceSpec, name: str = "shop") -> ServicesManager:
    return ServicesManager(specs, name=name, redis=redis.url, cluster_key=KEY, registry_ttl=0.6)


def store() -> ServiceSpec:
    return ServiceSpec(name="store", factory=plane_services.Store)


def api() -> ServiceSpec:
    return ServiceSpec(name="api", factory=plane_services.Api, depends_on=["store"])


REMOTE_STORE = ServiceSpec(name="store", remote=True, limit=10)


@contextlib.asynccontextmanager
async def hosts(*managers: ServicesManager) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for manager in managers:
            await stack.enter_async_context(startable.running(manager))
        yield


async def test_a_call_crosses_hosts_both_ways(redis_server: EmbeddedRedis) -> None:
    b = host(redis_server, store())
    a = host(redis_server, REMOTE_STORE, api())
    with anyio.fail_after(20):
        async with hosts(b, a):
            await a.client.request("store", "put", "k", [1, "two"])
            assert await a.client.request("api", "lookup", "k") == [1, "two"]
            assert await b.client.request("store", "get", "k") == [1, "two"]
            assert a.link is not None and b.link is not None
            assert b.link.statistics.refused == {}
            assert of(a["store"]).state is State.STARTED


async def test_a_remote_service_waits_cascades_and_comes_back(redis_server: EmbeddedRedis) -> None:
    a = host(redis_server, REMOTE_STORE, api())
    b = host(redis_server, store())
    stops: list[BaseException | None] = []
    a.subscribe(
        lambda e: (
            e.change is not None
            and e.service == "api"
            and e.change.current is State.STOPPING
            and stops.append(e.change.reason)
        )
    )
    with anyio.fail_after(40):
        async with anyio.create_task_group() as group:
            group.start_soon(of(b).start)  # a's start waits until the store is live
            async with startable.running(a):
                assert of(a["api"]).state is State.STARTED
                await of(b).stop()  # the last store leaves: api is cascaded
                await of(a["api"]).wait_state(State.STOPPED)
                assert of(a["store"]).state is not State.STARTED
                with pytest.raises(ServiceUnavailable, match="store"):
                    await a.client.request("store", "get", "k")
                await of(b).start()  # it comes back, and so does api
                await of(a["api"]).wait_state(State.STARTED)
                assert await a.client.request("api", "lookup", "nothing") is None
                await of(b).stop()
    reason = stops[0]
    assert isinstance(reason, DependencyStopped) and reason.origin == "store"
    assert isinstance(reason.reason, ServiceUnavailable)
    assert "no live instance is left" in str(reason.reason)
