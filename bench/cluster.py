"""Benchmarks of the process layer, each against a baseline measured in the same run.

    uv run python bench/cluster.py            # full run (a few minutes)
    uv run python bench/cluster.py --quick    # a smoke run; figures are not meaningful
    uv run python bench/cluster.py --check    # exit 1 if a bar is missed

1. Spawn to STARTED, for 1 and for 16 containers running a no-op service,
   against launching as many bare `python -c "import anyio, trio"` processes
   (until they have run). Bar: <= 1.5x. Also a pool of 8 (cold, bar <= 1.5x
   of 8 bare launches; and forked from its zygote, `preload`, bar <= 0.5x of
   the cold pool) and a refork.
2. A request/response round trip controller <-> remote over the control
   port (`ServiceController.ping`), against a raw socketpair echo with the
   same framing (an async parent on the same backend, a blocking child that
   only echoes frames), and against `multiprocessing.Pipe` (send and receive
   of the same bytes, parent and child blocking). Bar: <= 2x the raw echo,
   and faster than multiprocessing.Pipe. For context it also prints the
   same echo with trio at both ends: the floor for any async remote; and
   that echo read by a task of its own that wakes the sender (a controller
   must always be reading: its remote reports state and resources unasked),
   the floor of a control port's shape.
3. RSS of an idle remote, against the bare interpreter with anyio and trio
   imported. Bar: <= 1.3x.
4. What a child imports before it runs its entry (`python -X importtime`,
   the sum of the top-level modules' cumulative times), against importing
   anyio and trio alone. For context: where the rest of a spawn goes.

Figures are the best of several rounds, interleaved.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import anyio
import psutil
from _echo import ASYNC_ECHO_CHILD, raw_echo_round_trip
from _report import Best, Row, arguments, report

import startable
from startable.cluster import (
    ProcessOptions,
    RestartPolicy,
    ServiceContainer,
    ServicesManager,
    ServiceSpec,
)

ROOT = Path(__file__).resolve().parent.parent
#: No resource samples: a benchmark measures the start and the stop alone.
QUIET = ProcessOptions(resources_interval=0)
NOOP_CODE = (
    "import startable\n"
    "class NoOp:\n"
    "    @startable.as_raw_start\n"
    "    async def _start(self):\n"
    "        pass\n"
)
BARE = [sys.executable, "-c", "import anyio, trio"]


# -- spawn -----------------------------------------------------------------------


async def spawn_containers(count: int) -> float:
    containers = [ServiceContainer("NoOp", code=NOOP_CODE, options=QUIET) for _ in range(count)]
    async with startable.open_owner():
        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for container in containers:
                tg.start_soon(startable.of(container).start)
        elapsed = time.perf_counter() - began
        for container in containers:
            await startable.of(container).stop()
    return elapsed


def pool_spec(replicas: int, preload: bool = False) -> ServiceSpec:
    return ServiceSpec(
        name="pool",
        entry="NoOp",
        code=NOOP_CODE,
        replicas=replicas,
        preload=preload,
        container_options=QUIET,
        restart=RestartPolicy(mode="always", backoff=0, max_backoff=0, intensity=10_000),
    )


async def spawn_pool(replicas: int, preload: bool = False) -> float:
    """Seconds from the start of a manager to its pool of `replicas` STARTED
    (with `preload`, its zygote started first)."""
    manager = ServicesManager([pool_spec(replicas, preload)])
    async with startable.open_owner():
        began = time.perf_counter()
        await startable.of(manager).start()
        elapsed = time.perf_counter() - began
        await startable.of(manager).stop()
    return elapsed


async def reforks(times: int) -> list[float]:
    """Seconds from a SIGKILL of a replica to its replacement STARTED, `times` over."""
    manager = ServicesManager([pool_spec(2)])
    found: list[float] = []
    async with startable.running(manager):
        replica = manager["pool"].runner.replicas[0]  # type: ignore[attr-defined]
        lifecycle = startable.of(replica)
        for _ in range(times):
            victim = replica.pid
            began = time.perf_counter()
            os.kill(victim, signal.SIGKILL)
            await lifecycle.wait_state(startable.State.STOPPING, startable.State.STOPPED)
            await lifecycle.wait_state(startable.State.STARTED)
            found.append(time.perf_counter() - began)
    return found


def spawn_bare(count: int) -> float:
    began = time.perf_counter()
    processes = [subprocess.Popen(BARE) for _ in range(count)]
    for process in processes:
        process.wait()
    return time.perf_counter() - began


# -- round trips -------------------------------------------------------------------


async def port_round_trip(n: int) -> float:
    container = ServiceContainer("NoOp", code=NOOP_CODE, options=QUIET)
    async with startable.running(container):
        controller = container.controller
        assert controller is not None
        for _ in range(50):
            await controller.ping()
        began = time.perf_counter()
        for _ in range(n):
            await controller.ping()
        return (time.perf_counter() - began) / n


def _pipe_echo(connection: multiprocessing.connection.Connection) -> None:
    while True:
        try:
            connection.send_bytes(connection.recv_bytes())
        except EOFError:
            return


def pipe_round_trip(n: int) -> float:
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.get_context("spawn").Process(target=_pipe_echo, args=(theirs,))
    child.start()
    payload = bytes(16)
    try:
        for _ in range(50):
            ours.send_bytes(payload)
            if not ours.poll(30):  # the child failed to start: do not wait forever
                raise RuntimeError("the multiprocessing.Pipe echo child does not answer")
            ours.recv_bytes()
        began = time.perf_counter()
        for _ in range(n):
            ours.send_bytes(payload)
            ours.recv_bytes()
        return (time.perf_counter() - began) / n
    finally:
        ours.close()
        child.join(30)  # it returns once the pipe is closed
        if child.is_alive():
            child.kill()
            child.join()


# -- imports ---------------------------------------------------------------------

#: What the remote imports before it loads the entry (`startable.cluster._child` runs it).
CHILD_IMPORT = "import startable.cluster._process.remote"


def import_time(statement: str) -> float:
    """Seconds `python -X importtime -c statement` spends importing, all modules counted once."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        check=True,
    )
    total = 0
    for line in done.stderr.splitlines():
        # "import time: self [us] | cumulative | imported package", nesting by indentation
        fields = line.removeprefix("import time:").split("|")
        if len(fields) == 3 and fields[1].strip().isdigit() and not fields[2].startswith("  "):
            total += int(fields[1])
    return total / 1e6


# -- memory ----------------------------------------------------------------------


async def remote_rss() -> int:
    container = ServiceContainer("NoOp", code=NOOP_CODE, options=QUIET)
    async with startable.running(container):
        await anyio.sleep(0.5)  # idle
        assert container.pid is not None
        return int(psutil.Process(container.pid).memory_info().rss)


def bare_rss() -> int:
    process = subprocess.Popen(
        [sys.executable, "-c", "import anyio, trio, sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)  # let it import: this is a benchmark, not a test
        return int(psutil.Process(process.pid).memory_info().rss)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait()


def main() -> int:
    parser = arguments(__doc__)
    args = parser.parse_args()
    rounds, trips = (1, 50) if args.quick else (5, 2000)
    os.chdir(ROOT)

    figures = Best()
    keep = figures.keep
    refork_times: list[float] = []

    for _ in range(rounds):
        for count in (1, 16):
            keep(f"spawn {count} containers", anyio.run(spawn_containers, count, backend="trio"))
            keep(f"spawn {count} bare", spawn_bare(count))
        keep("spawn a pool of 8", anyio.run(spawn_pool, 8, backend="trio"))
        keep("spawn a preloaded pool of 8", anyio.run(spawn_pool, 8, True, backend="trio"))
        keep("spawn 8 bare", spawn_bare(8))
        refork_times.extend(anyio.run(reforks, 5 if args.quick else 20, backend="trio"))
        keep("port round trip", anyio.run(port_round_trip, trips, backend="trio"))
        keep("raw echo round trip", anyio.run(raw_echo_round_trip, trips, backend="trio"))
        keep(
            "async echo round trip",
            anyio.run(raw_echo_round_trip, trips, ASYNC_ECHO_CHILD, backend="trio"),
        )
        keep(
            "async echo read elsewhere",
            anyio.run(
                functools.partial(raw_echo_round_trip, reader_task=True),
                trips,
                ASYNC_ECHO_CHILD,
                backend="trio",
            ),
        )
        keep("multiprocessing.Pipe round trip", pipe_round_trip(trips))
        keep("remote rss", anyio.run(remote_rss, backend="trio"))
        keep("bare rss", float(bare_rss()))
        keep("child imports", import_time(CHILD_IMPORT))
        keep("anyio and trio imports", import_time("import anyio, trio"))

    rows: list[Row] = []
    for count in (1, 16):
        ours, bare = figures[f"spawn {count} containers"], figures[f"spawn {count} bare"]
        rows.append(
            (
                f"spawn to STARTED, {count} container{'s' * (count > 1)}",
                f"{ours * 1000:.0f} ms vs bare python {bare * 1000:.0f} ms",
                f"{ours / bare:.2f}x",
                ours / bare <= 1.5,
            )
        )
    ours, bare = figures["spawn a pool of 8"], figures["spawn 8 bare"]
    rows.append(
        (
            "spawn to STARTED, a pool of 8 replicas",
            f"{ours * 1000:.0f} ms vs 8 bare pythons {bare * 1000:.0f} ms",
            f"{ours / bare:.2f}x",
            ours / bare <= 1.5,
        )
    )
    preloaded = figures["spawn a preloaded pool of 8"]
    rows.append(
        (
            "spawn to STARTED, a pool of 8 forked from its zygote",
            f"{preloaded * 1000:.0f} ms (the zygote's start included) vs cold {ours * 1000:.0f} ms",
            f"{preloaded / ours:.2f}x",
            preloaded / ours <= 0.5,
        )
    )
    refork_times.sort()
    median = statistics.median(refork_times)
    p99 = refork_times[min(len(refork_times) - 1, int(len(refork_times) * 0.99))]
    rows.append(
        (
            "  (for context) refork: SIGKILL to STARTED",
            f"median {median * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms "
            f"({len(refork_times)} kills); one bare python {figures['spawn 1 bare'] * 1000:.0f} ms",
            f"{median / figures['spawn 1 bare']:.2f}x",
            None,
        )
    )
    port, echo, floor, pipe = (
        figures["port round trip"],
        figures["raw echo round trip"],
        figures["async echo round trip"],
        figures["multiprocessing.Pipe round trip"],
    )
    rows.append(
        (
            "round trip over the control port",
            f"{port * 1e6:.0f} µs vs raw echo {echo * 1e6:.0f} µs, mp.Pipe {pipe * 1e6:.0f} µs",
            f"{port / echo:.2f}x echo, {port / pipe:.2f}x Pipe",
            port / echo <= 2 and port < pipe,
        )
    )
    rows.append(
        (
            "  (for context) async echo: trio both ends",
            f"{floor * 1e6:.0f} µs, {floor / echo:.2f}x the blocking echo",
            f"ours {port / floor:.2f}x it",
            None,
        )
    )
    elsewhere = figures["async echo read elsewhere"]
    rows.append(
        (
            "  (for context) the same, read by a task of its own",
            f"{elsewhere * 1e6:.0f} µs, {elsewhere / floor:.2f}x the async echo: the floor "
            "of a port whose remote also speaks unasked (one task always reads)",
            f"ours {port / elsewhere:.2f}x it",
            None,
        )
    )
    remote, bare_memory = figures["remote rss"], figures["bare rss"]
    rows.append(
        (
            "RSS of an idle remote",
            f"{remote / 2**20:.1f} MiB vs bare {bare_memory / 2**20:.1f} MiB",
            f"{remote / bare_memory:.2f}x",
            remote / bare_memory <= 1.3,
        )
    )
    child, anyio_trio = figures["child imports"], figures["anyio and trio imports"]
    rows.append(
        (
            "  (for context) a child's imports",
            f"{child * 1000:.0f} ms vs anyio and trio alone {anyio_trio * 1000:.0f} ms",
            f"{child / anyio_trio:.2f}x",
            None,
        )
    )
    missed = report("startable.cluster", rounds, args.quick, rows)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
