"""Services for the CLI tests, run in a child process by ``startable run``."""

from __future__ import annotations

import logging
import os
import sys

import anyio

import startable


class Quick:
    """Starts and waits for a signal."""

    @startable.as_raw_start
    async def _start(self) -> None:
        pass

    @startable.as_raw_stop
    async def _stop(self) -> None:
        pass


class HangingStop:
    """A raw stop that never returns: only a forced stop ends it."""

    @startable.as_raw_start
    async def _start(self) -> None:
        pass

    @startable.as_raw_stop
    async def _stop(self) -> None:
        await anyio.sleep_forever()


class HangingStart:
    @startable.as_raw_start
    async def _start(self) -> None:
        await anyio.sleep_forever()


class FailingStart:
    @startable.as_raw_start
    async def _start(self) -> None:
        raise OSError("port 80 is taken")


class Crashes:
    """Crashes from a background task shortly after starting."""

    @startable.as_raw_start
    async def _start(self) -> None:
        startable.of(self).start_soon(self._crash)

    async def _crash(self) -> None:
        await anyio.sleep(0.05)
        raise RuntimeError("lost the upstream connection")


class CrashesAndStopsSlowly(Crashes):
    """Crashes, then takes a while to clean up (a signal can come meanwhile)."""

    @startable.as_raw_stop
    async def _stop(self) -> None:
        logging.getLogger("cli_targets").warning("cleaning up")
        await anyio.sleep(3)


class FinishesOnItsOwn:
    """A job: stops itself, without a reason, once its work is done."""

    @startable.as_raw_start
    async def _start(self) -> None:
        startable.of(self).start_soon(self._work)

    async def _work(self) -> None:
        await anyio.sleep(0.05)
        startable.of(self).stop_nowait()


def make_quick() -> Quick:
    return Quick()


not_startable = 42


class Named(Quick):
    """A child with a name of its own, as cluster objects have."""

    def __init__(self, name: str) -> None:
        self.name = name


class Parent:
    """Starts two children in its raw start, then waits (or hangs, with HANG set)."""

    def __init__(self) -> None:
        self.children = [Named("first"), Named("second")]

    @startable.as_raw_start
    async def _start(self) -> None:
        for child in self.children:
            await startable.of(child).start(startable.of(self).stop)
        if os.environ.get("HANG"):
            await anyio.sleep_forever()

    @startable.as_raw_stop
    async def _stop(self) -> None:
        for child in reversed(self.children):
            await startable.of(child).stop()


def run_from_python() -> None:
    """`startable.run()` with the logging it sets up: `python -c` runs this."""
    sys.exit(startable.run(Parent(), log_level=os.environ.get("LEVEL", "DEBUG")))
