"""Finding a lifecycle race with startable.testing, and checking the fix.

`BuggyCounter.increment()` is guarded, so it only *begins* while the
counter is STARTED. But it awaits in the middle (a round trip to storage),
and a stop that arrives meanwhile tears the storage down under it. The
checker finds that interleaving, shrinks it to a few steps, and prints them.

`Counter` fixes it the usual way: the raw stop waits for the calls in flight
to finish before it tears anything down.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import hypothesis

import startable
import startable.testing

# The same search on every run of this example (and of its test): without
# `derandomize`, each run explores different programs, which is what you
# want in your own suite.
SEARCH = hypothesis.settings(derandomize=True, database=None, max_examples=2000)


class BuggyCounter:
    def __init__(self) -> None:
        self.storage: dict[str, int] | None = None

    @startable.as_raw_start
    async def _open(self) -> None:
        self.storage = {}

    @startable.as_raw_stop
    async def _close(self) -> None:
        self.storage = None

    @startable.assert_state()
    async def increment(self, key: str = "hits") -> int:
        assert self.storage is not None
        value = self.storage.get(key, 0) + 1
        await anyio.lowlevel.checkpoint()  # a round trip to storage
        self.storage[key] = value  # TypeError if a stop ran meanwhile
        return value


class Counter(BuggyCounter):
    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.drained: anyio.Event | None = None

    async def _close(self) -> None:  # overrides the raw stop
        if self.in_flight:
            self.drained = anyio.Event()
            await self.drained.wait()  # let calls in flight finish first
        self.storage = None

    @startable.assert_state()
    async def increment(self, key: str = "hits") -> int:
        self.in_flight += 1
        try:
            return await BuggyCounter.increment.__wrapped__(self, key)  # the unguarded body
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self.drained is not None:
                self.drained.set()


def main() -> None:
    try:
        startable.testing.check_lifecycle(BuggyCounter, settings=SEARCH)
    except startable.testing.LifecycleViolation as violation:
        print("race found in BuggyCounter:")
        print(violation.detail)
        print(violation.program.describe(["BuggyCounter"]))
    else:
        raise SystemExit("the race in BuggyCounter was not found")
    startable.testing.check_lifecycle(Counter, settings=SEARCH)
    print(f"no race found in Counter after {SEARCH.max_examples} programs")


if __name__ == "__main__":
    main()
