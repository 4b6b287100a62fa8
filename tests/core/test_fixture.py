"""The start_service fixture: services that live for the length of a test."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

import startable
from startable import State

from ..probes import Probe

pytestmark = pytest.mark.anyio


async def test_a_service_runs_for_the_test(
    start_service: Callable[[Any], Awaitable[Any]],
) -> None:
    log: list[tuple[Any, ...]] = []
    database = await start_service(Probe("database", log))
    cache = await start_service(Probe("cache", log))
    assert startable.of(database).state is State.STARTED
    with anyio.fail_after(5):
        assert await cache.ping() == "pong"


OUTSIDE = """
import anyio
import pytest

import startable

pytestmark = pytest.mark.anyio
STOPPED = []


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request):
    return request.param


class Service:
    def __init__(self, name, fail_stop=False):
        self.name = name
        self.fail_stop = fail_stop

    @startable.as_raw_start
    async def _start(self):
        pass

    @startable.as_raw_stop
    async def _stop(self):
        STOPPED.append(self.name)
        if self.fail_stop:
            raise KeyError(f"{self.name} cannot stop")

    @startable.assert_state()
    async def ping(self):
        return "pong"


async def test_first(start_service):
    await start_service(Service("a"))
    await start_service(Service("b"))


def test_they_were_stopped_last_first():
    assert STOPPED == ["b", "a", "b", "a"]


async def test_a_crash_fails_the_test(start_service):
    service = await start_service(Service("crashing"))
    startable.of(service).stop_nowait(ConnectionResetError("the peer went away"))


async def test_a_stop_without_reason_fails_it_too(start_service):
    service = await start_service(Service("quitter"))
    await startable.of(service).stop()


async def test_a_failing_stop_fails_the_test(start_service):
    await start_service(Service("stubborn", fail_stop=True))
"""


@pytest.mark.processes
def test_the_fixture_stops_services_and_reports_their_failures(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_outside=OUTSIDE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0")
    # Each failure is an error at teardown, on both backends.
    result.assert_outcomes(passed=9, errors=6)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_a_crash_fails_the_test*",
            "*ConnectionResetError: the peer went away*",
        ]
    )
    output = result.stdout.str()
    assert "StoppedError" in output and "stopped on its own during the test" in output
    assert "KeyError: 'stubborn cannot stop'" in output
