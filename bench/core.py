"""Benchmarks of the lifecycle core, each against a baseline measured in the same run.

    uv run python bench/core.py            # full run (about a minute)
    uv run python bench/core.py --quick    # a smoke run; figures are not meaningful
    uv run python bench/core.py --check    # exit 1 if a bar is missed
    uv run python bench/core.py --instructions   # + instruction counts (needs valgrind)

Each figure is the best of several interleaved rounds (the minimum is the
estimator least disturbed by other load on the machine); ratios compare
figures from this same run, never from another machine. On a shared or
virtual machine, wall-clock ratios still move by about ten per cent from run
to run; `--instructions` adds the cycle's cost in CPU instructions, counted by
valgrind's callgrind, which does not move with load.

What is measured:

1. A start+stop cycle of a no-op service, a new object each cycle, against
   mode-streaming's ``Service`` (asyncio only) and against two bare coroutine
   calls. Bar: <= 0.5x mode's time. For context, against its floor on each
   backend: two checkpoints, since every `start()` and `stop()` begins with
   one (docs/semantics.md, *Cancellation*).
2. A guarded async method call against the same method unguarded, for an
   empty body and for a body that does one checkpoint (the least an async
   method that yields does). Bar: <= 1.5x. For context, against its floor
   for the empty body: the same method awaited through a plain async
   wrapper (the second coroutine any check made at the await costs).
3. Memory per idle object (tracemalloc): a service object with its lifecycle
   created, against mode's ``Service``. Bar: <= 1 KiB.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import shutil
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
from _report import NoOp, Row, arguments, report

import startable

try:
    from mode import Service as ModeService
except ImportError:  # pragma: no cover - the bench group is not installed
    sys.exit("bench/core.py needs the bench group: uv sync --group bench")


# -- the services under test -------------------------------------------------


class Guarded:
    @startable.assert_state()
    async def empty(self) -> int:
        return 1

    async def empty_unguarded(self) -> int:
        return 1

    async def empty_passed_through(self) -> int:
        """The floor of any check made when the call is awaited: a second coroutine."""
        return await self.empty_unguarded()

    @startable.assert_state()
    async def one_checkpoint(self) -> int:
        await anyio.lowlevel.checkpoint()
        return 1

    async def one_checkpoint_unguarded(self) -> int:
        await anyio.lowlevel.checkpoint()
        return 1


class ModeNoOp(ModeService):  # type: ignore[misc]
    async def on_start(self) -> None:
        pass

    async def on_stop(self) -> None:
        pass


# -- timing ------------------------------------------------------------------


def best(rounds: int, measure: Callable[[], float]) -> float:
    return min(measure() for _ in range(rounds))


async def _cycles_startable(n: int) -> float:
    async with startable.open_owner():
        began = time.perf_counter()
        for _ in range(n):
            obj = NoOp()
            lifecycle = startable.of(obj)
            await lifecycle.start()
            await lifecycle.stop()
        return (time.perf_counter() - began) / n


async def _cycles_bare(n: int) -> float:
    obj = NoOp()
    raw_start, raw_stop = obj._start, obj._stop
    began = time.perf_counter()
    for _ in range(n):
        await raw_start()
        await raw_stop()
    return (time.perf_counter() - began) / n


async def _cycles_checkpoints(n: int) -> float:
    """Two checkpoints: every `start()` and `stop()` begins with one (docs/semantics.md),
    so a cycle can cost no less on its backend."""
    checkpoint = anyio.lowlevel.checkpoint
    began = time.perf_counter()
    for _ in range(n):
        await checkpoint()
        await checkpoint()
    return (time.perf_counter() - began) / n


async def _cycles_mode(n: int) -> float:
    began = time.perf_counter()
    for _ in range(n):
        service = ModeNoOp()
        await service.start()
        await service.stop()
    return (time.perf_counter() - began) / n


async def _calls(n: int, method: Callable[[], Awaitable[Any]]) -> float:
    began = time.perf_counter()
    for _ in range(n):
        await method()
    return (time.perf_counter() - began) / n


async def _guard_pair(n: int, guarded_name: str) -> tuple[float, float, float]:
    """(guarded, unguarded, passed through an unguarded wrapper; 0 if there is none)."""
    obj = Guarded()
    async with startable.running(obj):
        guarded = getattr(obj, guarded_name)
        plain = getattr(obj, f"{guarded_name}_unguarded")
        through = getattr(obj, f"{guarded_name}_passed_through", None)
        await _calls(n // 10, guarded)  # warm up
        floor = await _calls(n, through) if through is not None else 0.0
        return await _calls(n, guarded), await _calls(n, plain), floor


# -- memory ------------------------------------------------------------------


def bytes_per_object(make: Callable[[], object], n: int) -> float:
    keep: list[object] = [None] * n
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        keep[i] = make()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del keep
    gc.collect()
    return (after - before) / n


def _idle_service() -> object:
    obj = NoOp()
    startable.of(obj)
    return obj


# -- instruction counts --------------------------------------------------------

_CYCLES_PROGRAM = """
import asyncio, sys, anyio, startable
from mode import Service

class NoOp:
    @startable.as_raw_start
    async def _start(self): pass
    @startable.as_raw_stop
    async def _stop(self): pass

class ModeNoOp(Service):
    async def on_start(self): pass
    async def on_stop(self): pass

async def ours(n):
    async with startable.open_owner():
        for _ in range(n):
            obj = NoOp()
            lifecycle = startable.of(obj)
            await lifecycle.start()
            await lifecycle.stop()

async def theirs(n):
    for _ in range(n):
        service = ModeNoOp()
        await service.start()
        await service.stop()

kind, n = sys.argv[1], int(sys.argv[2])
if kind == "mode":
    asyncio.run(theirs(n))
else:
    anyio.run(ours, n, backend=kind)
"""


def instructions_per_cycle(kind: str) -> float:
    """CPU instructions of one cycle: the difference of two runs, divided."""

    def count(n: int) -> int:
        result = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                "-c",
                _CYCLES_PROGRAM,
                kind,
                str(n),
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        match = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
        assert match, result.stderr[-500:]
        return int(match.group(1).replace(",", ""))

    return (count(3000) - count(1000)) / 2000


# -- report ------------------------------------------------------------------


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument(
        "--instructions", action="store_true", help="also count instructions with valgrind"
    )
    args = parser.parse_args()
    n_cycles, n_calls, n_objects, rounds = (
        (200, 2_000, 1_000, 2) if args.quick else (5_000, 100_000, 20_000, 7)
    )

    results: dict[str, float] = {}
    for _ in range(rounds):  # interleaved, so drift in machine load hits all alike
        for backend in ("trio", "asyncio"):
            for key, func in (
                ("cycle", _cycles_startable),
                ("bare", _cycles_bare),
                ("checkpoints", _cycles_checkpoints),
            ):
                value = anyio.run(func, n_cycles, backend=backend)
                results[f"{key}/{backend}"] = min(results.get(f"{key}/{backend}", 1e9), value)
        value = asyncio.run(_cycles_mode(n_cycles))
        results["cycle/mode"] = min(results.get("cycle/mode", 1e9), value)
    guard: dict[str, float] = {}
    for _ in range(rounds):
        for backend in ("trio", "asyncio"):
            for body in ("empty", "one_checkpoint"):
                with_guard, without, through = anyio.run(
                    _guard_pair, n_calls, body, backend=backend
                )
                for key, value in (
                    (f"{body}/{backend}/guarded", with_guard),
                    (f"{body}/{backend}/plain", without),
                    (f"{body}/{backend}/through", through),
                ):
                    guard[key] = min(guard.get(key, 1e9), value)
    memory = {
        "startable": min(bytes_per_object(_idle_service, n_objects) for _ in range(3)),
        "object alone": min(bytes_per_object(NoOp, n_objects) for _ in range(3)),
        "mode": min(bytes_per_object(ModeNoOp, n_objects) for _ in range(3)),
    }

    rows: list[Row] = []
    mode = results["cycle/mode"]
    for backend in ("trio", "asyncio"):
        ours = results[f"cycle/{backend}"]
        bare = results[f"bare/{backend}"]
        rows.append(
            (
                f"start+stop cycle ({backend})",
                f"{ours * 1e6:.1f} µs vs mode {mode * 1e6:.1f} µs, bare {bare * 1e6:.2f} µs",
                f"{ours / mode:.2f}x mode, {ours / bare:.0f}x bare",
                ours / mode <= 0.5,
            )
        )
        floor = results[f"checkpoints/{backend}"]
        rows.append(
            (
                f"  (for context) the same against its floor ({backend})",
                f"two checkpoints {floor * 1e6:.1f} µs (a start and a stop each begin with "
                f"one); startable's own work {(ours - floor) * 1e6:.1f} µs",
                f"{ours / floor:.2f}x",
                None,
            )
        )
    for body in ("empty", "one_checkpoint"):
        for backend in ("trio", "asyncio"):
            guarded = guard[f"{body}/{backend}/guarded"]
            plain = guard[f"{body}/{backend}/plain"]
            rows.append(
                (
                    f"guarded call, {body.replace('_', ' ')} body ({backend})",
                    f"{guarded * 1e9:.0f} ns vs {plain * 1e9:.0f} ns "
                    f"(+{(guarded - plain) * 1e9:.0f} ns)",
                    f"{guarded / plain:.2f}x",
                    guarded / plain <= 1.5,
                )
            )
            through = guard[f"{body}/{backend}/through"]
            if through:
                rows.append(
                    (
                        f"  (for context) its floor: an unguarded wrapper ({backend})",
                        f"{through * 1e9:.0f} ns: a second coroutine, the least a check made "
                        f"when the call is awaited costs; the check itself "
                        f"{(guarded - through) * 1e9:.0f} ns",
                        f"{through / plain:.2f}x",
                        None,
                    )
                )
    if args.instructions:
        if shutil.which("valgrind") is None:
            sys.exit("--instructions needs valgrind (apt install valgrind)")
        mode_count = instructions_per_cycle("mode")
        for backend in ("trio", "asyncio"):
            ours_count = instructions_per_cycle(backend)
            rows.append(
                (
                    f"start+stop cycle, instructions ({backend})",
                    f"{ours_count / 1000:.0f}k vs mode {mode_count / 1000:.0f}k instructions",
                    f"{ours_count / mode_count:.2f}x mode",
                    ours_count / mode_count <= 0.5,
                )
            )
    ours_bytes = memory["startable"]
    rows.append(
        (
            "memory per idle object",
            f"{ours_bytes:.0f} B (object alone {memory['object alone']:.0f} B) "
            f"vs mode {memory['mode']:.0f} B",
            f"{ours_bytes / memory['mode']:.2f}x mode",
            ours_bytes <= 1024,
        )
    )

    missed = report(f"startable {startable.__version__}", rounds, args.quick, rows)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
