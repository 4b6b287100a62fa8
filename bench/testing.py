"""How many programs per second startable.testing checks, and where the time goes.

    uv run python bench/testing.py            # full run (about a minute)
    uv run python bench/testing.py --quick    # a smoke run; figures are not meaningful
    uv run python bench/testing.py --check    # exit 1 if the bar is missed

The figure that matters is the first: `check_lifecycle()` end to end, on a
trivial service, with programs of exactly 10 steps, on trio (the default
backend, with its virtual clock). Aim: >= 100 examples per second, so users
can afford thousands in CI. The breakdown runs the two halves alone in the
same process: drawing programs with hypothesis, and running pre-drawn
programs. Each figure is the best of several rounds.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import hypothesis
from _report import NoOp, Row, arguments, report
from hypothesis import given

import startable
import startable.testing as st


class Trivial(NoOp):
    @startable.assert_state()
    async def work(self) -> int:
        return 1


def per_second(examples: int, run: Callable[[], None]) -> float:
    began = time.perf_counter()
    run()
    return examples / (time.perf_counter() - began)


def check(examples: int, backend: st._runner.Backend, min_steps: int) -> float:
    settings = hypothesis.settings(database=None)
    return per_second(
        examples,
        lambda: st.check_lifecycle(
            Trivial,
            backend=backend,
            min_steps=min_steps,
            max_steps=10,
            max_examples=examples,
            settings=settings,
        ),
    )


def generation_only(examples: int) -> float:
    strategy = st.programs(operations=["Trivial.work()"], min_steps=10, max_steps=10)

    @hypothesis.settings(max_examples=examples, database=None, deadline=None)
    @given(strategy)
    def draw(program: st.Program) -> None:
        hypothesis.target(float(len(program.steps)), label="steps")

    return per_second(examples, draw)


def execution_only(examples: int) -> float:
    strategy = st.programs(operations=["Trivial.work()"], min_steps=10, max_steps=10)
    programs = [strategy.example() for _ in range(examples)]
    work = st.Operation("Trivial.work()", lambda t: t.work(), {startable.State.STARTED})

    def run() -> None:
        for program in programs:
            st.run_program(program, Trivial, operations=[work])  # raises on a violation

    return per_second(examples, run)


def main() -> int:
    parser = arguments(__doc__)
    args = parser.parse_args()
    examples, rounds = (30, 1) if args.quick else (1000, 3)

    figures: dict[str, float] = {}

    def best(label: str, measure: Callable[[], float]) -> None:
        figures[label] = max(measure() for _ in range(rounds))

    best("check_lifecycle, 10-step programs, trio", lambda: check(examples, "trio", 10))
    best("check_lifecycle, 1-10-step programs, trio", lambda: check(examples, "trio", 1))
    best("check_lifecycle, 10-step programs, asyncio", lambda: check(examples, "asyncio", 10))
    best("  of which: drawing programs alone", lambda: generation_only(examples))
    best("  of which: running programs alone (trio)", lambda: execution_only(examples))

    main_figure = "check_lifecycle, 10-step programs, trio"
    headline = figures[main_figure]
    rows: list[Row] = [
        (
            label,
            "bar: >= 100 examples/s" if label == main_figure else "",
            f"{value:.0f} examples/s",
            headline >= 100 if label == main_figure else None,
        )
        for label, value in figures.items()
    ]
    missed = report("startable.testing", rounds, args.quick, rows)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
