"""A spontaneous stop: a service that fails stops itself, with the error.

The watcher's background task finds the feed broken and raises; the
service stops with that error as reason, its parent stops with it in the same
step, and ``running()`` cancels its body and raises the reason. The service
does not decide what the error means: whoever started it does.
"""

from __future__ import annotations

import anyio

import startable


class FeedBroken(Exception):
    pass


class Watcher:
    @startable.as_raw_start
    async def _start(self) -> None:
        startable.of(self).start_soon(self._watch)

    async def _watch(self) -> None:
        await anyio.sleep(0.05)
        raise FeedBroken("the upstream feed closed")


class Dashboard:
    def __init__(self) -> None:
        self.watcher = Watcher()

    @startable.as_raw_start
    async def _start(self) -> None:
        await startable.of(self.watcher).start(startable.of(self).stop)

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        print(f"dashboard: stopping because {err!r}")
        await startable.of(self.watcher).stop()


async def main() -> None:
    try:
        async with startable.running(Dashboard()):
            await anyio.sleep_forever()  # cancelled when the dashboard stops
    except FeedBroken as exc:
        print(f"main: the dashboard stopped on its own: {exc}")


if __name__ == "__main__":
    anyio.run(main, backend="trio")
