"""A supervised subscription against a real server that is killed and started again."""

from __future__ import annotations

import anyio
import coredis
import pytest

import startable
from startable import State
from startable.cluster import EmbeddedRedis
from startable.cluster._redis.subscription import Subscription

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.processes,
]


async def delivered(client: coredis.Redis[bytes], channel: str, data: bytes) -> None:
    """Publish `data` until a subscriber gets it (Redis may be coming back)."""
    while True:
        try:
            if await client.publish(channel, data):
                return
        except (coredis.exceptions.ConnectionError, OSError, TimeoutError):
            pass
        await anyio.sleep(0.02)


async def test_it_comes_back_by_itself_after_redis_restarts(
    redis_server: EmbeddedRedis, redis: coredis.Redis[bytes]
) -> None:
    got: list[tuple[str, bytes]] = []

    def take(channel: str, data: bytes) -> None:
        got.append((channel, data))

    async def taken(data: bytes) -> None:
        """Publish `data` until it is taken. (A message that reached a subscription
        that then resubscribed is lost with it: on a loaded machine a probe may come
        back late, and the subscription resubscribes, as it must when it is deaf.)"""
        while data not in [d for _, d in got]:
            await delivered(redis, "calls", data)
            await anyio.sleep(0.05)

    subscription = Subscription(redis, ["calls"], take, probe_interval=0.1, probe_timeout=0.3)
    with anyio.fail_after(30):
        async with startable.running(subscription):
            await taken(b"before")
            await redis_server.restart(down=0.3)  # killed, then back on the same port
            await taken(b"after")
            assert subscription.subscribed.is_set()
    datas = [data for _, data in got]
    assert set(datas) == {b"before", b"after"}  # no probe among them
    assert datas.index(b"before") < datas.index(b"after")
    assert subscription.statistics.resubscribed >= 1
    assert subscription.statistics.last_loss is not None


async def test_what_on_message_raises_stops_it_with_that_error(
    redis: coredis.Redis[bytes],
) -> None:
    def refuse(channel: str, data: bytes) -> None:
        raise LookupError(f"no handler for {data!r}")

    subscription = Subscription(redis, ["calls"], refuse)
    with anyio.fail_after(10):
        async with startable.open_owner():
            await startable.of(subscription).start()
            await delivered(redis, "calls", b"x")
            await startable.of(subscription).wait_state(State.STOPPED)
    reason = startable.of(subscription).statistics().stop_reason
    assert "no handler for b'x'" in repr(reason)


async def test_it_cannot_start_without_redis() -> None:
    server = EmbeddedRedis()
    async with startable.running(server):
        url = server.url
    async with coredis.Redis.from_url(url) as client:
        subscription = Subscription(client, ["calls"], print, subscribe_timeout=0.5)
        with anyio.fail_after(10), pytest.raises(Exception, match="could not subscribe"):
            async with startable.running(subscription):
                pass


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="one channel at least"):
        Subscription(None, [], print)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probe_interval"):
        Subscription(None, ["c"], print, probe_interval=float("nan"))  # type: ignore[arg-type]
