"""No process a service starts outlives it: not one in a session of its own, not a daemon.

Each test runs with a cgroup per service process (where this machine allows
one) and with the child subreaper alone (the fallback elsewhere).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import psutil
import pytest

import startable
from startable.cluster import (
    OutputLine,
    ProcessOptions,
    ServiceContainer,
    ServicesManager,
    ServiceSpec,
)
from startable.cluster._process import descendants as _descendants

#: Every test here spawns child processes (`-m "not processes"` skips them).
pytestmark = [pytest.mark.anyio, pytest.mark.processes]
ROOT = Path(__file__).resolve().parents[2]


def cgroups_here() -> bool:
    made = _descendants.Cgroup.make("probe")
    if made is None:
        return False
    made.remove()
    return True


@pytest.fixture(params=["cgroup", "subreaper"])
def tracking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "cgroup" and not cgroups_here():
        pytest.skip("no cgroup (v2) can be made here")
    monkeypatch.setattr(_descendants, "USE_CGROUPS", request.param == "cgroup")
    return str(request.param)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Grandchildren:
    def __init__(self) -> None:
        self.pids: list[int] = []
        self.both = anyio.Event()

    def __call__(self, line: OutputLine) -> None:
        if line.text.startswith("GRANDCHILD "):
            self.pids.append(int(line.text.split()[1]))
            if len(self.pids) == 2:
                self.both.set()


def daemonizer(seen: Grandchildren) -> ServiceContainer:
    return ServiceContainer(
        "tests.remote_services:Daemonizer",
        cwd=str(ROOT),
        on_output=seen,
        options=ProcessOptions(
            close_timeout=5,
            term_timeout=2,
            resources_interval=0,
        ),
    )


async def test_a_clean_stop_ends_what_left_the_process_group(tracking: str) -> None:
    seen = Grandchildren()
    container = daemonizer(seen)
    with anyio.fail_after(30):
        async with startable.running(container):
            await seen.both.wait()
            assert all(alive(pid) for pid in seen.pids)
            assert all(os.getpgid(pid) != container.pid for pid in seen.pids)  # left its group
    assert container.controller is not None
    assert [step.action for step in container.controller.ladder] == ["close request"]
    assert not any(alive(pid) for pid in seen.pids)


async def test_a_killed_service_process_takes_them_along_in_its_cgroup(tracking: str) -> None:
    if tracking != "cgroup":
        pytest.skip("without a cgroup, what a SIGKILLed process started escapes (documented)")
    seen = Grandchildren()
    container = daemonizer(seen)
    with anyio.fail_after(30):
        async with startable.open_owner():
            await startable.of(container).start()
            await seen.both.wait()
            assert container.pid is not None
            os.kill(container.pid, signal.SIGKILL)  # no chance to clean up after itself
            await startable.of(container).wait_state(startable.State.STOPPED)
    assert not any(alive(pid) for pid in seen.pids)


async def test_no_process_outlives_a_manager(tracking: str) -> None:
    seen = Grandchildren()
    spec = ServiceSpec(
        name="daemons",
        entry="tests.remote_services:Daemonizer",
        cwd=str(ROOT),
        on_output=seen,
        container_options={"resources_interval": 0},
    )
    with anyio.fail_after(30):
        async with startable.running(ServicesManager([spec])):
            await seen.both.wait()
    assert not any(alive(pid) for pid in seen.pids)


def test_the_cgroups_of_a_manager_that_died_are_cleaned_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import subprocess

    if not cgroups_here():
        pytest.skip("no cgroup (v2) can be made here")
    gone = subprocess.Popen(["true"])
    gone.wait()  # a manager that is no more
    parent = _descendants._own_cgroup()
    assert parent is not None
    stale = _descendants.Cgroup(os.path.join(parent, f"startable-{gone.pid}-1-old"))
    os.mkdir(stale.path)
    survivor = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        assert stale.add(survivor.pid)
        monkeypatch.setattr(_descendants, "_swept", False)
        made = _descendants.Cgroup.make("new")  # the first one a manager makes sweeps
        assert made is not None
        made.remove()
        assert survivor.wait(timeout=10) == -signal.SIGKILL
        assert not os.path.exists(stale.path)
    finally:
        survivor.kill()
        survivor.wait(timeout=10)
