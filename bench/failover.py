"""Benchmarks of failover between hosts: how soon calls succeed again once the host
that served them is gone, against the registry's ttl in the same run.

Two hosts run a store, each in a process of its own; a third host (this
process) calls it, one call at a time, so every call goes to the same
host (the oldest of equals). Then that host is

- SIGKILLed: its subscription closes with it, a call published to it
  reaches nobody (PUBLISH answers 0), and is sent to the other host at
  once (the undelivered path);
- SIGSTOPped: it hangs with its connections open, so calls published to it
  are delivered and never answered, until its registration expires (the
  expiry path): calls time out, and its pending ones steer the pick away.

And Redis restarted under them (killed, and an empty server started on
its port): from its return to the first call answered across hosts (bar:
2 s), subscriptions and registrations coming back by themselves.

Measured from the signal (and, for SIGKILL, also from when the host's
process is gone): the first call answered by the other host, how many
calls failed before it, and when the host left the caller's picks, against
the ttl. Calls have a deadline of 0.25 s. A call published in the moment
between the signal and Redis reading the end of the host's connection is
delivered to nobody who will answer: it fails at its deadline (at most
once, never run twice).

    uv run python bench/failover.py [--quick] [--check]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import anyio
import anyio.abc
from _report import Best, Row, arguments, report

import startable
from startable.cluster import EmbeddedRedis, ServicesManager, ServiceSpec

KEY = "a bench cluster key, long enough!"
TTL = 1.0
DEADLINE = 0.25
HOST = """
import os, sys
import anyio
import startable
from startable.cluster import ServicesManager, ServiceSpec, handler

class Store:
    @startable.as_raw_start
    async def _start(self) -> None:
        pass

    @handler
    def who(self) -> int:
        return os.getpid()

async def main() -> None:
    spec = ServiceSpec(name="store", factory=Store)
    host = ServicesManager(
        [spec], name="bench", redis=sys.argv[1], cluster_key=sys.argv[2],
        registry_ttl=float(sys.argv[3]),
    )
    async with startable.running(host):
        print("ready", flush=True)
        await anyio.sleep_forever()

anyio.run(main, backend="trio")
"""


async def start_host(url: str) -> anyio.abc.Process:
    process = await anyio.open_process(
        [sys.executable, "-c", HOST, url, KEY, str(TTL)],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    seen = b""
    try:
        with anyio.fail_after(60):
            while b"ready" not in seen:
                seen += await process.stdout.receive()
    except (anyio.EndOfStream, TimeoutError):
        process.kill()
        await process.wait()
        raise RuntimeError(f"a store host did not start: {seen.decode(errors='replace')}") from None
    return process


def calling_host(server: EmbeddedRedis) -> ServicesManager:
    """The host that calls the store, which runs on the others."""
    spec = ServiceSpec(name="store", remote=True)
    return ServicesManager(
        [spec], name="bench", redis=server.url, cluster_key=KEY, registry_ttl=TTL
    )


async def one_failover(
    server: EmbeddedRedis, how: signal.Signals, reaped: bool = False
) -> dict[str, float]:
    """Start two store hosts, signal the one that serves, and time the way back
    (`reaped`: from when the killed host's process is gone, not from the signal)."""
    hosts = [await start_host(server.url) for _ in range(2)]
    caller = calling_host(server)
    figures: dict[str, float] = {}
    try:
        async with startable.running(caller):
            link = caller.link
            assert link is not None
            with anyio.fail_after(30):
                while len(link.instances("store")) < 2:
                    await link.refresh("store")
                    await anyio.sleep(0.02)
            serving = await caller.client.request("store", "who")
            trip = time.perf_counter()
            await caller.client.request("store", "who")
            figures["trip"] = time.perf_counter() - trip
            signalled = time.perf_counter()
            os.kill(serving, how)
            if reaped:
                with anyio.fail_after(10):
                    await next(p for p in hosts if p.pid == serving).wait()
                await anyio.sleep(0.01)  # (and Redis has read the end of its connections)
                signalled = time.perf_counter()
            failed = 0
            with anyio.fail_after(30):
                while True:
                    try:
                        who = await caller.client.request("store", "who", deadline=DEADLINE)
                    except (startable.cluster.RequestTimeout, startable.cluster.ServiceUnavailable):
                        failed += 1
                        continue
                    if who != serving:
                        break
                figures["first"] = time.perf_counter() - signalled
                figures["failed"] = failed
                while len(link.instances("store")) > 1:  # noqa: ASYNC110 - a beat changes it
                    await anyio.sleep(0.01)
                figures["gone"] = time.perf_counter() - signalled
                await link.refresh("store")  # (the registry still lists it, unexpired)
                figures["back"] = len(link.instances("store")) - 1
    finally:
        for process in hosts:
            if process.returncode is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
            with anyio.move_on_after(10, shield=True):
                await process.wait()
    return figures


async def redis_restart(server: EmbeddedRedis) -> dict[str, float]:
    """Two hosts; Redis is killed and started again on its port (empty): how soon
    calls across hosts succeed again."""
    store = await start_host(server.url)
    caller = calling_host(server)
    figures: dict[str, float] = {}
    try:
        async with startable.running(caller):
            await caller.client.request("store", "who")
            killed = time.perf_counter()
            await server.restart()
            back = time.perf_counter()
            failed = 0
            with anyio.fail_after(30):
                while True:
                    try:
                        await caller.client.request("store", "who", deadline=DEADLINE)
                        break
                    except (startable.cluster.RequestTimeout, startable.cluster.ServiceUnavailable):
                        failed += 1
                        await anyio.sleep(0.01)
            figures["answered"] = time.perf_counter() - back
            figures["down"] = back - killed
            figures["failed"] = failed
    finally:
        store.kill()
        with anyio.move_on_after(10, shield=True):
            await store.wait()
    return figures


async def measure() -> dict[str, float]:
    figures: dict[str, float] = {}
    async with startable.running(EmbeddedRedis()) as server:
        for label, value in (await redis_restart(server)).items():
            figures[f"redis {label}"] = value
        for how, path, reaped in (
            (signal.SIGKILL, "kill", False),
            (signal.SIGKILL, "reaped", True),
            (signal.SIGSTOP, "stop", False),
        ):
            for label, value in (await one_failover(server, how, reaped)).items():
                figures[f"{path} {label}"] = value
    return figures


def main() -> None:
    options = arguments(__doc__ or "").parse_args()
    rounds = 1 if options.quick else 5
    best = Best()
    worst = Best()
    for _ in range(rounds):
        for label, value in anyio.run(measure, backend="trio").items():
            best.keep(label, value)
            worst.keep(label, value, max)
    ms = 1e3
    rows: list[Row] = [
        (
            "SIGKILL: first call answered by the other host (undelivered path)",
            f"{best['kill first'] * ms:.1f} ms (worst {worst['kill first'] * ms:.1f} ms), "
            f"{worst['kill failed']:.0f} calls failed at most, "
            f"a round trip {best['kill trip'] * ms:.1f} ms",
            f"{worst['kill first'] / TTL:.2f}x the ttl",
            worst["kill first"] < TTL,
        ),
        (
            "SIGKILL: the dead host out of the caller's picks",
            f"{best['kill gone'] * ms:.0f} ms (worst {worst['kill gone'] * ms:.0f} ms)",
            f"{worst['kill gone'] / TTL:.2f}x the ttl",
            worst["kill gone"] <= TTL * 4 / 3 + 0.1,
        ),
        (
            "SIGKILL, from the host's end: first call answered by the other host",
            f"{best['reaped first'] * ms:.1f} ms (worst {worst['reaped first'] * ms:.1f} ms), "
            f"{worst['reaped failed']:.0f} calls failed at most, "
            f"a round trip {best['reaped trip'] * ms:.1f} ms",
            f"{best['reaped first'] / best['reaped trip']:.2f}x a round trip",
            worst["reaped failed"] == 0,
        ),
        (
            "SIGKILL, from the host's end: the dead host out of the caller's picks",
            f"{best['reaped gone'] * ms:.1f} ms (worst {worst['reaped gone'] * ms:.1f} ms), "
            f"back in them before it expired: {worst['reaped back']:.0f} times",
            f"{worst['reaped gone'] / TTL:.2f}x the ttl",
            worst["reaped gone"] < TTL / 10 and worst["reaped back"] == 0,
        ),
        (
            "SIGSTOP: first call answered by the other host (expiry path)",
            f"{best['stop first'] * ms:.0f} ms (worst {worst['stop first'] * ms:.0f} ms), "
            f"{worst['stop failed']:.0f} calls failed at most, deadline {DEADLINE * ms:.0f} ms",
            f"{worst['stop first'] / TTL:.2f}x the ttl",
            worst["stop first"] < TTL,
        ),
        (
            "SIGSTOP: the hung host out of the caller's picks",
            f"{best['stop gone'] * ms:.0f} ms (worst {worst['stop gone'] * ms:.0f} ms), "
            f"ttl {TTL * ms:.0f} ms, beats every ttl/3",
            f"{worst['stop gone'] / TTL:.2f}x the ttl",
            worst["stop gone"] <= TTL * 4 / 3 + 0.1,
        ),
    ]
    rows.append(
        (
            "Redis restarted (empty): from its return to the first call across hosts",
            f"{best['redis answered'] * ms:.0f} ms (worst {worst['redis answered'] * ms:.0f} ms), "
            f"the server down {best['redis down'] * ms:.0f} ms, "
            f"{worst['redis failed']:.0f} calls failed at most",
            f"{worst['redis answered']:.2f} s",
            worst["redis answered"] <= 2.0,
        )
    )
    missed = report("bench/failover.py", rounds, options.quick, rows)
    sys.exit(1 if options.check and missed else 0)


if __name__ == "__main__":
    main()
