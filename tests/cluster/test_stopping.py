"""How a cluster of real processes stops: reasons passed down, forced stops said,
services that exit for good."""

from __future__ import annotations

import anyio
import pytest

import startable
from startable import State
from startable.cluster import (
    EscalationError,
    ForcedStop,
    RemoteExited,
    RestartPolicy,
    ServicesManager,
    ServiceSpec,
)

from .. import specs
from ..waiting import until

#: Every test here spawns child processes (`-m "not processes"` skips them).
pytestmark = [pytest.mark.anyio, pytest.mark.processes]


def process(
    name: str,
    entry: str,
    *depends_on: str,
    env: dict[str, str] | None = None,
    restart: RestartPolicy | None = None,
) -> ServiceSpec:
    return specs.process(
        name,
        entry,
        *depends_on,
        options={"close_timeout": 1, "term_timeout": 1, "resources_interval": 0},
        env=env or {},
        restart=restart or RestartPolicy(backoff=0),
    )


def said(manager: ServicesManager, name: str) -> list[str]:
    container = manager[name].container
    assert container is not None
    return [line.text for line in container.output]


async def test_the_managers_stop_reason_reaches_every_raw_stop() -> None:
    manager = ServicesManager([process("a", "Echo"), process("b", "Echo", "a")])
    with anyio.fail_after(60):
        async with startable.open_owner():
            await startable.of(manager).start()
            await startable.of(manager).stop(RuntimeError("maintenance window"))
    for name in ("a", "b"):
        assert "echo: stopping (RemoteError('RuntimeError: maintenance window'))" in said(
            manager, name
        )


async def test_an_escalation_reaches_every_raw_stop() -> None:
    crashes = process(
        "worker",
        "Faulty",
        "db",
        env={"STARTABLE_TEST_FAIL": "exit"},
        restart=RestartPolicy(intensity=1, backoff=0),
    )
    manager = ServicesManager([process("db", "Echo"), crashes])
    with anyio.fail_after(60):
        async with startable.open_owner():
            await startable.of(manager).start()
            await startable.of(manager).wait_state(State.STOPPED)
    reason = startable.of(manager).statistics().stop_reason
    assert isinstance(reason, EscalationError)
    last = said(manager, "db")[-1]
    assert last.startswith('echo: stopping (RemoteError("startable.cluster.EscalationError: worker')


async def test_a_forced_stop_is_said_and_makes_the_managers_stop_fail() -> None:
    manager = ServicesManager(
        [
            process("ok", "Echo"),
            process("hang", "Faulty", "ok", env={"STARTABLE_TEST_FAIL": "hang"}),
        ]
    )
    with anyio.fail_after(60):
        async with startable.open_owner():
            await startable.of(manager).start()
            with pytest.raises(ForcedStop) as forced:
                await startable.of(manager).stop()
    assert forced.value.service == "hang" and forced.value.signal == "SIGKILL"
    assert forced.value.__notes__ == ["while stopping service 'hang'"]
    hang, ok = manager["hang"], manager["ok"]
    assert (hang.ended_by, hang.stop_error) == ("SIGKILL", forced.value)
    assert (ok.ended_by, ok.stop_error) == ("close request", None)
    assert all(startable.of(node).state is State.STOPPED for node in manager.nodes.values())
    # and the table of `startable up` says how each ended
    from rich.console import Console

    from startable.cli._table import render

    console = Console(record=True, width=120)
    console.print(render(manager.nodes.values(), title="demo", phase="stopped"))
    rows = {
        line.split()[0]: " ".join(line.split())
        for line in console.export_text().splitlines()
        if line.split()
    }
    assert rows["hang"].startswith("hang STOPPED (SIGKILL) -")
    assert rows["ok"].startswith("ok STOPPED -")


async def test_stop_service_says_when_it_had_to_signal() -> None:
    manager = ServicesManager([process("hang", "Faulty", env={"STARTABLE_TEST_FAIL": "hang"})])
    with anyio.fail_after(60):
        async with startable.running(manager):
            with pytest.raises(ForcedStop):
                await manager.stop_service("hang")
            assert startable.of(manager["hang"]).state is State.STOPPED


NEVER = RestartPolicy(mode="never")


async def test_a_service_that_exits_for_good_is_kept_in_failed() -> None:
    manager = ServicesManager(
        [
            process("db", "Echo"),
            process("job", "Faulty", env={"STARTABLE_TEST_FAIL": "exit"}, restart=NEVER),
        ]
    )
    with anyio.fail_after(60):
        async with startable.running(manager):
            await until(manager, lambda: "job" in manager.failed)
            exited = manager.failed["job"]
            assert isinstance(exited.reason, RemoteExited)
            assert str(exited).startswith("job failed (RemoteExited(")
            assert startable.of(manager["db"]).state is State.STARTED  # the rest runs on
            await manager.start_service("job")  # back again: no longer failed
            assert "job" not in manager.failed


async def test_on_service_exit_stop_stops_everything_with_the_reason() -> None:
    manager = ServicesManager(
        [
            process("db", "Echo"),
            process("job", "Faulty", env={"STARTABLE_TEST_FAIL": "exit"}, restart=NEVER),
        ],
        on_service_exit="stop",
    )
    with anyio.fail_after(60):
        async with startable.open_owner():
            await startable.of(manager).start()
            await startable.of(manager).wait_state(State.STOPPED)
    reason = startable.of(manager).statistics().stop_reason
    assert str(reason).startswith("job failed (RemoteExited(")
    assert said(manager, "db")[-1].startswith(
        'echo: stopping (RemoteError("startable.cluster.ServiceExited: job failed'
    )


async def test_on_service_exit_stop_after_a_clean_exit_stops_without_a_reason() -> None:
    manager = ServicesManager(
        [process("db", "Echo"), process("job", "Quits", restart=NEVER)], on_service_exit="stop"
    )
    with anyio.fail_after(60):
        async with startable.open_owner():
            await startable.of(manager).start()
            await startable.of(manager).wait_state(State.STOPPED)
    assert startable.of(manager).statistics().stop_reason is None
    assert manager.failed == {}


def test_on_service_exit_is_checked() -> None:
    with pytest.raises(ValueError, match="on_service_exit is 'continue' or 'stop', not 'abort'"):
        ServicesManager([], on_service_exit="abort")  # type: ignore[arg-type]
