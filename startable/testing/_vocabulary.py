"""The checker's vocabulary: what it checks, what it reports, what a user gives it.

The invariants (`Invariant`), the events of a run (`Event`), the error a
broken invariant raises (`LifecycleViolation`), the faults it injects, and
what a user describes (`Operation`) or looks at (`RunView`).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, Protocol

import attrs

from startable import StartableError, State

from ._program import Fault, Program

Backend = Literal["trio", "asyncio"]


class Invariant(enum.Enum):
    """The promises checked after every step; each is a promise of the *Semantics* page."""

    MOVES = "moves follow the lifecycle table"
    ONCE = "raw start and raw stop run once per cycle, in STARTING and STOPPING"
    ORDER = "raw start and raw stop never overlap, and raw stop never begins before raw start ends"
    START_OUTCOME = (
        "start() returns once the lifecycle is STARTED, or raises the raw start's own error "
        "(the same object for every caller that joined it)"
    )
    START_REFUSED = (
        "start() is refused (StateError) only while STOPPING; STOPPED begins a new cycle"
    )
    STOP_OUTCOME = "stop() returns or raises only once the lifecycle is STOPPED"
    STOP_ERRORS = (
        "every caller of a stop sees its outcome: a raw stop's or a hook's error is raised "
        "to each of them, the same object"
    )
    HOOKS = "each on_stopping hook fires once, with the stop's reason, before the raw stop"
    REASON = "the raw stop receives the stop's reason"
    COMPOSITION = (
        "a hook that is a parent's stop makes the parent begin stopping in the same step, "
        "with the child's reason"
    )
    CRASH = "a background task that crashes stops its service with its error"
    GUARDS = "a guarded body never runs outside its allowed states"
    DRAIN = "a draining guarded call never overlaps its service's raw stop"
    SELF_WAIT = "a call that would wait for itself raises StateError instead"
    DEADLINE = "every call returns or raises within the deadline, and the run ends"
    TASKS = "no task outlives STOPPED"
    ERRORS = "calls raise only injected faults, given reasons and expected errors"
    USER = "a user invariant"


class EventKind(enum.Enum):
    """What an `Event` records."""

    STEP = "a step begins"
    STEP_END = "a step ends"
    SKIPPED = "a step is skipped: its target does not exist now"
    MOVE = "a lifecycle moves"
    RAW_START = "a raw start begins"
    RAW_START_END = "a raw start ends"
    RAW_STOP = "a raw stop begins"
    RAW_STOP_END = "a raw stop ends"
    HOOK = "an on_stopping hook passed by a step fires"
    FINAL_STOP = "the checker's final stop of a target"
    VIOLATION = "an invariant broke"


@attrs.frozen
class Event:
    """One thing that happened in a run, as `RunView.events` and reports show it.

    `str(event)` is the line a report prints. Fields that do not apply to an
    event's kind are None.

    Attributes:
        kind: what happened.
        text: the event in plain words.
        lifecycle: the name of the lifecycle concerned.
        step: the number of the step it belongs to (moves and raw hooks: the
            step in progress in the task that made them, if any).
        previous: for a move, the state left.
        current: for a move, the state entered.
        reason: for a move into STOPPING or STOPPED, a raw stop and a hook:
            the reason.
        fault: for a raw hook's beginning: the fault injected into it.
        ran: for a raw hook's end: whether the real raw hook ran (False when
            a fault raised instead of it, or a cancellation came first).
        error: for a raw hook's or a step's end: what it raised, if anything.
    """

    kind: EventKind
    text: str
    lifecycle: str | None = None
    step: int | None = None
    previous: State | None = None
    current: State | None = None
    reason: BaseException | None = None
    fault: Fault | None = None
    ran: bool | None = None
    error: BaseException | None = None

    def __str__(self) -> str:
        return self.text


class LifecycleViolation(AssertionError, StartableError):
    """Raised when a run breaks an invariant.

    Attributes:
        invariant: which `Invariant` broke.
        detail: what happened, in plain words.
        program: the program that broke it (hypothesis shrinks it first).
        events: the events of the run, oldest first.
        replay: Python source of the program: pass it as
            `check_lifecycle(..., replay=...)` to run exactly this program
            again, with the same interleaving.
    """

    def __init__(
        self,
        invariant: Invariant,
        detail: str,
        program: Program,
        targets: Sequence[str],
        events: Sequence[Event],
    ) -> None:
        self.invariant = invariant
        self.detail = detail
        self.program = program
        self.events = tuple(events)
        self.replay = program.code()
        lines = [
            f"{detail}",
            f"  (promise broken: {invariant.value})",
            "program:",
            program.describe(targets),
            "last events:",
            *(f"  {event}" for event in self.events[-25:]),
            "replay it (from startable.testing import Fault, Program, Step):",
            f"  check_lifecycle(..., replay={self.replay})",
        ]
        super().__init__("\n".join(lines))


class InjectedFault(Exception):
    """The error an injected fault raises from a raw start or raw stop."""


class HookFault(Exception):
    """The error a raising on_stopping hook raises."""


class Reason(Exception):
    """A stop reason given by the checker (to `stop()`, `stop_nowait()`, or a crashing task)."""


class Lifecycle(Protocol):
    """What the checker drives: `startable.Startable` is one."""

    @property
    def state(self) -> State: ...

    async def start(
        self, on_stopping: Callable[[BaseException | None], object] | None = None
    ) -> None: ...

    async def stop(self, err: BaseException | None = None) -> None: ...

    def stop_nowait(self, err: BaseException | None = None) -> None: ...

    def start_soon(
        self, func: Callable[..., Awaitable[Any]], *args: Any, name: object = None
    ) -> None: ...


def _states(states: Iterable[State] | None) -> frozenset[State] | None:
    return None if states is None else frozenset(states)


@attrs.frozen
class Operation:
    """A call the checker may make on one of the services.

    Attributes:
        name: the action name used in programs and reports.
        call: called with the target object; may return an awaitable.
        states: if given, the call is a guarded method allowed only in these
            states *of its target*: the checker verifies its body never runs
            in another.
        raises: exception types the call may raise besides `StateError`.
        target: the object the call is made on, whose state `states` refers
            to: an index into `targets` (0, the root, by default), or a
            function of the root that returns it (called at each call, so it
            may be an object the root builds in its raw start, such as
            `lambda app: app.cache`). A step whose target does not exist at
            that moment (the function raises or returns None) is skipped.
        drain: the call is guarded with `assert_state(drain=...)`: the checker
            verifies that no raw stop of its target begins while it runs.
    """

    name: str
    call: Callable[[Any], object]
    states: frozenset[State] | None = attrs.field(default=None, converter=_states)
    raises: tuple[type[BaseException], ...] = ()
    target: int | Callable[[Any], Any] = 0
    drain: bool = False


@attrs.frozen
class RunView:
    """What a user invariant gets to look at, after every step.

    Attributes:
        targets: the objects under test as they are now, the root first (None
            for one that does not exist at the moment).
        lifecycles: their lifecycles, in the same order (None likewise).
        step: how many steps have completed (all callers together).
        events: the events so far, oldest first (see `Event`).
    """

    targets: tuple[Any, ...]
    lifecycles: tuple[Lifecycle | None, ...]
    step: int
    events: tuple[Event, ...]

    @property
    def root(self) -> Any:
        return self.targets[0]
