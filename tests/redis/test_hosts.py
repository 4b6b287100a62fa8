"""Hosts of one cluster, over a real Redis: managers with links, in this process.

(tests/redis/test_hosts_processes.py runs hosts as separate processes.)
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc
import coredis
import msgspec
import pytest
import trustme
from anyio.streams.tls import TLSStream

import startable
from startable import State, of
from startable.cluster import (
    MAX_REPLICAS,
    ClusterError,
    DependencyStopped,
    EmbeddedRedis,
    RemoteError,
    RequestTimeout,
    ServicesManager,
    ServiceSpec,
    ServiceUnavailable,
    handler,
)
from startable.cluster._data.contract import Call
from startable.cluster._redis.envelope import envelope_key, seal
from startable.cluster._redis.link import FIRST_REMOTE

from .. import plane_services

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.processes,
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


async def test_events_cross_hosts_with_their_source(redis_server: EmbeddedRedis) -> None:
    b = host(redis_server, store())
    a = host(redis_server, REMOTE_STORE, api())
    with anyio.fail_after(20):
        async with hosts(b, a):
            await a.client.request("api", "order", {"n": 1})
            await a.client.request("api", "order", {"n": 2})
            seen = await b.client.request("store", "seen")
            assert seen == [["api", {"n": 1}], ["api", {"n": 2}]]


class Tagged:
    """A store that says which host it is on, and holds a call for a while."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.held = 0

    @startable.as_raw_start
    async def _start(self) -> None:
        pass

    @handler(idempotent=True)
    async def hold(self, seconds: float) -> str:
        self.held += 1
        await anyio.sleep(seconds)
        return self.tag

    @handler
    async def once(self, seconds: float) -> str:
        self.held += 1
        await anyio.sleep(seconds)
        return self.tag


@contextlib.asynccontextmanager
async def three_stores(redis_server: EmbeddedRedis) -> AsyncIterator[ServicesManager]:
    """Stores tagged b, c and d on three hosts, and a host that sees all three."""
    stores = [
        host(redis_server, ServiceSpec(name="store", factory=lambda t=tag: Tagged(t)))
        for tag in "bcd"
    ]
    a = host(redis_server, REMOTE_STORE)
    async with hosts(*stores, a):
        assert a.link is not None
        while len(a.link.instances("store")) < 3:  # (the other two come on a beat)
            await a.link.refresh("store")
            await anyio.sleep(0.05)
        yield a


async def test_the_least_loaded_instance_is_picked_across_three_hosts(
    redis_server: EmbeddedRedis,
) -> None:
    with anyio.fail_after(20):
        async with three_stores(redis_server) as a:
            answers: list[str] = []

            async def call() -> None:
                answers.append(await a.client.request("store", "hold", 0.5))

            async with anyio.create_task_group() as group:
                for _ in range(30):
                    group.start_soon(call)
    # Each call went to the one with the fewest waiting: 10 each, none herded.
    assert sorted(answers) == ["b"] * 10 + ["c"] * 10 + ["d"] * 10


async def test_a_request_to_all_reaches_one_instance_on_each_host(
    redis_server: EmbeddedRedis,
) -> None:
    with anyio.fail_after(20):
        async with three_stores(redis_server) as a:
            answers = await a.client.request_all("store", "hold", 0)
    assert sorted(answer.value for answer in answers) == ["b", "c", "d"]
    # Numbered past any replica of a pool here, by the order they were seen.
    assert [answer.replica for answer in answers] == [FIRST_REMOTE + n for n in range(3)]
    assert FIRST_REMOTE == MAX_REPLICAS


async def test_forged_replayed_impersonating_and_garbage_envelopes_are_dropped_and_counted(
    redis_server: EmbeddedRedis,
) -> None:
    b = host(redis_server, store())
    with anyio.fail_after(20):
        async with hosts(b), coredis.Redis.from_url(redis_server.url) as raw:
            assert b.link is not None and b.link.registry is not None
            inbox = b.link.inbox
            keys = b.link.keys
            evil = "evil.1.cafe"
            # A key holder that declared it runs "api" (and only that).
            await b.link.registry.declare(evil, ["api"])
            answers: list[bytes] = []
            ready = anyio.Event()

            async def listen() -> None:
                async with raw.pubsub(channels=[keys.inbox(evil)]) as pubsub:
                    ready.set()
                    async for message in pubsub:
                        if message["type"] == "message":
                            answers.append(message["data"])

            def envelope(call: Call, *, service: str = "api", key: bytes = KEY.encode()) -> bytes:
                return seal(
                    envelope_key(key),
                    cluster="shop",
                    channel=inbox,
                    sender=evil,
                    service=service,
                    seq=next(seqs),
                    sent_ms=time.time_ns() // 1_000_000,
                    body=msgspec.msgpack.encode(call),
                )

            seqs = iter(range(1, 100))
            async with anyio.create_task_group() as group:
                group.start_soon(listen)
                await ready.wait()
                good = envelope(Call(7, "store", "get", ("k",), caller="api"))
                hostile = [
                    b"",
                    b"garbage" * 10,
                    b"\xff" * 40,
                    envelope(Call(8, "store", "get", ("k",), caller="api"), key=b"x" * 32),
                    envelope(Call(9, "store", "get", ("k",), caller="admin"), service="admin"),
                    envelope(Call(10, "store", "get", ("k",), caller="admin")),
                    good,
                    good,  # the replay
                ]
                for data in hostile:
                    await raw.publish(inbox, data)
                while b.link.statistics.received < len(hostile):  # noqa: ASYNC110 - a count
                    await anyio.sleep(0.01)
                while not answers:  # noqa: ASYNC110 - from another client
                    await anyio.sleep(0.01)
                await anyio.sleep(0.2)  # (the time any wrong answer would take to come)
                group.cancel_scope.cancel()
            refused = b.link.statistics.refused
            assert refused == {"size": 1, "tag": 3, "identity": 2, "replay": 1}, refused
            # The one good call was answered, once; the host serves on.
            assert len(answers) == 1
            assert await b.client.request("store", "get", "k") is None


async def test_a_redis_restart_fails_calls_in_flight_and_everything_comes_back(
    redis_server: EmbeddedRedis,
) -> None:
    b = host(redis_server, store())
    a = host(redis_server, REMOTE_STORE, api())
    with anyio.fail_after(30):
        async with hosts(b, a):
            assert a.link is not None and b.link is not None
            await a.client.request("store", "put", "k", 1)
            failed: list[Exception] = []

            async def in_flight() -> None:
                try:
                    await a.client.request("store", "slow", deadline=20)
                except Exception as exc:
                    failed.append(exc)

            async with anyio.create_task_group() as group:
                group.start_soon(in_flight)
                while not a.link._calls:  # noqa: ASYNC110 - until the call is sent
                    await anyio.sleep(0.01)
                await redis_server.restart()
            # The call in flight failed with a clear error, long before its deadline.
            assert len(failed) == 1 and isinstance(failed[0], ServiceUnavailable)
            # (whichever this host noticed first: its subscription, or the registry)
            assert "Redis link was lost" in str(failed[0]) or "left the registry" in str(failed[0])
            # Subscriptions and registrations are back by themselves (an empty server).
            while True:
                try:
                    assert await a.client.request("api", "lookup", "k", deadline=0.5) == 1
                    break
                except (ServiceUnavailable, RequestTimeout, RemoteError):
                    await anyio.sleep(0.05)
    # (How soon it is back is measured by bench/failover.py, not asserted here.)


@pytest.mark.parametrize("method", ["hold", "once"])
async def test_a_retry_goes_to_another_host_only_for_an_idempotent_handler(
    redis_server: EmbeddedRedis, method: str
) -> None:
    made: dict[str, Tagged] = {}

    def tagged(tag: str) -> Tagged:
        made[tag] = Tagged(tag)
        return made[tag]

    b, c = (
        host(redis_server, ServiceSpec(name="store", factory=lambda t=tag: tagged(t)))
        for tag in "bc"
    )
    a = host(redis_server, REMOTE_STORE)
    hosts_by_tag = {"b": b, "c": c}
    try:
        with anyio.fail_after(30):
            await of(b).start()
            await of(c).start()
            async with hosts(a):
                assert a.link is not None
                while len(a.link.instances("store")) < 2:
                    await a.link.refresh("store")
                    await anyio.sleep(0.05)
                outcome: list[object] = []

                async def ask() -> None:
                    try:
                        outcome.append(await a.client.request("store", method, 2.0, retries=2))
                    except ServiceUnavailable as exc:
                        outcome.append(exc)

                async with anyio.create_task_group() as group:
                    group.start_soon(ask)
                    while not any(t.held for t in made.values()):  # noqa: ASYNC110 - a handler
                        await anyio.sleep(0.01)
                    running = next(tag for tag, t in made.items() if t.held)
                    await of(hosts_by_tag[running]).stop()  # the host goes under the call
    finally:
        with anyio.CancelScope(shield=True):
            for manager in (b, c):
                await of(manager).stop()
    other = "c" if running == "b" else "b"
    if method == "hold":  # idempotent: run again on the other host
        assert outcome == [other] and made[other].held == 1
    else:  # not: the first failure, with why it was not sent again
        (error,) = outcome
        assert isinstance(error, ServiceUnavailable) and made[other].held == 0
        assert any("not idempotent" in note for note in error.__notes__)


@contextlib.asynccontextmanager
async def tls_in_front_of(server: EmbeddedRedis, context: ssl.SSLContext) -> AsyncIterator[int]:
    """A TLS listener on a free port that forwards each connection to `server`
    (the bundled valkey-server is built without TLS): its port. A connection
    that fails (a client that does not trust it) ends alone."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")

    async def pipe(source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream) -> None:
        async for chunk in source:
            await sink.send(chunk)

    async def forward(tcp: anyio.abc.SocketStream) -> None:
        with contextlib.suppress(Exception):
            async with (
                await TLSStream.wrap(tcp, server_side=True, ssl_context=context) as client,
                await anyio.connect_tcp("127.0.0.1", server.port) as upstream,
                anyio.create_task_group() as group,
            ):
                group.start_soon(pipe, client, upstream)
                await pipe(upstream, client)
                group.cancel_scope.cancel()
        await tcp.aclose()

    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, forward)
        address = listener.extra(anyio.abc.SocketAttribute.local_address)
        yield int(address[1])
        group.cancel_scope.cancel()


async def test_hosts_reach_a_redis_behind_tls_with_a_password(tmp_path: Path) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(context)
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = EmbeddedRedis(password=EmbeddedRedis.new_password())
    with anyio.fail_after(30):
        async with startable.running(server), tls_in_front_of(server, context) as port:
            url = f"rediss://:{server.password}@127.0.0.1:{port}/0?ssl_ca_certs={tmp_path}/ca.pem"
            b = ServicesManager([store()], name="shop", redis=url, cluster_key=KEY)
            a = ServicesManager([REMOTE_STORE, api()], name="shop", redis=url, cluster_key=KEY)
            async with hosts(b, a):
                await a.client.request("store", "put", "k", "over TLS")
                assert await a.client.request("api", "lookup", "k") == "over TLS"
            # Without the password, or without trusting the certificate, no host starts.
            for bad in (url.replace(server.password or "", "wrong"), url.split("?")[0]):
                with pytest.raises(ClusterError, match="cannot reach Redis"):
                    async with startable.running(
                        ServicesManager([store()], name="shop", redis=bad, cluster_key=KEY)
                    ):
                        pass
