"""Programs of concurrent lifecycle operations, and the strategies that draw them."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import attrs
from hypothesis import strategies as st

#: Operations every lifecycle supports.
START = "start"  # await start(hook); the hook records when it fires
START_RAISING_HOOK = "start with a raising hook"
START_ASYNC_HOOK = "start with an async hook"
STOP = "stop"  # await stop()
STOP_REASON = "stop with a reason"  # await stop(Reason)
STOP_NOWAIT = "stop_nowait with a reason"  # a callback stopping the service, synchronously
CRASH = "crash a background task"  # start_soon(a task that raises Reason)
TASK = "start a background task"  # start_soon(a task that runs until cancelled)
START_CANCELLED = "start, cancelled"  # await start(), cancelled after `delay` checkpoints
STOP_CANCELLED = "stop, cancelled"  # await stop(), cancelled after `delay` checkpoints

BUILTIN_ACTIONS: tuple[str, ...] = (
    START,
    START_RAISING_HOOK,
    START_ASYNC_HOOK,
    STOP,
    STOP_REASON,
    STOP_NOWAIT,
    CRASH,
    TASK,
    START_CANCELLED,
    STOP_CANCELLED,
)


@attrs.frozen
class Step:
    """One operation of a program.

    Attributes:
        caller: which concurrent caller runs it (callers run their steps in order).
        action: a built-in action or the name of an `Operation`.
        target: index of the lifecycle it applies to (0 is the root).
        delay: checkpoints the caller takes before it, to vary interleavings.
    """

    caller: int
    action: str
    target: int = 0
    delay: int = 0

    def code(self) -> str:
        """This step as Python source (the defaults left out)."""
        extra = "".join(
            f", {name}={value}"
            for name, value in (("target", self.target), ("delay", self.delay))
            if value
        )
        return f"Step({self.caller}, {self.action!r}{extra})"

    def describe(self, targets: Sequence[str]) -> str:
        wait = f" after {self.delay} checkpoint{'s' * (self.delay != 1)}" if self.delay else ""
        if self.action not in BUILTIN_ACTIONS:  # an Operation's name says what it calls
            return f"caller {self.caller}: {self.action}{wait}"
        target = targets[self.target] if self.target < len(targets) else f"#{self.target}"
        return f"caller {self.caller}: {self.action} on {target}{wait}"


@attrs.frozen
class Fault:
    """What happens to one raw start or raw stop call.

    Attributes:
        checkpoints_before: checkpoints taken before the raw hook runs.
        sleep_before: seconds slept before it (virtual time, trio only).
        raise_before: fail instead of running the raw hook at all.
        checkpoints_after: checkpoints taken after it returned.
        raise_after: fail after the raw hook did its work.
        waits_for_itself: first await the lifecycle's own `start()` and
            `stop()` (a raw start) or `stop()` (a raw stop) from inside the
            hook: each must raise `StateError` at once rather than wait for
            itself.
    """

    checkpoints_before: int = 0
    sleep_before: float = 0.0
    raise_before: bool = False
    checkpoints_after: int = 0
    raise_after: bool = False
    waits_for_itself: bool = False

    def code(self) -> str:
        """This fault as Python source (the defaults left out)."""
        fields = [
            f"{a.name}={getattr(self, a.name)!r}"
            for a in attrs.fields(Fault)
            if getattr(self, a.name) != a.default
        ]
        return f"Fault({', '.join(fields)})"

    def describe(self) -> str:
        parts = []
        if self.sleep_before:
            parts.append(f"sleeps {self.sleep_before}s")
        if self.checkpoints_before:
            parts.append(f"{self.checkpoints_before} checkpoints before")
        if self.raise_before:
            parts.append("raises instead of running")
        if self.checkpoints_after:
            parts.append(f"{self.checkpoints_after} checkpoints after")
        if self.raise_after:
            parts.append("raises after running")
        if self.waits_for_itself:
            parts.append("first awaits its own lifecycle")
        return ", ".join(parts) or "runs normally"


@attrs.frozen
class Program:
    """Steps for concurrent callers, and faults for raw hook calls in call order."""

    steps: tuple[Step, ...]
    start_faults: tuple[Fault, ...] = ()
    stop_faults: tuple[Fault, ...] = ()

    @property
    def callers(self) -> int:
        return 1 + max((step.caller for step in self.steps), default=0)

    def code(self) -> str:
        """This program as Python source, for `check_lifecycle(..., replay=...)`.

        The names it uses are those of `startable.testing`:
        `from startable.testing import Fault, Program, Step`.
        """

        def items(values: Sequence[Step] | Sequence[Fault]) -> str:
            inner = ", ".join(value.code() for value in values)
            return f"({inner},)" if len(values) == 1 else f"({inner})"

        parts = [f"steps={items(self.steps)}"]
        for name, faults in (
            ("start_faults", self.start_faults),
            ("stop_faults", self.stop_faults),
        ):
            if faults:
                parts.append(f"{name}={items(faults)}")
        return f"Program({', '.join(parts)})"

    def describe(self, targets: Sequence[str] = ("root",)) -> str:
        lines = [f"  {i}. {step.describe(targets)}" for i, step in enumerate(self.steps, 1)]
        for label, faults in (("raw start", self.start_faults), ("raw stop", self.stop_faults)):
            for n, fault in enumerate(faults, 1):
                if fault != Fault():
                    lines.append(f"  fault: raw {label.split()[1]} call {n} {fault.describe()}")
        return "\n".join(lines)


_SLEEPS = (0.0, 0.5, 3.0)
_RAISES = ("never", "before", "after")
#: How many different faults `faults()` draws from, "runs normally" being 0.
_FAULT_KINDS = len(_RAISES) * len(_SLEEPS) * 4 * 4 * 2


def _fault(code: int, *, sleeps: bool) -> Fault:
    """Unpack one drawn integer into a fault; 0 is no fault, small is mild."""
    code, after = divmod(code, 4)
    code, before = divmod(code, 4)
    code, sleep = divmod(code, len(_SLEEPS))
    waits, raises = divmod(code, len(_RAISES))
    return Fault(
        waits_for_itself=bool(waits),
        checkpoints_before=before,
        sleep_before=_SLEEPS[sleep] if sleeps else 0.0,
        raise_before=_RAISES[raises] == "before",
        checkpoints_after=after,
        raise_after=_RAISES[raises] == "after",
    )


def faults(*, sleeps: bool) -> st.SearchStrategy[Fault]:
    """Faults for one raw hook call; about half run normally.

    Each fault is one drawn integer (generating programs is most of what a run
    of the checker costs, and every draw counts); it shrinks towards no fault.
    """
    return st.one_of(st.just(0), st.integers(1, _FAULT_KINDS - 1)).map(
        functools.partial(_fault, sleeps=sleeps)
    )


def programs(
    *,
    actions: Sequence[str] = BUILTIN_ACTIONS,
    operations: Sequence[str] = (),
    targets: int = 1,
    callers: int = 3,
    min_steps: int = 1,
    max_steps: int = 10,
    inject_faults: bool = True,
    sleeps: bool = True,
) -> st.SearchStrategy[Program]:
    """Programs of `min_steps` to `max_steps` steps spread over `callers` callers.

    Args:
        actions: the built-in actions steps choose from.
        operations: names of `Operation`s; as a group they are drawn as
            often as the built-in actions, since your own methods are where
            your races live.
        targets: how many lifecycles the steps may address.
        callers: how many concurrent callers.
        min_steps: the shortest program.
        max_steps: the longest program.
        inject_faults: draw faults for raw hook calls.
        sleeps: faults may sleep (needs a virtual clock to stay fast).
    """
    if not actions and not operations:
        raise ValueError("programs() needs at least one action or operation")
    if not 1 <= min_steps <= max_steps:
        raise ValueError(
            f"programs() needs 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}"
        )

    # Swarm testing: each program enables only some of the actions (one
    # boolean each: a bitmask drawn as one integer would favour the low bits),
    # so those it uses meet each other often: a race needs the right two or
    # three together. Operations, as a group, are drawn about as often as the
    # built-in actions: your own methods are where races live.
    every = (*actions, *operations)

    @functools.lru_cache(maxsize=4096)  # few distinct swarms: work each one out once
    def enabled(switches: tuple[bool, ...]) -> tuple[str, ...]:
        chosen = [name for on, name in zip(switches, every, strict=True) if on] or list(every)
        builtin = [name for name in chosen if name in actions]
        own = [name for name in chosen if name not in actions]
        return (*builtin, *own * max(1, len(builtin) // max(1, len(own))))

    # The swarm and the steps are drawn side by side (not one from the other
    # with flatmap), and a step's action is picked among those enabled by
    # its index modulo their number: hypothesis can then shrink each on its
    # own, which makes shrinking a failure several times cheaper.
    picks = len(every) * 2

    # Half the programs begin with a start of the root: most races need a
    # service that is running, and the others still meet every other order.
    opening = (Step(0, START),) if START in actions else ()

    def make(
        switches: tuple[bool, ...], opens: bool, drawn: list[tuple[int, int, int, int]]
    ) -> tuple[Step, ...]:
        weighted = enabled(switches)
        steps = tuple(
            Step(caller, weighted[action % len(weighted)], target, delay)
            for caller, action, target, delay in drawn
        )
        return (*opening, *steps)[:max_steps] if opens else steps

    step = st.tuples(
        st.integers(0, callers - 1) if callers > 1 else st.just(0),
        st.integers(0, picks - 1),
        st.integers(0, targets - 1) if targets > 1 else st.just(0),
        st.integers(0, 3),
    )
    swarm = st.tuples(*[st.booleans()] * len(every))
    fault_lists = (
        st.lists(faults(sleeps=sleeps), max_size=4).map(tuple) if inject_faults else st.just(())
    )
    return st.builds(
        Program,
        steps=st.builds(
            make, swarm, st.booleans(), st.lists(step, min_size=min_steps, max_size=max_steps)
        ),
        start_faults=fault_lists,
        stop_faults=fault_lists,
    )
