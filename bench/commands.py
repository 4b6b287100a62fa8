"""Benchmarks of `command` services, each against bare process handling measured in the same run.

- start to STARTED of a program ready at its first line (`sh -c 'echo ready;
  exec sleep 60'`, readiness `line`), then its stop by SIGTERM, against
  spawning the same program with `anyio.open_process`, reading its first
  line, and ending it the same way. A `CommandProcess` runs the program
  through a shim (a Python started with `-I -S` that sets the parent-death
  signal and the limits, then execs the program), so the floor is the bare
  cycle plus the shim's own cost, measured here too: running `true` through
  the shim, less running it bare;
- one health check by command (`true`; it runs through the shim too, so that
  a probe dies with the manager), against `anyio.run_process` of the same
  shimmed `true`.

    uv run python bench/commands.py [--quick] [--check]
"""

from __future__ import annotations

import sys

import anyio
from _report import Best, Row, arguments, report, timed

import startable
from startable.cluster import CommandProcess, Readiness
from startable.cluster._process.probes import command_problem
from startable.cluster._process.spawn import program_args

PROGRAM = ["sh", "-c", "echo ready; exec sleep 60"]


async def bare_cycle() -> None:
    process = await anyio.open_process(PROGRAM)
    assert process.stdout is not None
    seen = b""
    while b"\n" not in seen:
        seen += await process.stdout.receive()
    process.terminate()
    await process.wait()
    await process.aclose()


async def shimmed_true() -> None:
    await anyio.run_process(program_args(["true"]))


async def command_cycle() -> None:
    process = CommandProcess(PROGRAM, ready=Readiness(line="^ready"))
    async with startable.running(process):
        pass


async def true_check() -> None:
    problem = await command_problem(["true"])
    assert problem is None, problem


async def bare_true() -> None:
    await anyio.run_process(["true"])


async def measure(times: int) -> dict[str, float]:
    return {
        "bare": await timed(bare_cycle, times),
        "shimmed": await timed(shimmed_true, times),
        "command": await timed(command_cycle, times),
        "check": await timed(true_check, times),
        "true": await timed(bare_true, times),
    }


def main() -> None:
    options = arguments(__doc__ or "").parse_args()
    times, rounds = (3, 1) if options.quick else (40, 3)
    best = Best()
    for _ in range(rounds):
        for backend in ("trio", "asyncio"):
            for label, value in anyio.run(measure, times, backend=backend).items():
                best.keep(f"{backend} {label}", value)
    rows: list[Row] = []
    for backend in ("trio", "asyncio"):
        bare, command = best[f"{backend} bare"], best[f"{backend} command"]
        shim = best[f"{backend} shimmed"] - best[f"{backend} true"]
        floor = bare + shim
        rows.append(
            (
                f"command start to STARTED and stop, {backend}",
                f"{command * 1e3:.1f} ms vs bare {bare * 1e3:.1f} ms + shim {shim * 1e3:.1f} ms"
                f" = {floor * 1e3:.1f} ms",
                f"{command / floor:.2f}x",
                command / floor <= 1.3,
            )
        )
        rows.append(
            (
                f"  the same against the bare cycle alone, {backend}",
                "what the shim (death with the manager, limits) and the rest cost together",
                f"{command / bare:.2f}x",
                None,
            )
        )
        check, shimmed = best[f"{backend} check"], best[f"{backend} shimmed"]
        rows.append(
            (
                f"health check by command (true), {backend}",
                f"{check * 1e3:.2f} ms vs anyio.run_process of it shimmed {shimmed * 1e3:.2f} ms",
                f"{check / shimmed:.2f}x",
                check / shimmed <= 1.5,
            )
        )
    missed = report("bench/commands.py", rounds, options.quick, rows)
    sys.exit(1 if options.check and missed else 0)


if __name__ == "__main__":
    main()
