"""Pools: a service run as N replicas, each a process of its own (real processes)."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
from pathlib import Path

import anyio
import psutil
import pytest

import startable
from startable import State
from startable.cluster import (
    ClusterError,
    EscalationError,
    Permissions,
    RemoteError,
    RequestTimeout,
    RestartPolicy,
    ServiceClient,
    ServiceDefinitionError,
    ServiceNode,
    ServicesManager,
    ServiceSpec,
    ServiceUnavailable,
    landlock_abi,
    this_service,
)

from .. import specs

#: Every test here spawns child processes (`-m "not processes"` skips them).
pytestmark = [pytest.mark.anyio, pytest.mark.processes]

QUICK = RestartPolicy(mode="always", backoff=0.05, max_backoff=0.05, intensity=50)


class Front:
    """In the manager's process, depends on the pool and asks it who it is."""

    @startable.as_raw_start
    async def _start(self) -> None:
        pass

    async def ask(self) -> list[int]:
        result: list[int] = await this_service().request("web", "whoami")
        return result


def pool(replicas: int = 3, **fields: object) -> ServiceSpec:
    fields.setdefault("restart", QUICK)
    return specs.process(
        "web", "tests.plane_services:Replica", replicas=replicas, listen=["127.0.0.1:0"], **fields
    )


async def replaced(node: ServiceNode, index: int, victim: int | None) -> None:
    """Until replica `index`, whose process `victim` was killed, runs a new one."""
    replica = node.runner.replicas[index]  # type: ignore[attr-defined]
    lifecycle = startable.of(replica)
    if replica.pid == victim:  # not noticed yet
        await lifecycle.wait_state(State.STOPPING, State.STOPPED)
    await lifecycle.wait_state(State.STARTED)


async def greeting(address: tuple[str, int]) -> int:
    async with await anyio.connect_tcp(*address) as client:
        return int((await client.receive()).decode())


async def test_a_pool_starts_every_replica_and_spreads_requests() -> None:
    manager = ServicesManager([pool(3)])
    with anyio.fail_after(60):
        async with startable.running(manager):
            node = manager["web"]
            assert startable.of(node).state is State.STARTED
            containers = node.containers
            assert containers == node.service and len(containers) == 3
            pids = {container.pid for container in containers}
            assert len(pids) == 3 and None not in pids
            answers: list[list[int]] = []

            async def ask() -> None:
                answers.append(await manager.client.request("web", "whoami", 0.2))

            async with anyio.create_task_group() as group:  # in flight together
                for _ in range(9):
                    group.start_soon(ask)
            # least outstanding: three each, and every replica knows its place
            assert all(size == 3 for _, _, size in answers)
            by_pid = {pid: index for pid, index, _ in answers}
            assert set(by_pid) == pids and sorted(by_pid.values()) == [0, 1, 2]
            assert all([a[0] for a in answers].count(pid) == 3 for pid in pids)


async def test_a_killed_replica_is_replaced_while_the_pool_and_its_dependents_run() -> None:
    front = ServiceSpec(name="front", factory=Front, depends_on=["web"])
    manager = ServicesManager([pool(2), front])
    front_moves: list[State] = []
    reforks: list[tuple[str, int | None]] = []
    manager.subscribe(
        lambda event: (
            reforks.append((event.service, event.replica)) if event.kind == "restarting" else None
        )
    )
    manager.subscribe(
        lambda event: (
            front_moves.append(event.change.current)
            if event.service == "front" and event.change is not None
            else None
        )
    )
    with anyio.fail_after(90):
        async with startable.running(manager):
            node = manager["web"]
            (listener,) = node.listeners
            address = listener.socket.getsockname()
            for _ in range(5):  # five kills in a row
                victim = node.service[0].pid
                os.kill(victim, signal.SIGKILL)
                served = [await greeting(address) for _ in range(10)]  # never refused
                assert victim not in served
                await replaced(node, 0, victim)
            assert startable.of(node).state is State.STARTED
            assert startable.of(manager["front"]).state is State.STARTED
            front_service = manager["front"].service
            assert isinstance(front_service, Front)
            pid, _, size = await manager.client.request("web", "whoami")
            assert size == 2 and pid in {c.pid for c in node.service}
            assert front_moves == [State.STARTING, State.STARTED]  # never cascaded
            assert reforks == [("web", 0)] * 5  # each told, with the replica
    assert node.listeners == ()


async def test_a_replica_that_cannot_start_fails_the_pool_start() -> None:
    spec = pool(3, env={"STARTABLE_TEST_FAIL_REPLICA": "1"}, restart=RestartPolicy(mode="never"))
    manager = ServicesManager([spec])
    with anyio.fail_after(60):
        async with startable.open_owner():
            with pytest.raises(Exception, match="replica 1 cannot start"):
                await startable.of(manager).start()
    node = manager["web"]
    assert startable.of(node).state is State.STOPPED
    for container in node.service:  # none left running
        assert startable.of(container).state in (State.READY, State.STOPPED)
        assert container.controller is None or container.controller.returncode is not None


async def test_a_pool_restarted_too_often_escalates() -> None:
    storm = RestartPolicy(mode="always", backoff=0.01, max_backoff=0.01, intensity=2, period=60)
    manager = ServicesManager([pool(2, restart=storm)])
    with anyio.fail_after(60):
        async with startable.open_owner():
            await startable.of(manager).start()
            node = manager["web"]
            for kill in range(3):
                victim = node.service[0].pid
                os.kill(victim, signal.SIGKILL)  # type: ignore[arg-type]
                if kill < 2:  # within the policy: reforked
                    await replaced(node, 0, victim)
            await startable.of(node).wait_state(State.STOPPED)  # the third: past it
            reason = startable.of(node).statistics().stop_reason
            assert isinstance(reason, EscalationError)
            assert "web#0 failed 3 times within 60s" in str(reason)
            await startable.of(manager).stop()


async def test_a_pool_with_no_live_replica_past_its_limit_fails() -> None:
    slow = RestartPolicy(mode="always", backoff=120, max_backoff=120)  # none comes back in time
    manager = ServicesManager([pool(2, restart=slow, limit=0.5)])
    with anyio.fail_after(60):
        async with startable.open_owner():
            await startable.of(manager).start()
            node = manager["web"]
            victims = [container.pid for container in node.containers]
            for victim in victims:
                os.kill(victim, signal.SIGKILL)  # type: ignore[arg-type]
            await startable.of(node).wait_state(State.STOPPED)
            reason = startable.of(node).statistics().stop_reason
            assert str(reason) == "pool 'web' had no live replica for 0.5s"
            with pytest.raises(ServiceUnavailable, match="not STARTED"):
                await manager.client.request("web", "whoami")
            await startable.of(manager).stop()


async def test_one_live_replica_is_enough_to_keep_the_pool() -> None:
    slow = RestartPolicy(mode="always", backoff=120, max_backoff=120)
    manager = ServicesManager([pool(2, restart=slow, limit=0.2)])
    with anyio.fail_after(60):
        async with startable.running(manager):
            node = manager["web"]
            first, second = node.containers
            os.kill(first.pid, signal.SIGKILL)  # type: ignore[arg-type]
            await startable.of(node.runner.replicas[0]).wait_state(State.STOPPED)  # type: ignore[attr-defined]
            for _ in range(5):  # the live one answers; the pool stays
                pid, _, _ = await manager.client.request("web", "whoami", 0.1)
                assert pid == second.pid
            assert startable.of(node).state is State.STARTED


def test_replicas_are_checked_as_the_spec_is_made() -> None:
    assert ServiceSpec(name="web", entry="a.b:C", replicas=4).replicas == 4
    with pytest.raises(ValueError, match=r"ServiceSpec\.replicas must be at least 1"):
        ServiceSpec(name="web", entry="a.b:C", replicas=0)
    with pytest.raises(TypeError, match=r"ServiceSpec\.replicas must be an integer"):
        ServiceSpec(name="web", entry="a.b:C", replicas=2.5)  # type: ignore[arg-type]
    with pytest.raises(ServiceDefinitionError, match="256 replicas at most"):
        ServiceSpec(name="web", entry="a.b:C", replicas=1000)
    with pytest.raises(
        ServiceDefinitionError, match="pool and preload are for services in a child"
    ):
        ServiceSpec(name="web", factory=Front, replicas=2)


def test_a_replica_reads_its_place_and_refuses_a_bad_one() -> None:
    from startable.cluster._process.remote import _place_in_pool

    assert _place_in_pool({}) == (0, 1)
    assert _place_in_pool({"STARTABLE_REPLICA": "2", "STARTABLE_REPLICAS": "3"}) == (2, 3)
    for index, size in [("3", "3"), ("-1", "3"), ("9" * 5000, "9" * 5000), ("x", "2"), ("٣", "9")]:
        place = {"STARTABLE_REPLICA": index, "STARTABLE_REPLICAS": size}
        assert _place_in_pool(place) == (0, 1), (index, size)
    with pytest.raises(ValueError, match="replica 3 of a pool of 3"):
        ServiceClient("web", None, replica=3, replicas=3)  # type: ignore[arg-type]


async def test_a_reload_replaces_every_replica_and_no_client_sees_a_failure() -> None:
    front = ServiceSpec(name="front", factory=Front, depends_on=["web"])
    manager = ServicesManager([pool(2, env={"STARTABLE_TEST_GREET_DELAY": "0.02"}), front])
    with anyio.fail_after(90):
        async with startable.running(manager):
            node = manager["web"]
            (listener,) = node.listeners
            address = listener.socket.getsockname()
            before = {container.pid for container in node.containers}
            failures: list[BaseException] = []
            served = requested = 0
            reloaded = anyio.Event()

            async def connect() -> None:  # the shared port, a connection after another
                nonlocal served
                while not reloaded.is_set():
                    try:
                        await greeting(address)
                        served += 1
                    except Exception as exc:
                        failures.append(exc)

            async def request() -> None:  # the data plane, through the pool's dependent
                nonlocal requested
                while not reloaded.is_set():
                    try:
                        await manager.client.request("web", "whoami", 0.05)
                        requested += 1
                    except Exception as exc:
                        failures.append(exc)

            async with anyio.create_task_group() as group:
                for _ in range(4):
                    group.start_soon(connect)
                    group.start_soon(request)
                await manager.reload("web")
                reloaded.set()
            assert failures == []
            assert served > 0 and requested > 0
            after = {container.pid for container in node.containers}
            assert len(after) == 2 and not after & before  # every process is new
            assert node.listeners == (listener,)  # the same socket, never closed
            assert startable.of(node).state is State.STARTED and node.restarts == 0
            assert startable.of(manager["front"]).state is State.STARTED


async def test_a_reload_stops_at_a_replica_that_cannot_start(tmp_path: Path) -> None:
    flag = tmp_path / "fail"
    manager = ServicesManager([pool(2, env={"STARTABLE_TEST_FAIL_IF": str(flag)})])
    with anyio.fail_after(60):
        async with startable.running(manager):
            node = manager["web"]
            before = [container.pid for container in node.containers]
            flag.touch()  # from now on a new replica fails its start
            with pytest.raises(ClusterError, match=r"cannot reload pool 'web': replica web#0 "):
                await manager.reload("web")
            assert [container.pid for container in node.containers] == before  # kept
            assert startable.of(node).state is State.STARTED
            pid, _, _ = await manager.client.request("web", "whoami")
            assert pid in before


async def test_a_pool_scales_up_and_down_and_a_retired_replica_finishes_its_requests() -> None:
    manager = ServicesManager([pool(2)])
    with anyio.fail_after(90):
        async with startable.running(manager):
            node = manager["web"]
            await manager.scale("web", 4)
            assert len({c.pid for c in node.containers}) == 4
            answers: list[list[int]] = []

            async def ask() -> None:
                answers.append(await manager.client.request("web", "whoami", 0.2))

            async with anyio.create_task_group() as group:  # in flight together: spread
                for _ in range(8):
                    group.start_soon(ask)
            assert {index for _, index, _ in answers} == {0, 1, 2, 3}
            assert {size for _, index, size in answers if index >= 2} == {4}  # (new ones)
            slow: list[list[int]] = []

            async def ask_slowly() -> None:
                slow.append(await manager.client.request("web", "whoami", 1.0))

            async with anyio.create_task_group() as group:
                for _ in range(4):  # one on each replica (least outstanding)
                    group.start_soon(ask_slowly)
                await anyio.sleep(0.2)  # (let them reach their replicas)
                gone = node.containers[1:]
                await manager.scale("web", 1)  # three retired while they answer
            assert len(slow) == 4 and {index for _, index, _ in slow} == {0, 1, 2, 3}
            assert len(node.containers) == 1
            for container in gone:
                assert startable.of(container).state is State.STOPPED
                assert container.controller is None or container.controller.returncode == 0
            for _ in range(3):
                _, index, _ = await manager.client.request("web", "whoami")
                assert index == 0


async def test_reload_and_scale_are_refused_with_the_reason() -> None:
    store = specs.process("store", "tests.plane_services:Store")
    manager = ServicesManager([pool(2), store])
    with pytest.raises(ClusterError, match="is not STARTED"):
        await manager.reload("web")
    with anyio.fail_after(60):
        async with startable.running(manager):
            with pytest.raises(ClusterError, match="'store' is not a pool"):
                await manager.reload("store")
            with pytest.raises(KeyError, match="no service named 'nope'"):
                await manager.scale("nope", 2)
            for size, kind in [
                (0, ValueError),
                (257, ValueError),
                (2.5, TypeError),
                (True, TypeError),
            ]:
                with pytest.raises(kind, match="pool"):
                    await manager.scale("web", size)  # type: ignore[arg-type]
            assert len(manager["web"].containers) == 2


async def test_a_request_to_all_replicas_gets_each_ones_answer_or_error() -> None:
    store = specs.process("store", "tests.plane_services:Store")
    manager = ServicesManager([pool(3), store])
    with anyio.fail_after(60):
        async with startable.running(manager):
            client = manager.client
            answers = await client.request_all("web", "fails_on", 1)
            assert [answer.replica for answer in answers] == [0, 1, 2]
            assert [answer.value for answer in answers] == [0, None, 2]
            assert answers[0].ok and answers[0].result() == 0 and not answers[1].ok
            assert isinstance(answers[1].error, RemoteError)
            assert "LookupError: replica 1 has no such thing" in str(answers[1].error)
            with pytest.raises(RemoteError):
                answers[1].result()
            # one that does not answer in time is a timeout of its own; the call ends
            slow = await client.request_all("web", "fails_on", 2, 30.0, deadline=0.5)
            assert [answer.value for answer in slow] == [0, 1, None]
            assert isinstance(slow[2].error, RequestTimeout)
            # (whichever comes first: the replica's own timeout, or the caller's deadline)
            assert re.search(
                r"ran past the caller's deadline|replica 2 did not answer within the deadline",
                str(slow[2].error),
            )
            # a service that is not a pool answers as one replica
            (single,) = await client.request_all("store", "get", "nothing")
            assert single.replica == 0 and single.ok and single.value is None
            with pytest.raises(ServiceUnavailable, match="no service named 'nope'"):
                await client.request_all("nope", "fails_on", 0)


async def test_a_request_can_go_to_a_replica_at_random() -> None:
    manager = ServicesManager([pool(3)])
    with anyio.fail_after(60):
        async with startable.running(manager):
            hit = {
                (await manager.client.request("web", "whoami", pick="random"))[1] for _ in range(40)
            }
            assert len(hit) > 1  # one by one, least outstanding would always pick the same
            with pytest.raises(ValueError, match="pick is 'least-outstanding' or 'random'"):
                await manager.client.request("web", "whoami", pick="all")  # type: ignore[arg-type]


async def test_one_replica_holds_the_singleton_role_and_it_moves_only_when_its_holder_exits() -> (
    None
):
    store = specs.process("store", "tests.plane_services:Store")
    manager = ServicesManager([pool(3), store])
    with anyio.fail_after(90):
        async with startable.running(manager):
            node, client = manager["web"], manager.client

            async def holders() -> list[int]:
                answers = await client.request_all("web", "role")
                held = [answer.replica for answer in answers if answer.value]
                assert len(held) <= 1, answers  # never two at once
                return held

            async def held_by_other_than(former: int | None) -> int:
                while (held := await holders()) in ([former], []):  # noqa: ASYNC110 - told in a moment, in another process
                    await anyio.sleep(0.01)
                return held[0]

            assert await held_by_other_than(None) == 0  # the lowest index, once all started
            (alone,) = await client.request_all("store", "role")  # not a pool: holds it
            assert alone.value is True
            holder = 0
            for _ in range(3):  # the holder dies: another gets it, once it is gone
                victim = node.replicas[holder].pid
                os.kill(victim, signal.SIGKILL)  # type: ignore[arg-type]
                new = await held_by_other_than(holder)
                assert node.replicas[new].pid != victim
                await replaced(node, holder, victim)
                holder = new
            assert await holders() == [holder]  # the reforked ones did not take it back
            # wait_singleton returns in the holder only
            waited = await client.request_all("web", "wait_role", deadline=0.5)
            assert [answer.value for answer in waited if answer.ok] == [holder]
            assert sum(isinstance(answer.error, RequestTimeout) for answer in waited) == 2


def family(pid: int) -> list[int]:
    """`pid` and every process under it."""
    try:
        process = psutil.Process(pid)
        return [pid, *(child.pid for child in process.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


async def test_a_preloading_pool_forks_every_replica_from_its_zygote(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    spec = pool(
        3,
        preload=True,
        permissions=Permissions(network=True),  # writes nowhere: the zygote applies it
    )
    manager = ServicesManager([spec])
    seen: set[int] = set()
    with anyio.fail_after(90):
        async with startable.running(manager):
            node = manager["web"]
            zygote = node.runner.zygote  # type: ignore[attr-defined]
            assert zygote is not None and zygote.pid is not None
            pids = {container.pid for container in node.containers}
            assert {psutil.Process(pid).ppid() for pid in pids} == {zygote.pid}  # (forked)
            seen |= pids | {zygote.pid}
            answers = await manager.client.request_all("web", "whoami")
            assert [answer.value[1:] for answer in answers] == [[0, 3], [1, 3], [2, 3]]
            refusals = await manager.client.request_all("web", "write", str(outside))
            assert [answer.value for answer in refusals] == ["refused: PermissionError"] * 3
            forks = await manager.client.request_all("web", "fork")  # only the zygote forks
            assert [answer.value for answer in forks] == ["refused: PermissionError"] * 3
            controller = node.containers[0].controller
            assert controller is not None and controller.mechanisms == zygote.mechanisms
            assert any(m.startswith("audit hook") for m in zygote.mechanisms)
            # a replica killed is forked again from the same zygote; the port serves on
            (listener,) = node.listeners
            victim = node.containers[0].pid
            os.kill(victim, signal.SIGKILL)  # type: ignore[arg-type]
            assert victim not in [await greeting(listener.socket.getsockname()) for _ in range(5)]
            await replaced(node, 0, victim)
            assert psutil.Process(node.containers[0].pid).ppid() == zygote.pid  # type: ignore[arg-type]
            assert node.containers[0].incarnations[-2].returncode == -signal.SIGKILL
            held = await manager.client.request_all("web", "pidfds")  # none of its siblings'
            assert [(answer.error, answer.value) for answer in held] == [(None, 0)] * 3
            # a replica reads its own /proc, not another process's (the zygote's neither;
            # where Landlock is: the audit hook alone lets a replica read /proc)
            for path in (
                ()
                if not landlock_abi()
                else (f"/proc/{os.getpid()}/environ", f"/proc/{zygote.pid}/environ")
            ):
                peeks = await manager.client.request_all("web", "read", path)
                assert [answer.value for answer in peeks] == ["refused: PermissionError"] * 3
            # a reload preloads the new code in a new zygote, and the old one ends
            await manager.reload("web")
            new = node.runner.zygote  # type: ignore[attr-defined]
            assert new is not zygote and new.pid != zygote.pid
            assert {psutil.Process(c.pid).ppid() for c in node.containers} == {new.pid}  # type: ignore[arg-type]
            assert not family(zygote.pid)
            seen |= {c.pid for c in node.containers} | {new.pid}  # type: ignore[misc]
    assert not outside.exists()
    for pid in seen:  # no orphans
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", pid


async def test_a_pool_whose_zygote_dies_fails() -> None:
    manager = ServicesManager([pool(2, preload=True)])
    with anyio.fail_after(60):
        async with startable.open_owner():
            await startable.of(manager).start()
            node = manager["web"]
            zygote = node.runner.zygote  # type: ignore[attr-defined]
            os.kill(zygote.pid, signal.SIGKILL)
            await startable.of(node).wait_state(State.STOPPED)
            reason = startable.of(node).statistics().stop_reason
            assert str(reason) == "the zygote of pool 'web' ended: no replica can be forked"
            await startable.of(manager).stop()


def test_preload_is_for_pools() -> None:
    with pytest.raises(ServiceDefinitionError, match="preload is for pools"):
        ServiceSpec(name="web", entry="a.b:C", preload=True)
    assert ServiceSpec(name="web", entry="a.b:C", replicas=2, preload=True).preload


async def test_a_request_to_all_during_a_reload_gets_one_answer_per_replica() -> None:
    manager = ServicesManager([pool(2)])
    with anyio.fail_after(90):
        async with startable.running(manager):
            outcomes: list[list[tuple[int, bool]]] = []
            done = anyio.Event()

            async def ask() -> None:  # (a new replica is attached before it is STARTED)
                while not done.is_set():
                    answers = await manager.client.request_all("web", "whoami", deadline=5.0)
                    outcomes.append([(answer.replica, answer.ok) for answer in answers])

            async with anyio.create_task_group() as group:
                group.start_soon(ask)
                await manager.reload("web")
                done.set()
            assert outcomes and all(o == [(0, True), (1, True)] for o in outcomes), outcomes


@pytest.mark.parametrize("preload", [False, True])
async def test_a_manager_stopped_during_a_reload_leaves_no_process(preload: bool) -> None:
    me = psutil.Process()
    manager = ServicesManager([pool(2, preload=preload)])
    with anyio.fail_after(60):
        async with startable.open_owner():
            await startable.of(manager).start()
            node = manager["web"]

            async def reload() -> None:
                with contextlib.suppress(ClusterError):  # (it is stopped under it)
                    await manager.reload("web")

            async with anyio.create_task_group() as group:
                group.start_soon(reload)
                await startable.of(node.replicas[0]).wait_state(State.STOPPING)  # retiring
                await startable.of(manager).stop()
    assert startable.of(manager).state is State.STOPPED
    left = [p for p in me.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    assert left == []


async def test_failed_reloads_leave_no_zygote_behind(tmp_path: Path) -> None:
    flag = tmp_path / "fail"
    manager = ServicesManager([pool(2, preload=True, env={"STARTABLE_TEST_FAIL_IF": str(flag)})])
    with anyio.fail_after(90):
        async with startable.running(manager):
            runner = manager["web"].runner
            zygotes = [runner.zygote.pid]  # type: ignore[attr-defined]
            flag.touch()
            for _ in range(3):
                with pytest.raises(ClusterError):
                    await manager.reload("web")
                zygotes.append(runner.zygote.pid)  # type: ignore[attr-defined]
            flag.unlink()
            await manager.reload("web")
            current = runner.zygote.pid  # type: ignore[attr-defined]
            for pid in zygotes:  # every former one has ended
                assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
            parents = {psutil.Process(c.pid).ppid() for c in manager["web"].containers}  # type: ignore[arg-type]
            assert parents == {current}


@pytest.mark.parametrize("preload", [False, True])
async def test_a_pool_without_network_serves_its_given_port(preload: bool) -> None:
    # Without `network` a replica accepts on the listener it was given (no new
    # socket); a zygote sends on its own unix socket.
    manager = ServicesManager([pool(2, preload=preload, permissions=Permissions())])
    with anyio.fail_after(60):
        async with startable.running(manager):
            node = manager["web"]
            answers = await manager.client.request_all("web", "whoami")
            assert [answer.value[1:] for answer in answers] == [[0, 2], [1, 2]]
            (listener,) = node.listeners
            pids = {container.pid for container in node.containers}
            assert await greeting(listener.socket.getsockname()) in pids


async def test_a_manager_stopped_while_a_reload_preloads_leaves_no_zygote(tmp_path: Path) -> None:
    flag = tmp_path / "slow"
    me = psutil.Process()
    env = {"STARTABLE_TEST_SLOW_IMPORT_IF": str(flag)}
    manager = ServicesManager([pool(2, preload=True, env=env)])
    with anyio.fail_after(60):
        async with startable.open_owner():
            await startable.of(manager).start()
            runner = manager["web"].runner
            first = runner.zygote  # type: ignore[attr-defined]
            flag.touch()  # the next zygote takes a while to import the entry

            async def reload() -> None:
                with pytest.raises(ClusterError):  # (stopped under it)
                    await manager.reload("web")

            async with anyio.create_task_group() as group:
                group.start_soon(reload)
                while len(runner._zygotes) < 2:  # type: ignore[attr-defined]  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                await startable.of(manager).stop()
            assert runner.zygote is None and first.pid is not None  # type: ignore[attr-defined]
    left = [p for p in me.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    assert left == []


async def test_twenty_kills_while_clients_hammer_the_port_refuse_no_connection() -> None:
    """One replica at a time is SIGKILLed while another lives: no connection is refused.

    A connection that the killed process had accepted and not answered is cut
    with it (SIGKILL leaves it no drain); every other is served.
    """
    manager = ServicesManager([pool(3)])
    served, refused, cut = [0], [0], [0]

    async def client(address: tuple[str, int], stop: anyio.Event) -> None:
        while not stop.is_set():
            try:
                await greeting(address)
                served[0] += 1
            except ConnectionRefusedError:
                refused[0] += 1
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError, ValueError):
                cut[0] += 1

    with anyio.fail_after(120):
        async with startable.running(manager):
            node = manager["web"]
            (listener,) = node.listeners
            address = listener.socket.getsockname()
            rng = random.Random(20)
            stop = anyio.Event()
            async with anyio.create_task_group() as group:
                for _ in range(4):
                    group.start_soon(client, address, stop)
                for _ in range(20):
                    index = rng.randrange(3)
                    victim = node.containers[index].pid
                    os.kill(victim, signal.SIGKILL)  # type: ignore[arg-type]
                    before = served[0]
                    await replaced(node, index, victim)
                    while served[0] < before + 10:  # noqa: ASYNC110 - served by others meanwhile
                        await anyio.sleep(0.01)
                stop.set()
            assert startable.of(node).state is State.STARTED
    assert refused == [0]
    assert cut[0] <= 20 * 4, (served, cut)  # at most the connections each killed process held
    assert served[0] >= 200
