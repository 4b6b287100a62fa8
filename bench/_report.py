"""What the bench/ scripts share: the no-op service, and the table of figures.

Not a benchmark itself; the scripts import it from their own directory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

import startable

#: (what, the figures behind it, the ratio, met the bar? (None: shown for context))
Row = tuple[str, str, str, "bool | None"]


class NoOp:
    """A service whose raw start and raw stop do nothing."""

    @startable.as_raw_start
    async def _start(self) -> None:
        pass

    @startable.as_raw_stop
    async def _stop(self) -> None:
        pass


class Best(dict[str, float]):
    """The best figure of each label over the rounds: the least, unless told (`better=max`)."""

    def keep(self, label: str, value: float, better: Callable[[float, float], float] = min) -> None:
        self[label] = better(self[label], value) if label in self else value


async def timed(call: Callable[[], Awaitable[object]], times: int) -> float:
    """The median seconds of `times` awaits of `call()`."""
    laps = []
    for _ in range(times):
        start = time.perf_counter()
        await call()
        laps.append(time.perf_counter() - start)
    return statistics.median(laps)


def compile_package() -> None:
    """Write startable's bytecode (`__pycache__`), as an installed package has it.

    Where `PYTHONDONTWRITEBYTECODE` is set (as on this project's machines), an
    editable install is never compiled to bytecode: every child process would
    compile startable's sources again (some 20 ms), which no installed copy
    does. The figures are about startable as users run it.
    """
    import compileall
    from pathlib import Path

    compileall.compile_dir(Path(startable.__file__).parent, quiet=2)


def arguments(doc: str) -> argparse.ArgumentParser:
    """The options every script takes (`--quick`, `--check`); add more, then parse.

    Every script calls it first, so the package's bytecode is written first too
    (`compile_package`).
    """
    compile_package()
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--check", action="store_true", help="exit 1 if a bar is missed")
    return parser


def report(title: str, rounds: int, quick: bool, rows: Sequence[Row]) -> bool:
    """Print the figures as a table; return whether a bar was missed."""
    print(f"{title}, Python {sys.version.split()[0]}, best of {rounds} rounds")
    if quick:
        print("(--quick: sizes too small for the figures to mean anything)")
    width = max(len(row[0]) for row in rows)
    ratio_width = max(len(row[2]) for row in rows)
    for name, detail, ratio, ok in rows:
        verdict = "" if ok is None else "meets bar" if ok else "MISSES BAR"
        print(f"  {name:<{width}}  {ratio:<{ratio_width}}  {verdict:<10} {detail}")
    return any(row[3] is False for row in rows)
