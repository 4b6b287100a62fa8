"""Benchmarks of ServicesManager, each against a baseline measured in the same run.

    uv run python bench/manager.py            # full run (two to three minutes)
    uv run python bench/manager.py --quick    # a smoke run; figures are not meaningful
    uv run python bench/manager.py --check    # exit 1 if a bar is missed

1. Start all + stop all of an in-process dependency graph of no-op services,
   1,000 and 10,000 of them (each depends on up to two random earlier ones,
   seeded). Bar: time(10k) / time(1k) <= 11, that is linear; time(1k) is
   the mean of ten managers started and stopped in a row, so that both
   timed parts last about as long, and each timing runs in a new
   interpreter, so that none inherits another's heap. Measured with the
   cyclic garbage collector paused during the timed part (the bar is about
   startable's own work), and with it running, for context: CPython's
   collections grow with the number of live objects, whoever made them.
   For context too, the floor any library on anyio meets: as many plain
   tasks, each making three checkpoints, then as many making two, in one
   task group each (on this project's 2-core machines 10k of them take
   12x to 13x as long as 1k with the collector paused, and 17x to 18x with
   it running: 10k tasks' frames no longer fit the caches).
2. 1,000 independent services whose raw start sleeps 20 ms: the time until
   all are STARTED, against the sum of their sleeps (20 s, what starting
   them one after the other would take). Bar: <= 10%. For context, against
   the same sleeps in one plain task group (the floor).
3. A request between two service processes, routed by the manager (caller
   -> manager -> callee -> manager -> caller), against the same request on a
   direct port between the two processes (the same client code at both
   ends, no manager in the middle), one at a time, measured in the calling
   process (bench/_plane.py); and both against the floor of any async
   remote: a frame as large as the request, echoed by a child with trio at
   both ends (bench/_echo.py). Bars: direct <= 2x the echo; routed <= 1.5x
   direct and <= 2.5x the echo. For context, routed against its floor: a
   routed request makes the two hops of a direct one and two more (caller
   to manager, manager to caller), so it cannot take less than the same
   two processes joined through a third one of trio that only copies bytes
   both ways (bench/_echo.py's `RELAY_CHILD`): as many processes and hops
   as the manager's, and no work on a frame, the least any router on anyio
   costs.
4. The same requests, 64 in flight from one caller. Bar: routed >= 15,000/s.

Figures are the best of several rounds, on trio.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import msgspec
from _echo import ASYNC_ECHO_CHILD, RELAY_CHILD, end, raw_echo_round_trip, spawn
from _report import Best, NoOp, Row, arguments, report

import startable
from startable.cluster import (
    OutputLine,
    ProcessOptions,
    ServiceContainer,
    ServicesManager,
    ServiceSpec,
)
from startable.cluster._data.contract import DEFAULT_DEADLINE, Call
from startable.cluster._process.remote import ENV_DATA_PORT

ROOT = Path(__file__).resolve().parent.parent


class Sleepy:
    @startable.as_raw_start
    async def _start(self) -> None:
        await anyio.sleep(0.02)


def graph(size: int, seed: int = 7) -> list[ServiceSpec]:
    rng = random.Random(seed)
    specs = []
    for i in range(size):
        depends = {f"s{rng.randrange(i)}" for _ in range(2)} if i else set()
        specs.append(ServiceSpec(name=f"s{i}", factory=NoOp, depends_on=sorted(depends)))
    return specs


async def start_stop(specs: list[ServiceSpec], collect: bool, times: int) -> float:
    """Seconds to start all and stop all, the mean of `times` managers in a row."""
    total = 0.0
    for _ in range(times):
        manager = ServicesManager(specs)
        async with startable.open_owner():
            gc.collect()
            if not collect:
                gc.disable()
            try:
                began = time.perf_counter()
                await startable.of(manager).start()
                await startable.of(manager).stop()
                total += time.perf_counter() - began
            finally:
                gc.enable()
    return total / times


async def plain_tasks(size: int, collect: bool, times: int) -> float:
    """The runtime's floor of `start_stop`: as many plain tasks, no startable.

    One task group of `size` tasks, three checkpoints each (for the starts),
    then another, two checkpoints each (for the stops); the mean of `times`.
    """

    async def checkpoints(count: int) -> None:
        for _ in range(count):
            await anyio.lowlevel.checkpoint()

    total = 0.0
    for _ in range(times):
        gc.collect()
        if not collect:
            gc.disable()
        try:
            began = time.perf_counter()
            for count in (3, 2):
                async with anyio.create_task_group() as group:
                    for _ in range(size):
                        group.start_soon(checkpoints, count)
            total += time.perf_counter() - began
        finally:
            gc.enable()
    return total / times


def in_fresh_process(size: int, collect: bool, times: int, plain: bool = False) -> float:
    """`start_stop` of a graph of `size`, `times` in a row, timed in a new interpreter.

    Each timing gets a heap of its own: one left large and fragmented by an
    earlier, larger run slows every later one, whatever its size. The small
    graph is timed as many times in a row as make one large one, so that
    both timed parts last as long and see as much of the machine's noise
    (the minimum of short runs is luckier). With `plain`, `plain_tasks`
    instead.
    """
    what = "--tasks" if plain else "--graph"
    argv = [sys.executable, __file__, what, str(size), str(int(collect)), str(times)]
    return float(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)


async def sleep_together(count: int) -> float:
    """The floor: the same sleeps in one plain task group, no services."""
    began = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(anyio.sleep, 0.02)
    return time.perf_counter() - began


async def start_sleepy(count: int) -> float:
    manager = ServicesManager(ServiceSpec(name=f"s{i}", factory=Sleepy) for i in range(count))
    async with startable.open_owner():
        began = time.perf_counter()
        await startable.of(manager).start()
        elapsed = time.perf_counter() - began
        await startable.of(manager).stop()
        return elapsed


#: The frame of one of bench/_plane.py's requests, as the caller's port sends it.
REQUEST = msgspec.msgpack.encode(Call(1, "echo", "echo", (b"x" * 64,), {}, DEFAULT_DEADLINE))


def plane_env(sequential: int, total: int) -> dict[str, str]:
    return {
        "BENCH_SEQUENTIAL": str(sequential),
        "BENCH_TOTAL": str(total),
        "BENCH_IN_FLIGHT": "64",
    }


class Result:
    """The caller's line of figures, when it comes."""

    def __init__(self) -> None:
        self.figures: dict[str, float] = {}
        self.done = anyio.Event()

    def __call__(self, line: OutputLine) -> None:
        if line.text.startswith("RESULT "):
            self.figures = json.loads(line.text.removeprefix("RESULT "))
            self.done.set()


OPTIONS = ProcessOptions(resources_interval=0)


async def routed(env: dict[str, str]) -> dict[str, float]:
    result = Result()
    manager = ServicesManager(
        [
            ServiceSpec(name="echo", entry="bench._plane:Echo", cwd=str(ROOT)),
            ServiceSpec(
                name="caller",
                entry="bench._plane:Caller",
                depends_on=["echo"],
                env=env,
                cwd=str(ROOT),
                container_options=OPTIONS,
                on_output=result,
            ),
        ]
    )
    with anyio.fail_after(300):
        async with startable.running(manager):
            await result.done.wait()
    return result.figures


async def direct(env: dict[str, str], relay: bool = False) -> dict[str, float]:
    """The two processes joined by one socketpair: each one's data port is the other's.

    With `relay`, joined through a third process instead, one of trio that
    copies bytes both ways as they come (bench/_echo.py's `RELAY_CHILD`): the
    floor of a request routed on anyio, with as many processes and hops as
    the manager's and no work done on a frame.
    """
    result = Result()
    copier = None
    if relay:
        (one, near), (two, far) = socket.socketpair(), socket.socketpair()
        copier = spawn(RELAY_CHILD, near, far)
        near.close()
        far.close()
    else:
        one, two = socket.socketpair()
    echo = ServiceContainer("bench._plane:Echo", env={"STARTABLE_SERVICE": "echo"}, cwd=str(ROOT))
    caller = ServiceContainer(
        "bench._plane:Caller",
        env={**env, "STARTABLE_SERVICE": "caller"},
        cwd=str(ROOT),
        on_output=result,
        options=OPTIONS,
    )
    echo.hand_over(ENV_DATA_PORT, one)
    caller.hand_over(ENV_DATA_PORT, two)
    with anyio.fail_after(300):
        # Started by hand: each is the other's whole data plane, so whichever stops
        # first cuts the other's link, which then stops on its own (with a reason).
        async with startable.open_owner():
            await startable.of(echo).start()
            await startable.of(caller).start()
            await result.done.wait()
    if copier is not None:
        end(copier)  # (its sockets closed with the processes)
    return result.figures


async def relayed(env: dict[str, str]) -> dict[str, float]:
    """`direct`, through a byte relay."""
    return await direct(env, relay=True)


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--graph", nargs=3, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tasks", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.graph:  # one timing, in a process of its own (see in_fresh_process)
        size, collect, times = args.graph
        print(anyio.run(start_stop, graph(size), bool(collect), times, backend="trio"))
        return 0
    if args.tasks:
        size, collect, times = args.tasks
        print(anyio.run(plain_tasks, size, bool(collect), times, backend="trio"))
        return 0
    rounds, small, large, sleepers = (1, 20, 200, 50) if args.quick else (3, 1000, 10000, 1000)
    env = plane_env(*((100, 640) if args.quick else (3000, 12800)))
    best = Best()
    for _ in range(rounds):
        for size in (small, large):
            for collect in (False, True):
                for plain in (False, True):
                    key = f"{'tasks' if plain else 'graph'} {size}{' gc' * collect}"
                    best.keep(key, in_fresh_process(size, collect, large // size, plain))
        best.keep("sleepy", anyio.run(start_sleepy, sleepers, backend="trio"))
        best.keep("floor", anyio.run(sleep_together, sleepers, backend="trio"))
        for way in (direct, relayed, routed):
            figures = anyio.run(way, env, backend="trio")
            name = way.__name__
            best.keep(f"{name} rtt", figures["round_trip"])
            best.keep(f"{name} rps", figures["throughput"], better=max)
        trips = int(env["BENCH_SEQUENTIAL"])
        echo = anyio.run(raw_echo_round_trip, trips, ASYNC_ECHO_CHILD, REQUEST, backend="trio")
        best.keep("echo rtt", echo)

    ratio = best[f"graph {large}"] / best[f"graph {small}"]
    ratio_gc = best[f"graph {large} gc"] / best[f"graph {small} gc"]
    floor = best[f"tasks {large}"] / best[f"tasks {small}"]
    floor_gc = best[f"tasks {large} gc"] / best[f"tasks {small} gc"]
    sequential = sleepers * 0.02
    share = best["sleepy"] / sequential
    large_ms, small_ms = best[f"graph {large}"] * 1000, best[f"graph {small}"] * 1000
    rows: list[Row] = [
        (
            f"start+stop graph, {large} vs {small} services",
            f"{large_ms:.0f} ms vs {small_ms:.0f} ms; {large_ms / large * 1000:.0f} µs per service",
            f"{ratio:.2f}x (linear: {large / small:.0f}x)",
            ratio <= 1.1 * large / small,
        ),
        (
            "  (for context) the same, collector running",
            f"{best[f'graph {large} gc'] * 1000:.0f} ms vs "
            f"{best[f'graph {small} gc'] * 1000:.0f} ms",
            f"{ratio_gc:.2f}x",
            None,
        ),
        (
            f"  (for context) the floor: {large} vs {small} plain tasks",
            f"{floor:.2f}x paused ({best[f'tasks {large}'] * 1000:.0f} ms vs "
            f"{best[f'tasks {small}'] * 1000:.1f} ms), {floor_gc:.2f}x running; startable's "
            f"ratios are {ratio / floor:.2f}x and {ratio_gc / floor_gc:.2f}x these",
            f"{floor:.2f}x",
            None,
        ),
        (
            f"{sleepers} independent 20 ms starts",
            f"{best['sleepy'] * 1000:.0f} ms vs {sequential * 1000:.0f} ms",
            f"{share:.1%} of sequential",
            share <= 0.10,
        ),
        (
            "  (for context) the same sleeps in a plain task group",
            f"{best['sleepy'] * 1000:.0f} ms vs {best['floor'] * 1000:.0f} ms; "
            f"{(best['sleepy'] - best['floor']) / sleepers * 1e6:.0f} µs per service",
            f"{best['sleepy'] / best['floor']:.2f}x",
            None,
        ),
    ]
    routed_us, direct_us, echo_us, relayed_us = (
        best[f"{way} rtt"] * 1e6 for way in ("routed", "direct", "echo", "relayed")
    )
    rows += [
        (
            "request round trip, direct vs the async echo",
            f"{direct_us:.0f} µs vs {echo_us:.0f} µs",
            f"{direct_us / echo_us:.2f}x",
            direct_us / echo_us <= 2,
        ),
        (
            "request round trip, routed vs direct",
            f"{routed_us:.0f} µs vs {direct_us:.0f} µs",
            f"{routed_us / direct_us:.2f}x",
            routed_us / direct_us <= 1.5,
        ),
        (
            "request round trip, routed vs the async echo",
            f"{routed_us:.0f} µs vs {echo_us:.0f} µs",
            f"{routed_us / echo_us:.2f}x",
            routed_us / echo_us <= 2.5,
        ),
        (
            "  (for context) routed vs its floor: direct through a byte relay",
            f"{routed_us:.0f} µs vs {relayed_us:.0f} µs: the same two processes joined "
            f"through a third that only copies bytes ({relayed_us / direct_us:.2f}x direct, "
            f"{relayed_us / echo_us:.2f}x the echo); the manager's own share "
            f"{routed_us - relayed_us:.0f} µs",
            f"{routed_us / relayed_us:.2f}x",
            None,
        ),
        (
            "throughput, 64 in flight, routed",
            f"{best['routed rps']:,.0f}/s (direct {best['direct rps']:,.0f}/s)",
            f"{best['routed rps'] / 15_000:.2f}x the bar of 15,000/s",
            best["routed rps"] >= 15_000,
        ),
    ]
    missed = report("startable.cluster.ServicesManager", rounds, args.quick, rows)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
