"""Hosts as separate `startable up` processes, over a real Redis started by the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import anyio.abc
import pytest

import startable
from startable.cluster import (
    EmbeddedRedis,
    RequestTimeout,
    ServicesManager,
    ServiceSpec,
    ServiceUnavailable,
)

from ..specs import free_port

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.processes,
]
KEY = "a test cluster key, long enough!!"
TTL = 1.0
STORE = """
    import os

    import startable
    from startable.cluster import handler


    class Store:
        @startable.as_raw_start
        async def _start(self) -> None:
            pass

        @handler
        def pid(self) -> int:
            return os.getppid()  # (the host: its `startable up`)
"""


def host_file(directory: Path, name: str, redis: str) -> Path:
    (directory / "hoststore.py").write_text(textwrap.dedent(STORE), encoding="utf-8")
    (directory / "shop.key").write_text(KEY, encoding="utf-8")
    (directory / "shop.key").chmod(0o600)
    path = directory / f"{name}.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [cluster]
            name = "shop"
            redis = "{redis}"
            key_file = "shop.key"
            registry_ttl = {TTL}

            [services.store]
            entry = "hoststore:Store"
            """
        ),
        encoding="utf-8",
    )
    return path


async def test_a_sigkilled_host_is_failed_over_and_no_request_outlives_its_deadline(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    hosts = [
        await anyio.open_process(
            [
                sys.executable,
                "-m",
                "startable",
                "up",
                str(host_file(tmp_path, n, redis_server.url)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n in ("b", "c")
    ]
    caller = ServicesManager(
        [ServiceSpec(name="store", remote=True, limit=30)],
        name="shop",
        redis=redis_server.url,
        cluster_key=KEY,
        registry_ttl=TTL,
    )
    outcomes: list[tuple[float, float, object]] = []  # (sent, took, pid or the error)
    deadline = 1.5
    try:
        with anyio.fail_after(60):
            async with startable.running(caller):
                assert caller.link is not None
                link = caller.link
                while len(link.instances("store")) < 2:
                    await link.refresh("store")
                    await anyio.sleep(0.05)
                pids = {p.pid for p in hosts}
                stop = anyio.Event()

                async def flow() -> None:
                    while not stop.is_set():
                        sent = time.monotonic()
                        try:
                            outcome: object = await caller.client.request(
                                "store", "pid", deadline=deadline
                            )
                        except Exception as exc:
                            outcome = exc
                        outcomes.append((sent, time.monotonic() - sent, outcome))

                async with anyio.create_task_group() as group:
                    for _ in range(4):
                        group.start_soon(flow)
                    while sum(1 for *_, o in outcomes if o in pids) < 100:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                    victim = hosts[0]
                    victim.send_signal(signal.SIGKILL)
                    killed = time.monotonic()
                    dead = _host_of(victim.pid)
                    while any(i.startswith(dead) for i in link.instances("store")):  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                    expired = time.monotonic()
                    await anyio.sleep(1.0)  # a second of calls on the survivor
                    stop.set()
    finally:
        for process in hosts:
            if process.returncode is None:
                process.kill()
            with anyio.move_on_after(10, shield=True):
                await process.wait()
    # No request outlived its deadline (a caller's deadline is its own timer): none
    # hung past it. The margin is for a loaded machine's late timers, not a speed test.
    assert all(took < deadline + 5 for _, took, _ in outcomes)
    # What failed was in flight at the kill (one per caller at most): it timed out, or
    # failed at once when a call to the dead host went undelivered.
    failed = [o for _, _, o in outcomes if isinstance(o, Exception)]
    assert len(failed) <= 4, failed
    assert all(isinstance(o, RequestTimeout | ServiceUnavailable) for o in failed), failed
    # Every request sent once the dead host left the view was answered by the other one.
    after = [o for sent, _, o in outcomes if sent >= expired]
    assert after and all(o == hosts[1].pid for o in after), after
    assert any(o == hosts[1].pid for sent, _, o in outcomes if killed <= sent < expired)


def _host_of(pid: int) -> str:
    """The start of the instance ids of the host whose `startable up` has `pid`."""
    return f"{os.uname().nodename[:40]}.{pid}."


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two_hosts"


async def _until(process: anyio.abc.Process, marker: str, seen: list[str]) -> None:
    assert process.stdout is not None
    while not any(marker in line for line in "".join(seen).splitlines()):
        chunk = await process.stdout.receive()
        seen.append(chunk.decode(errors="replace"))


async def test_the_tutorial_runs_as_two_startable_up_sharing_one_embedded_server(
    tmp_path: Path,
) -> None:
    port = free_port()  # (the files' port, 6390, may be taken on this machine)
    for source in EXAMPLE.iterdir():
        if source.suffix in (".py", ".toml"):
            text = source.read_text(encoding="utf-8").replace("6390", str(port))
            (tmp_path / source.name).write_text(text, encoding="utf-8")
    env = {**os.environ, "STARTABLE_CLUSTER_KEY": "t" * 64}
    hosts: list[anyio.abc.Process] = []
    outputs: list[list[str]] = [[], []]
    try:
        with anyio.fail_after(60):
            for name, marker, seen in (
                ("kv.toml", "kv: STARTED", outputs[0]),
                ("api.toml", "api: STARTED", outputs[1]),
            ):
                process = await anyio.open_process(
                    [sys.executable, "-m", "startable", "up", tmp_path / name, "--no-live"],
                    stdin=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
                hosts.append(process)
                await _until(process, marker, seen)
            assert "api | api: ready; kv says hello from another host" in "".join(outputs[1])
            for process in reversed(hosts):
                process.send_signal(signal.SIGINT)
                assert await process.wait() == 0
    finally:
        for process in hosts:
            if process.returncode is None:
                process.kill()
            with anyio.move_on_after(10, shield=True):
                await process.wait()


def test_the_two_hosts_example_runs_in_one_program() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE / "drive.py")],
        capture_output=True,
        text=True,
        timeout=300,  # a bound against hangs, not a speed test
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for line in (
        "recalled: 42",
        "greeted: welcome, Ada",
        "kv runs on the other host: True",
        "here, kv is STARTED and remote",
        "stopped: STOPPED STOPPED",
    ):
        assert line in result.stdout, result.stdout
