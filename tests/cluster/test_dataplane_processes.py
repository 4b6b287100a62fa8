"""The data plane between real child processes, routed by the manager."""

from __future__ import annotations

import os
import signal

import anyio
import pytest

import startable
from startable import State
from startable.cluster import (
    OUTBOX_CAPACITY,
    RemoteError,
    RequestRefused,
    RequestTimeout,
    ServicesManager,
    ServiceSpec,
    ServiceUnavailable,
)

from .. import specs
from ..waiting import until

#: Every test here spawns child processes (`-m "not processes"` skips them).
pytestmark = [pytest.mark.anyio, pytest.mark.processes]


def process(name: str, kind: str, *depends_on: str, **fields: object) -> ServiceSpec:
    return specs.process(name, f"tests.plane_services:{kind}", *depends_on, **fields)


def cluster(**api_options: object) -> ServicesManager:
    return ServicesManager(
        [process("store", "Store"), process("api", "Api", "store", **api_options)]
    )


async def test_requests_and_errors_travel_between_processes() -> None:
    manager = cluster()
    with anyio.fail_after(60):
        async with startable.running(manager):
            client = manager.client
            await client.request("store", "put", "k", {"v": [1, 2]})
            assert await client.request("api", "lookup", "k") == {"v": [1, 2]}
            assert await client.request("store", "pid") == manager["store"].pid
            with pytest.raises(RemoteError) as caught:
                await client.request("store", "fail")
            assert caught.value.info.type == "KeyError"
            assert "no store key" in caught.value.info.traceback
            assert "plane_services.py" in caught.value.info.traceback
            # From inside api: only its declared dependencies.
            with pytest.raises(RemoteError) as refused:
                await client.request("api", "call", "api", "lookup")
            assert refused.value.info.type == "startable.cluster.RequestRefused"
            assert "'api' may not call 'api'" in refused.value.info.message


async def test_the_control_port_never_sees_the_data_plane() -> None:
    manager = cluster()
    with anyio.fail_after(60):
        async with startable.running(manager):
            container = manager["store"].container
            assert container is not None and container.controller is not None
            port = container.controller._port
            assert port is not None
            before = port.statistics()
            for n in range(20):
                await manager.client.request("store", "put", str(n), n)
            await manager.client.emit("orders", "x")
            assert port.statistics() == before


async def test_a_caller_never_waits_past_its_deadline_whatever_the_callee_does() -> None:
    manager = cluster()
    with anyio.fail_after(60):
        async with startable.running(manager):
            client = manager.client
            # The callee's handler never returns.
            with pytest.raises(RequestTimeout):
                await client.request("store", "slow", deadline=0.3)
            # The callee's process is frozen.
            pid = manager["store"].pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.raises(RequestTimeout):
                    await client.request("store", "get", "k", deadline=0.3)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert await client.request("store", "get", "k", deadline=30) is None


async def test_a_service_that_stops_reading_holds_up_nobody_else() -> None:
    """`store` is frozen: what is sent to it waits in its outbox, then is
    refused or dropped; the sender and the other services carry on. (`other`
    subscribes to nothing: a subscriber of "orders" would rightly drop some of
    the flood too if its process fell behind on a loaded machine.)"""
    manager = ServicesManager([process("store", "Store"), process("other", "Api")])
    with anyio.fail_after(60):
        async with startable.running(manager):
            client, store = manager.client, manager["store"]
            pid = store.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                sent = 0
                while store.events_dropped == 0:  # its socket is full, then its outbox
                    await client.emit("orders", "x" * 4096)
                    sent += 1
                assert sent > OUTBOX_CAPACITY
                with pytest.raises(ServiceUnavailable, match="'store' is not keeping up"):
                    await client.request("store", "get", "k")
                assert await client.request("other", "pid") == manager["other"].pid
                assert manager["other"].events_dropped == 0
            finally:
                os.kill(pid, signal.SIGCONT)
            while store.backlog:  # noqa: ASYNC110 - it catches up in another process
                await anyio.sleep(0.01)
            assert await client.request("store", "get", "k") is None
            assert startable.of(store).state is State.STARTED


async def test_a_service_whose_data_socket_closes_fails_requests_at_once() -> None:
    manager = cluster()
    with anyio.fail_after(60):
        async with startable.running(manager):
            store = manager["store"]
            port = store.runner._port  # type: ignore[attr-defined]  # the manager end
            assert port is not None
            await startable.of(port).stop()
            # At once, whichever the request meets first: the link going, the link
            # gone, or the service (which saw its link end) already stopping. On a
            # loaded machine the service can be STOPPING before the first request.
            gone = r"'store' stopped before it answered|data socket is closed|not STARTED"
            for _ in range(2):
                with pytest.raises(ServiceUnavailable, match=gone):
                    await manager.client.request("store", "get", "k", deadline=50)
            # Then supervision brings it back.
            assert store.backlog == 0
            await until(
                manager, lambda: store.restarts == 1 and startable.of(store).state is State.STARTED
            )
            assert await manager.client.request("store", "get", "k") is None


async def test_a_callee_killed_mid_request_releases_the_caller_at_once() -> None:
    manager = cluster()
    with anyio.fail_after(60):
        async with startable.running(manager):
            pid = manager["store"].pid
            assert pid is not None
            failures: list[BaseException] = []

            async def call() -> None:
                try:
                    await manager.client.request("store", "slow", deadline=50)
                except ServiceUnavailable as exc:
                    failures.append(exc)

            async with (
                manager.client.subscribe("slow.entered") as entered,
                anyio.create_task_group() as group,
            ):
                group.start_soon(call)
                await entered.receive()  # the handler runs: the request is in flight
                os.kill(pid, signal.SIGKILL)
            assert len(failures) == 1
            assert "stopped before it answered" in str(failures[0])
            # It comes back (on-failure), and answers again.
            store = manager["store"]
            await until(
                manager,
                lambda: store.restarts == 1 and startable.of(store).state is State.STARTED,
            )
            assert await manager.client.request("store", "get", "k") is None


async def test_events_cross_processes_with_their_source() -> None:
    manager = cluster()
    with anyio.fail_after(60):
        async with startable.running(manager):
            await manager.client.request("api", "order", {"id": 7})
            await manager.client.emit("orders", "from the operator")
            seen = await manager.client.request("store", "seen")  # it waits for both
            assert seen == [["api", {"id": 7}], ["", "from the operator"]]


async def test_a_service_creates_a_child_only_if_its_spec_allows() -> None:
    manager = cluster(may_create_services=True)
    with anyio.fail_after(60):
        async with startable.running(manager):
            await manager.client.request("api", "spawn", "helper", deadline=30)
            child = manager["helper"]
            assert child.parent is manager["api"]
            assert startable.of(child).state is startable.State.STARTED
            assert child.spec.depends_on == ("api",)
            with pytest.raises(RemoteError, match="two services are named 'helper'"):
                await manager.client.request("api", "spawn", "helper", deadline=30)
            await manager.stop_service("api")
            assert startable.of(child).state is startable.State.STOPPED

    manager = cluster()
    with anyio.fail_after(60):
        async with startable.running(manager):
            with pytest.raises(RemoteError) as caught:
                await manager.client.request("api", "spawn", "helper", deadline=30)
            assert caught.value.info.type == "startable.cluster.RequestRefused"
            assert "may not create services" in caught.value.info.message
            assert "helper" not in manager.nodes


def test_refusals_are_request_errors() -> None:
    assert issubclass(RequestRefused, PermissionError)


async def test_too_large_is_said_at_once_both_ways() -> None:
    manager = cluster()
    with anyio.fail_after(60):
        async with startable.running(manager):
            with pytest.raises(ValueError, match="exceeds"):
                await manager.client.request("store", "put", "k", b"x" * 2**21)
            # From inside api: its argument to the store is too large for its port.
            with pytest.raises(RemoteError) as caught:
                await manager.client.request("api", "call_with", "store", "put", 2**21)
            assert caught.value.info.type == "ValueError"
            # A result too large comes back as an error, not as a timeout.
            await manager.client.request("store", "put", "big", 2**21)
            with pytest.raises(RemoteError, match="cannot be sent"):
                await manager.client.request("store", "large", "big", deadline=30)


async def test_a_child_reaches_no_further_than_its_parent() -> None:
    manager = ServicesManager(
        [
            process("store", "Store"),
            process("other", "Store"),
            process("api", "Api", "store", may_create_services=True),
        ]
    )
    with anyio.fail_after(60):
        async with startable.running(manager):
            with pytest.raises(RemoteError) as caught:
                await manager.client.request("api", "spawn", "kid", ["other"], deadline=30)
            assert caught.value.info.type == "startable.cluster.RequestRefused"
            assert "dependencies it does not have itself: other" in caught.value.info.message
            assert "kid" not in manager.nodes
