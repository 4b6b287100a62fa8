from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

# Tests assert behaviour, not timing: no example fails for taking long on a busy machine.
settings.register_profile("startable", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("startable")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Write startable's bytecode once, so that the child processes the tests start
    read it instead of compiling the sources each (where `PYTHONDONTWRITEBYTECODE`
    is set, nothing else writes it for an editable install)."""
    import compileall
    from pathlib import Path

    import startable

    compileall.compile_dir(Path(startable.__file__).parent, quiet=2)


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _spawns_only_if_marked(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that is not marked `processes` may not start one: the fast suite stays fast."""
    if request.node.get_closest_marker("processes") is not None:
        yield
        return
    real = subprocess.Popen.__init__

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{request.node.nodeid} starts a process: mark it `processes`")

    subprocess.Popen.__init__ = refuse  # type: ignore[assignment,method-assign]
    try:
        yield
    finally:
        subprocess.Popen.__init__ = real  # type: ignore[method-assign]
