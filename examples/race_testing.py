"""Finding a lifecycle race with startable.testing, and checking the fix.

`BuggyCounter.increment()` is guarded, so it only *begins* while the
counter is STARTED. But it awaits in the middle (a round trip to storage),
and a stop that arrives meanwhile tears the storage down under it. The
checker finds that interleaving, shrinks it to a few steps, and prints them.

`Counter` fixes it with one word: its guard drains, so a stop waits for the
calls in flight to finish (each for at most the drain timeout) before it runs
the raw stop.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import hypothesis

import startable
import startable.testing

# The same search on every run of this example (and of its test), whatever
# PYTHONHASHSEED is: without `derandomize`, each run explores different
# programs, which is what you want in your own suite. The number of programs
# is the default, 1000.
SEARCH = hypothesis.settings(derandomize=True, database=None)


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
    @startable.assert_state(drain=True)  # a stop lets calls in flight finish first
    async def increment(self, key: str = "hits") -> int:
        return await BuggyCounter.increment.__wrapped__(self, key)  # the same body


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
    print("no race found in Counter after 1000 programs")


if __name__ == "__main__":
    main()
