"""The pytest plugin that comes with startable (loaded automatically by pytest).

It adds `--startable-examples N`, which sets how many programs
`startable.testing.check_lifecycle` tries (as `$STARTABLE_EXAMPLES` does),
so a nightly job can search much longer than CI without changing tests, and
the `start_service` fixture, which runs services for the length of an async
test. It is a module of its own, outside the `startable` package, and imports
no part of startable until a test uses it, so it costs nothing to projects
that do not (importing `startable` takes about 0.1 s).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

_VARIABLE = "STARTABLE_EXAMPLES"
T = TypeVar("T")


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("startable", "startable lifecycle race testing")
    group.addoption(
        "--startable-examples",
        type=int,
        default=None,
        metavar="N",
        help=f"programs each check_lifecycle() tries (default: ${_VARIABLE}, or 1000)",
    )


def pytest_configure(config: Any) -> None:
    examples = config.getoption("startable_examples", default=None)
    if examples is not None:
        if examples < 1:
            raise ValueError("--startable-examples must be at least 1")
        os.environ[_VARIABLE] = str(examples)


@pytest.fixture
async def start_service(anyio_backend: Any) -> AsyncIterator[Callable[[T], Awaitable[T]]]:
    """Start services for the length of an async test; they are stopped after it.

    `await start_service(obj)` starts `obj` (anything `startable.of` accepts)
    and returns it. When the test ends, the services it started are stopped,
    the last first. If one stopped on its own during the test (a crash, a
    failing background task), the test fails when it is torn down, with that
    service's reason as the error (`StoppedError` if it had none); an error
    while stopping one fails it too. Works on every backend the test's
    `anyio_backend` selects.

    A fixture cannot cancel the test it serves (the test runs in the
    fixture's task, outside its scopes), so a test that waits for a service
    that has stopped is not interrupted: bound its waits with
    `anyio.fail_after`, as every test should.

    Example:
        ```python
        pytestmark = pytest.mark.anyio

        async def test_the_cache_answers(start_service):
            cache = await start_service(Cache())
            assert await cache.get("missing") is None
        ```
    """
    import startable
    from startable._owner import open_root, raise_primary  # the owner block, without its body

    started: list[Any] = []
    on_their_own: list[tuple[Any, BaseException | None]] = []
    tearing_down: list[bool] = []

    async with open_root():

        async def start(obj: T) -> T:
            lifecycle = startable.of(obj)

            def on_stopping(reason: BaseException | None) -> None:
                if not tearing_down:
                    on_their_own.append((lifecycle, reason))

            await lifecycle.start(on_stopping)
            started.append(lifecycle)
            return obj

        yield start
        tearing_down.append(True)
        errors: list[Exception] = []
        for lifecycle in reversed(started):
            try:
                await lifecycle.stop()
            except Exception as exc:
                errors.append(exc)
        primary: BaseException | None = None
        for lifecycle, reason in on_their_own:
            if reason is None:
                reason = startable.StoppedError(f"{lifecycle!r} stopped on its own during the test")
            if primary is None:
                primary = reason
            elif isinstance(reason, Exception):
                errors.insert(0, reason)
        raise_primary(
            primary,
            errors,
            "while start_service stopped the services after this error, this was raised too",
            "errors while start_service stopped the services",
        )
