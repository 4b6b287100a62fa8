"""ServicesManager over real child processes: order, crash cascade, restarts, no orphans."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import psutil
import pytest

import startable
from startable import State
from startable.cluster import (
    DependencyStopped,
    RemoteExited,
    RestartPolicy,
    ServicesManager,
    ServiceSpec,
)

from .. import specs
from ..waiting import until

#: Every test here spawns child processes (`-m "not processes"` skips them).
pytestmark = [pytest.mark.anyio, pytest.mark.processes]
ROOT = Path(__file__).resolve().parents[2]


def process(name: str, *depends_on: str) -> ServiceSpec:
    return specs.process(name, "Sleeper", *depends_on, restart=RestartPolicy(backoff=0))


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_a_killed_process_cascades_in_order_and_everything_comes_back() -> None:
    """c depends on a, a on b; b is killed with SIGKILL."""
    manager = ServicesManager([process("c", "a"), process("a", "b"), process("b")])
    moves: list[tuple[str, State]] = []
    for name, node in manager.nodes.items():
        assert node.container is not None
        startable.of(node.container).subscribe(
            lambda change, name=name: moves.append((name, change.current))
        )
    with anyio.fail_after(60):
        async with startable.running(manager):
            nodes = manager.nodes
            started = [m for m in moves if m[1] is State.STARTED]
            assert [name for name, _ in started] == ["b", "a", "c"]
            pids = {name: node.pid for name, node in nodes.items()}
            assert all(pid is not None and not gone(pid) for pid in pids.values())
            moves.clear()
            reasons: dict[str, list[BaseException | None]] = {"a": [], "c": []}
            manager.subscribe(
                lambda e: (
                    e.change is not None
                    and e.change.current is State.STOPPING
                    and reasons[e.service].append(e.change.reason)
                )
            )
            os.kill(pids["b"], signal.SIGKILL)
            await until(
                manager,
                lambda: all(
                    startable.of(nodes[n]).state is State.STARTED and nodes[n].pid != pids[n]
                    for n in "abc"
                ),
            )
            # The cascade: c's process was stopped before a's stop began.
            assert moves.index(("c", State.STOPPED)) < moves.index(("a", State.STOPPING))
            assert isinstance(nodes["b"].last_error, RemoteExited)
            assert nodes["b"].last_error.returncode == -signal.SIGKILL
            assert [type(r) for r in reasons["c"]] == [DependencyStopped]
            assert reasons["c"][0].origin == "b" and "(through a)" in str(reasons["c"][0])
            # ...and back in order, in new processes; the old ones are gone.
            restarted = [name for name, state in moves if state is State.STARTED]
            assert restarted == ["b", "a", "c"]
            assert all(gone(pid) for pid in pids.values() if pid is not None)
            assert (nodes["b"].restarts, nodes["a"].restarts, nodes["c"].restarts) == (1, 0, 0)
            last_pids = [node.pid for node in nodes.values()]
    assert all(startable.of(n).state is State.STOPPED for n in manager.nodes.values())
    assert all(pid is not None and gone(pid) for pid in last_pids)


async def test_cascade_reason_reaches_the_service_in_its_process() -> None:
    """The dependents' containers stop with a DependencyStopped naming the origin."""
    manager = ServicesManager(
        [
            process("b"),
            ServiceSpec(
                name="a",
                entry="tests.remote_services:Echo",
                depends_on=["b"],
                cwd=str(ROOT),
                restart=RestartPolicy(mode="never"),
                container_options={"resources_interval": 0},
            ),
        ]
    )
    with anyio.fail_after(60):
        async with startable.running(manager):
            a, b = manager["a"], manager["b"]
            await manager.stop_service("b")
            assert startable.of(a).state is State.STOPPED
            assert a.container is not None
            texts = [line.text for line in a.container.output]
            stopping = [t for t in texts if t.startswith("echo: stopping (RemoteError(")]
            assert stopping and "DependencyStopped: a stopped because b stopped" in stopping[0]
            reason = startable.of(a).statistics().stop_reason
            assert isinstance(reason, DependencyStopped) and reason.origin == "b"
            assert startable.of(b).state is State.STOPPED


async def test_creation_start_stop_and_destruction_orders_on_processes() -> None:
    """Created and started dependencies first; stopped and destroyed dependents first."""
    manager = ServicesManager([process("c", "a", "b"), process("a", "b"), process("b")])
    events: list[tuple[str, str]] = []
    manager.subscribe(
        lambda event: events.append(
            (event.service, event.change.current.name if event.change else event.kind)
        )
    )
    assert list(manager.nodes) == ["b", "a", "c"]  # creation order
    with anyio.fail_after(60):
        async with startable.running(manager):
            started = [name for name, what in events if what == "STARTED"]
            assert started == ["b", "a", "c"]
            pids = [manager[name].pid for name in ("a", "b", "c")]
        stopped = [name for name, what in events if what == "STOPPED"]
        assert stopped == ["c", "a", "b"]
        await manager.destroy_all()
    destroyed = [name for name, what in events if what == "destroyed"]
    assert destroyed == ["c", "a", "b"]
    assert all(pid is not None and gone(pid) for pid in pids)
