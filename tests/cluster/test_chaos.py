"""Chaos: SIGKILL a random service of the shop example 50 times while requests flow;
and a hundred random SIGKILLs of a pool's replicas and of the agent it depends on.

After every kill: the services that depend on the victim (directly or not)
stopped before it finished stopping, each with a reason naming the victim;
the victim came back, then its dependents, each after its own dependencies;
nothing else moved. No request outlived its deadline, no process was left
behind, and the system ends STARTED.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path

import anyio
import attrs
import psutil
import pytest

import startable
from startable import State
from startable.cluster import (
    ClusterError,
    DependencyStopped,
    RestartPolicy,
    ServiceEvent,
    ServiceNode,
    ServicesManager,
    ServiceSpec,
    load_cluster,
)

from ..waiting import until

#: Every test here spawns child processes (`-m "not processes"` skips them).
pytestmark = [pytest.mark.anyio, pytest.mark.processes]
SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop" / "shop.toml"
ROOT = Path(__file__).resolve().parents[2]
KILLS = 50
POOL_KILLS = 100
DEADLINE = 1.0


def shop() -> ServicesManager:
    """The example, with restarts that never give up and no deliberate crashes."""
    specs = []
    for spec in load_cluster(SHOP).services:
        specs.append(
            attrs.evolve(
                spec,
                env={**spec.env, "CRASH_ONE_IN": "0", "ORDERS_PER_SECOND": "20"},
                restart=RestartPolicy(intensity=10 * KILLS, backoff=0),
                container_options={"resources_interval": 0, "close_timeout": 5},
            )
        )
    return ServicesManager(specs, name="chaos")


def affected_by(victim: ServiceNode) -> set[ServiceNode]:
    found, pending = {victim}, [victim]
    while pending:
        for dependent in pending.pop().dependents:
            if dependent not in found:
                found.add(dependent)
                pending.append(dependent)
    return found


def check_round(victim: ServiceNode, moves: list[tuple[str, State, BaseException | None]]) -> None:
    affected = affected_by(victim)
    names = {node.name for node in affected}
    assert {name for name, _, _ in moves} == names, moves  # nothing else moved

    def index(name: str, state: State) -> int:
        return next(i for i, (n, s, _) in enumerate(moves) if n == name and s is state)

    for name, state, reason in moves:
        if state is State.STOPPING:
            if name == victim.name:
                assert not isinstance(reason, DependencyStopped), reason
            else:
                assert isinstance(reason, DependencyStopped), (name, reason)
                assert reason.origin == victim.name, (name, reason)
    for node in affected:
        for dependency in node.dependencies:
            if dependency in affected:  # stops before it, starts after it
                assert index(node.name, State.STOPPED) < index(dependency.name, State.STOPPED)
                assert index(dependency.name, State.STARTED) < index(node.name, State.STARTED)


async def test_fifty_kills_while_requests_flow() -> None:
    manager = shop()
    rng = random.Random(5)
    moves: list[tuple[str, State, BaseException | None]] = []

    def record(event: ServiceEvent) -> None:
        if event.kind == "moved" and event.change is not None:
            moves.append((event.service, event.change.current, event.change.reason))

    manager.subscribe(record)
    pids: set[int] = set()
    answered, failed, overdue = [0], [0], [0]

    async def traffic() -> None:
        """The operator's own requests, each bounded by its deadline."""
        for number in range(1_000_000):
            with anyio.move_on_after(DEADLINE + 10) as hung:
                try:
                    await manager.client.request(
                        "api", "write", f"k{number}", number, deadline=DEADLINE
                    )
                    await manager.client.request("api", "read", f"k{number}", deadline=DEADLINE)
                    answered[0] += 1
                except ClusterError:
                    failed[0] += 1
            if hung.cancelled_caught:
                overdue[0] += 1
            await anyio.sleep(0.01)

    def everything_started() -> bool:
        return all(startable.of(node).state is State.STARTED for node in manager.nodes.values())

    def recovered(
        victim: ServiceNode, restarts: int, affected: set[ServiceNode]
    ) -> Callable[[], bool]:
        def check() -> bool:
            came_back = {name for name, state, _ in moves if state is State.STARTED}
            return (
                victim.restarts == restarts + 1
                and everything_started()
                and all(node.name in came_back for node in affected)
            )

        return check

    with anyio.fail_after(600):  # a bound against hangs only: 50 rounds take ~1 minute
        async with startable.running(manager), anyio.create_task_group() as group:
            group.start_soon(traffic)
            for _ in range(KILLS):
                await until(manager, everything_started)
                pids.update(node.pid for node in manager.nodes.values() if node.pid)
                victim = manager[rng.choice(sorted(manager.nodes))]
                affected = affected_by(victim)
                restarts = victim.restarts
                moves.clear()
                pid = victim.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                await until(manager, recovered(victim, restarts, affected))
                check_round(victim, list(moves))
                assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
            assert everything_started()
            pids.update(node.pid for node in manager.nodes.values() if node.pid)
            group.cancel_scope.cancel()
    assert overdue == [0]
    assert answered[0] > 0
    for pid in pids:  # no orphans: every process of every incarnation is gone
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", pid


async def test_a_hundred_kills_of_replicas_and_their_agent_while_requests_flow() -> None:
    """A pool of three behind an agent; replicas and the agent are SIGKILLed at random."""
    never_give_up = RestartPolicy(intensity=10 * POOL_KILLS, backoff=0)
    agent = ServiceSpec(
        name="agent",
        entry="tests.plane_services:Store",
        cwd=str(ROOT),
        restart=never_give_up,
        container_options={"resources_interval": 0},
    )
    web = ServiceSpec(
        name="web",
        entry="tests.plane_services:Replica",
        cwd=str(ROOT),
        depends_on=["agent"],
        replicas=3,
        listen=["127.0.0.1:0"],
        restart=never_give_up,
        container_options={"resources_interval": 0},
    )
    manager = ServicesManager([agent, web], name="pool-chaos")
    rng = random.Random(11)
    pids: set[int] = set()
    answered, failed, overdue, twice = [0], [0], [0], [0]

    async def traffic() -> None:
        while True:
            with anyio.move_on_after(DEADLINE + 10) as hung:
                try:
                    await manager.client.request("web", "whoami", deadline=DEADLINE)
                    answers = await manager.client.request_all("web", "role", deadline=DEADLINE)
                    if sum(answer.value is True for answer in answers) > 1:
                        twice[0] += 1  # two holders of the singleton role at once
                    answered[0] += 1
                except ClusterError:
                    failed[0] += 1
            if hung.cancelled_caught:
                overdue[0] += 1
            await anyio.sleep(0.005)

    def live() -> list[int]:
        found = [manager["agent"].pid, *(c.pid for c in manager["web"].containers)]
        return [pid for pid in found if pid is not None]

    def everything_started() -> bool:
        replicas = manager["web"].replicas
        return all(
            startable.of(node).state is State.STARTED for node in manager.nodes.values()
        ) and all(startable.of(replica).state is State.STARTED for replica in replicas)

    with anyio.fail_after(600):  # a bound against hangs only
        async with startable.running(manager), anyio.create_task_group() as group:
            group.start_soon(traffic)
            for _ in range(POOL_KILLS):
                while not (running := live()):  # noqa: ASYNC110 - processes of their own
                    await anyio.sleep(0.01)
                pids.update(running)
                with contextlib.suppress(ProcessLookupError):  # (it may have just ended)
                    os.kill(rng.choice(running), signal.SIGKILL)
                await anyio.sleep(rng.uniform(0.0, 0.15))
            await until(manager, everything_started)
            pids.update(live())
            group.cancel_scope.cancel()
            pid, _, size = await manager.client.request("web", "whoami")
            assert size == 3 and pid in live()
    assert overdue == [0] and twice == [0]
    assert answered[0] > 0
    for pid in pids:  # no orphans
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", pid
