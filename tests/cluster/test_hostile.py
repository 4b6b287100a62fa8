"""A hostile service, in a child process of its own, against the data plane.

Whatever it sends, the manager stays STARTED, the other services go on
answering, and it gets an answer that names the problem when its message has
an id to answer.
"""

from __future__ import annotations

import math

import anyio
import pytest

import startable
from startable import State
from startable.cluster import (
    MAX_TOPICS,
    ClusterError,
    ServiceClient,
    ServicesManager,
    port_pair,
)
from startable.cluster._data.contract import AnyMessage
from startable.cluster._data.link import PortLink

from ..specs import process
from ..waiting import until

#: Every test here spawns child processes (`-m "not processes"` skips them).
pytestmark = [pytest.mark.anyio, pytest.mark.processes]


def cluster() -> ServicesManager:
    return ServicesManager(
        [
            process("store", "tests.plane_services:Store"),
            process("evil", "tests.hostile_services:Hostile", "store"),
            process("maker", "tests.hostile_services:Hostile", "store", may_create_services=True),
        ]
    )


async def still_fine(manager: ServicesManager) -> None:
    """The manager and the store carry on as if nothing had happened."""
    assert startable.of(manager).state is State.STARTED
    await manager.client.request("store", "put", "k", "v")
    assert await manager.client.request("store", "get", "k") == "v"
    assert all(startable.of(node).state is State.STARTED for node in manager.nodes.values())


BAD_NUMBERS = [math.nan, math.inf, -math.inf, -1.0, 0.0, 1e300]


async def test_a_create_from_a_service_without_the_permission_is_refused_first() -> None:
    manager = cluster()
    with anyio.fail_after(60):
        async with startable.running(manager):
            for timeout in BAD_NUMBERS:
                said = await manager.client.request("evil", "create", {"timeout": timeout})
                assert said.startswith("RequestRefused: service 'evil' may not create services")
            await still_fine(manager)
            assert "spawned" not in manager.nodes


async def test_a_create_with_a_deadline_that_bounds_nothing_is_answered_as_malformed() -> None:
    manager = cluster()
    with anyio.fail_after(60):
        async with startable.running(manager):
            for timeout in BAD_NUMBERS:
                said = await manager.client.request("maker", "create", {"timeout": timeout})
                assert said.startswith("MalformedRequest: refused by services:")
                assert "a creation's deadline must be more than 0" in said
            for fields, problem in [
                ({"name": "Bad Name"}, "is not a service name"),
                ({"depends_on": ["../x"]}, "'../x' is not a service name"),
                ({"env": {"A=B": "x"}}, "'A=B' is not an environment variable name"),
                ({"env": {"A": "x\0y"}}, "holds a NUL character"),
                ({"id": 0}, None),  # no id to answer: dropped, the caller times out
            ]:
                said = await manager.client.request("maker", "create", fields)
                if problem is None:
                    assert said.startswith("RequestTimeout")
                else:
                    assert said.startswith("MalformedRequest") and problem in said
            await still_fine(manager)
            assert manager.router.malformed["maker"] == len(BAD_NUMBERS) + 5


async def test_a_call_with_a_bad_deadline_leaves_the_callee_answering() -> None:
    manager = cluster()
    with anyio.fail_after(60):
        async with startable.running(manager):
            for timeout in BAD_NUMBERS:
                fields = {"method": "get", "args": ["k"], "timeout": timeout}
                said = await manager.client.request("evil", "call", fields)
                assert said.startswith("MalformedRequest")
                assert "a request's deadline must be more than 0" in said
            for fields, problem in [
                ({"method": "", "timeout": 1.0}, "a handler's name must have 1 to 255"),
                ({"method": "x" * 300, "timeout": 1.0}, "a handler's name must have 1 to 255"),
            ]:
                said = await manager.client.request("evil", "call", fields)
                assert said.startswith("MalformedRequest") and problem in said
            assert await manager.client.request("evil", "unanswerable") == "sent"
            assert await manager.client.request("evil", "garbage") == "sent"
            await still_fine(manager)
            assert manager["store"].restarts == 0


async def test_subscriptions_of_one_service_are_bounded() -> None:
    manager = cluster()
    with anyio.fail_after(120):
        async with startable.running(manager):
            said = await manager.client.request("evil", "subscribe", MAX_TOPICS + 2, deadline=100)
            refused = f"RequestRefused: a service may subscribe to {MAX_TOPICS} topics at most"
            assert said == ["ok", refused, refused]
            assert len(manager.router.topics_of("evil")) == MAX_TOPICS
            await still_fine(manager)


async def test_a_service_whose_data_link_breaks_stops_and_is_restarted() -> None:
    manager = cluster()
    with anyio.fail_after(60):
        async with startable.running(manager):
            evil = manager["evil"]
            first = evil.pid
            assert await manager.client.request("evil", "cut_link") == "cutting"
            await until(
                manager, lambda: evil.restarts == 1 and startable.of(evil).state is State.STARTED
            )
            assert evil.pid != first
            assert isinstance(evil.last_error, ClusterError)
            assert "evil lost its link to the cluster" in str(evil.last_error)
            await still_fine(manager)


async def test_a_client_stops_when_its_link_ends() -> None:
    ours, theirs = port_pair(AnyMessage)
    client = ServiceClient("svc", PortLink(ours))
    with anyio.fail_after(10):
        async with startable.open_owner():
            await startable.of(theirs).start()
            await startable.of(client).start()
            await startable.of(theirs).stop()  # the router's side goes away
            await startable.of(client).wait_state(State.STOPPED)
    reason = startable.of(client).statistics().stop_reason
    assert isinstance(reason, ClusterError)
    assert str(reason) == "svc lost its link to the cluster"
