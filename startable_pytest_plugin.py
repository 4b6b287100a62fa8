"""The pytest plugin that comes with startable (loaded automatically by pytest).

It adds `--startable-examples N`, which sets how many programs
`startable.testing.check_lifecycle` tries (as `$STARTABLE_EXAMPLES` does),
so a nightly job can search much longer than CI without changing tests.
It is a module of its own, outside the `startable` package, and imports
only the standard library, so it costs nothing to projects that do not use
`startable.testing` (importing `startable` takes about 0.1 s).
"""

from __future__ import annotations

import os
from typing import Any

_VARIABLE = "STARTABLE_EXAMPLES"


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("startable", "startable lifecycle race testing")
    group.addoption(
        "--startable-examples",
        type=int,
        default=None,
        metavar="N",
        help=f"programs each check_lifecycle() tries (default: ${_VARIABLE}, or 200)",
    )


def pytest_configure(config: Any) -> None:
    examples = config.getoption("startable_examples", default=None)
    if examples is not None:
        if examples < 1:
            raise ValueError("--startable-examples must be at least 1")
        os.environ[_VARIABLE] = str(examples)
