"""The quick-start service: a heartbeat that ticks until you press Ctrl-C.

Run it with::

    uv run startable run examples/hello.py:Heartbeat

``startable run`` logs each state change; Ctrl-C (or SIGTERM) stops the
service cleanly and the command exits with status 0.
"""

from __future__ import annotations

import logging

import anyio

import startable

log = logging.getLogger("hello")


class Heartbeat:
    """Logs a tick every ``interval`` seconds from a background task."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.ticks = 0

    @startable.as_raw_start
    async def _start(self) -> None:
        startable.of(self).start_soon(self._beat, name="heartbeat")
        log.info("heartbeat every %ss; press Ctrl-C to stop", self.interval)

    async def _beat(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            self.ticks += 1
            log.info("tick %d", self.ticks)

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        log.info("stopping after %d ticks", self.ticks)
