"""Background tasks: they live from STARTING to the end of STOPPING.

``start_task`` waits until the task reports it is ready (here: a ticket
counter that hands out its first number); ``start_soon`` just starts one.
Both are cancelled and awaited after the raw stop, before STOPPED.
"""

from __future__ import annotations

import anyio
import anyio.abc

import startable


class Counter:
    def __init__(self) -> None:
        self.first_ticket: int | None = None
        self.send, self.receive = anyio.create_memory_object_stream[int](0)
        self.issued: list[int] = []
        self.three_issued = anyio.Event()

    @startable.as_raw_start
    async def _start(self) -> None:
        self.first_ticket = await startable.of(self).start_task(self._issue)
        startable.of(self).start_soon(self._record)

    async def _issue(self, *, task_status: anyio.abc.TaskStatus[int]) -> None:
        number = 100
        async with self.send:  # each task owns, and closes, its end of the stream
            task_status.started(number)
            while True:
                number += 1
                await self.send.send(number)

    async def _record(self) -> None:
        async with self.receive:
            async for number in self.receive:
                self.issued.append(number)
                if len(self.issued) == 3:
                    self.three_issued.set()

    @startable.as_raw_stop
    async def _stop(self) -> None:
        print("raw stop; background tasks alive:", startable.of(self).statistics().tasks)


async def main() -> None:
    counter = Counter()
    async with startable.running(counter):
        print("first ticket:", counter.first_ticket)
        await counter.three_issued.wait()
        print("issued:", counter.issued[:3])
    print("after the stop; background tasks alive:", startable.of(counter).statistics().tasks)


if __name__ == "__main__":
    anyio.run(main, backend="trio")
