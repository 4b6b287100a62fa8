"""Running one program against real lifecycles, and checking the invariants as it goes.

The `Recorder` is a `startable.Instrument`: it sees every move of every
lifecycle in the run and wraps every raw start and raw stop, which is where it
injects the program's faults and checks ordering. Callers are tasks that run
their steps in order; every step is bounded by the deadline. The first broken
invariant cancels the run and is raised as a `LifecycleViolation`.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, Protocol

import anyio
import anyio.lowlevel
import attrs
import trio
import trio.testing

import startable
from startable import AbortedError, State, StateChange, StateError

from ._program import (
    CRASH,
    START,
    START_ASYNC_HOOK,
    START_RAISING_HOOK,
    STOP,
    STOP_NOWAIT,
    STOP_REASON,
    TASK,
    Fault,
    Program,
    Step,
)

READY, STARTING, STARTED, STOPPING, STOPPED = State
Backend = Literal["trio", "asyncio"]


class Invariant(enum.Enum):
    """The properties checked after every step, in plain words."""

    MOVES = "moves follow the lifecycle table"
    ONCE = "raw start and raw stop run at most once per cycle, in STARTING and STOPPING"
    ORDER = "raw start and raw stop never overlap, and raw stop never begins before raw start ends"
    HOOKS = "each on_stopping hook fires once, with the stop's reason, before the raw stop"
    REASON = "the raw stop receives the stop's reason"
    GUARDS = "a guarded body never runs outside its allowed states"
    DEADLINE = "every call returns or raises within the deadline"
    TASKS = "no task outlives STOPPED"
    ERRORS = "calls raise only injected faults, given reasons and expected errors"
    USER = "a user invariant"


class LifecycleViolation(AssertionError):
    """Raised when a run breaks an invariant.

    Attributes:
        invariant: which `Invariant` broke.
        program: the program that broke it (hypothesis shrinks it first).
        events: the last events of the run, oldest first.
    """

    def __init__(
        self,
        invariant: Invariant,
        detail: str,
        program: Program,
        targets: Sequence[str],
        events: Sequence[str],
    ) -> None:
        self.invariant = invariant
        self.detail = detail
        self.program = program
        self.events = tuple(events)
        lines = [
            f"{detail}",
            f"  (invariant broken: {invariant.value})",
            "program:",
            program.describe(targets),
            "last events:",
            *(f"  {event}" for event in self.events[-25:]),
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
            states: the checker verifies its body never runs in another.
        raises: exception types the call may raise besides `StateError`.
        target: index of the object it is called on (0, the root, by default).
    """

    name: str
    call: Callable[[Any], object]
    states: frozenset[State] | None = attrs.field(default=None, converter=_states)
    raises: tuple[type[BaseException], ...] = ()
    target: int = 0


@attrs.frozen
class RunView:
    """What a user invariant gets to look at, after every step.

    Attributes:
        targets: the objects under test, the root first.
        lifecycles: their lifecycles, in the same order.
        step: how many steps have completed (all callers together).
        events: the events so far, oldest first.
    """

    targets: tuple[Any, ...]
    lifecycles: tuple[Lifecycle, ...]
    step: int
    events: tuple[str, ...]

    @property
    def root(self) -> Any:
        return self.targets[0]


_UNSET: Any = object()
_NO_FAULT = Fault()


@attrs.define(eq=False)
class _Track:
    """What the recorder knows about one lifecycle."""

    name: str
    state: State | None = None
    cycle: int = 0
    raw_starts: int = 0
    raw_stops: int = 0
    in_start: bool = False
    in_stop: bool = False
    stopping_reason: Any = _UNSET
    stopping_from: State | None = None
    stopping_step: int = -1
    sleepers: list[_Sleeper] = attrs.field(factory=list)


@attrs.define(eq=False)
class _Sleeper:
    entered: bool = False
    exited: bool = False


@attrs.define(eq=False)
class _HookProbe:
    """The on_stopping hook a start step passes; reports when it fires."""

    run: Recorder
    lifecycle: Any
    step: int
    kind: str
    fired: int = 0
    outcome: str = "pending"  # returned, raised or cancelled: how its start() ended
    coroutine_ran: bool | None = None

    def __call__(self, reason: BaseException | None) -> object:
        self.run.hook_fired(self, reason)
        if self.kind == START_RAISING_HOOK:
            raise HookFault(f"the hook of step {self.step} raised")
        if self.kind == START_ASYNC_HOOK:
            self.coroutine_ran = False
            return self._async_part()
        return None

    async def _async_part(self) -> None:
        self.coroutine_ran = True
        await anyio.lowlevel.checkpoint()


class _TrioSteps(trio.abc.Instrument):
    """Counts trio task steps, so "in the same step" can be checked exactly."""

    def __init__(self) -> None:
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


class Recorder(startable.Instrument):
    """Runs one program and checks it; see the module docstring."""

    def __init__(
        self,
        program: Program,
        *,
        factory: Callable[[], Any],
        targets: Callable[[Any], Sequence[Any]],
        lifecycle: Callable[[Any], Lifecycle],
        operations: Sequence[Operation],
        invariants: Sequence[Callable[[RunView], object]],
        expected_errors: tuple[type[BaseException], ...],
        backend: Backend,
        deadline: float,
    ) -> None:
        self.program = program
        self.factory = factory
        self.get_targets = targets
        self.get_lifecycle = lifecycle
        self.operations = {operation.name: operation for operation in operations}
        self.invariants = invariants
        self.expected_errors = expected_errors
        self.backend = backend
        self.deadline = deadline
        self.events: list[str] = []
        self.violation: tuple[Invariant, str] | None = None
        self.scope: anyio.CancelScope | None = None  # made inside the event loop
        self.tracks: dict[int, _Track] = {}
        self.hooks: list[_HookProbe] = []
        self.start_faults: Iterator[Fault] = iter(program.start_faults)
        self.stop_faults: Iterator[Fault] = iter(program.stop_faults)
        self.steps_done = 0
        # How racy the program was, for hypothesis to aim at: moves that
        # happened while a call of an Operation was in flight, and while
        # steps of several callers were.
        self.in_flight = 0
        self.operations_in_flight = 0
        self.moves_during_operations = 0
        self.moves_during_overlap = 0
        self.trio_steps: _TrioSteps | None = None
        self.objects: tuple[Any, ...] = ()
        self.handles: tuple[Lifecycle, ...] = ()
        self.names: list[str] = ["root"]

    # -- reporting ----------------------------------------------------------

    def log(self, event: str) -> None:
        self.events.append(event)

    def fail(self, invariant: Invariant, detail: str) -> None:
        """Record the first violation and stop the run."""
        if self.violation is None:
            self.violation = (invariant, detail)
            self.log(f"VIOLATION: {detail}")
            if self.scope is not None:
                self.scope.cancel()

    def violation_error(self) -> LifecycleViolation | None:
        if self.violation is None:
            return None
        invariant, detail = self.violation
        return LifecycleViolation(invariant, detail, self.program, self.names, self.events)

    def track(self, lifecycle: Any) -> _Track:
        track = self.tracks.get(id(lifecycle))
        if track is None:
            name = getattr(lifecycle, "name", None) or repr(lifecycle)
            track = self.tracks[id(lifecycle)] = _Track(name=str(name))
        return track

    def step_count(self) -> int:
        return self.trio_steps.count if self.trio_steps is not None else -1

    # -- the instrument -----------------------------------------------------

    def on_move(self, change: StateChange) -> None:
        track = self.track(change.startable)
        previous, current = change.previous, change.current
        self.moves_during_operations += self.operations_in_flight
        self.moves_during_overlap += max(0, self.in_flight - 1)
        because = f" ({change.reason!r})" if change.reason is not None else ""
        self.log(f"{track.name}: {previous.name} → {current.name}{because}")
        if not previous.can_move_to(current):
            self.fail(
                Invariant.MOVES,
                f"{track.name} moved {previous.name} → {current.name}, "
                "which the table does not allow",
            )
        elif track.state is not None and track.state is not previous:
            self.fail(
                Invariant.MOVES,
                f"{track.name} moved from {previous.name}, "
                f"but its last move left it {track.state.name}",
            )
        track.state = current
        if current is STARTING:
            track.cycle += 1
            track.raw_starts = track.raw_stops = 0
            track.stopping_reason = _UNSET
            track.stopping_from = None
        elif current is STOPPING:
            track.stopping_reason = change.reason
            track.stopping_from = previous
            track.stopping_step = self.step_count()
        elif current is STOPPED:
            if track.in_start or track.in_stop:
                phase = "start" if track.in_start else "stop"
                self.fail(
                    Invariant.ORDER,
                    f"{track.name} reached STOPPED while its raw {phase} was still running",
                )
            if previous is STOPPING and track.raw_stops != 1:
                self.fail(
                    Invariant.ONCE,
                    f"{track.name} went STOPPING → STOPPED after {track.raw_stops} raw stops "
                    f"in cycle {track.cycle} (exactly one expected)",
                )
            for sleeper in track.sleepers:
                if sleeper.entered and not sleeper.exited:
                    self.fail(
                        Invariant.TASKS,
                        f"a background task of {track.name} was still running "
                        "when it reached STOPPED",
                    )
            track.sleepers.clear()

    async def raw_start(self, lifecycle: Any, call: Callable[[], Awaitable[None]]) -> None:
        track = self.track(lifecycle)
        self.log(f"{track.name}: raw start begins")
        if track.state is not STARTING:
            state = track.state.name if track.state else "unknown"
            self.fail(Invariant.ONCE, f"the raw start of {track.name} ran while it was {state}")
        elif track.raw_starts:
            self.fail(
                Invariant.ONCE, f"the raw start of {track.name} ran twice in cycle {track.cycle}"
            )
        if track.in_stop:
            self.fail(
                Invariant.ORDER, f"the raw start of {track.name} began while its raw stop ran"
            )
        track.raw_starts += 1
        track.in_start = True
        try:
            await self._faulty(
                next(self.start_faults, _NO_FAULT), f"raw start of {track.name}", call
            )
        finally:
            track.in_start = False
            self.log(f"{track.name}: raw start ends")

    async def raw_stop(
        self, lifecycle: Any, reason: BaseException | None, call: Callable[[], Awaitable[None]]
    ) -> None:
        track = self.track(lifecycle)
        self.log(f"{track.name}: raw stop begins ({reason!r})")
        if track.in_start:
            self.fail(
                Invariant.ORDER,
                f"the raw stop of {track.name} began before its raw start had finished",
            )
        if track.state is not STOPPING:
            state = track.state.name if track.state else "unknown"
            self.fail(Invariant.ONCE, f"the raw stop of {track.name} ran while it was {state}")
        elif track.raw_stops:
            self.fail(
                Invariant.ONCE, f"the raw stop of {track.name} ran twice in cycle {track.cycle}"
            )
        elif reason is not track.stopping_reason:
            self.fail(
                Invariant.REASON,
                f"the raw stop of {track.name} received {reason!r}, "
                f"but the stop's reason was {track.stopping_reason!r}",
            )
        track.raw_stops += 1
        track.in_stop = True
        try:
            await self._faulty(next(self.stop_faults, _NO_FAULT), f"raw stop of {track.name}", call)
        finally:
            track.in_stop = False
            self.log(f"{track.name}: raw stop ends")

    async def _faulty(self, fault: Fault, what: str, call: Callable[[], Awaitable[None]]) -> None:
        """Make the raw hook `call` as `fault` says."""
        if fault.sleep_before:
            await anyio.sleep(fault.sleep_before)
        for _ in range(fault.checkpoints_before):
            await anyio.lowlevel.checkpoint()
        if fault.raise_before:
            raise InjectedFault(f"injected into the {what}, before it ran")
        await call()
        for _ in range(fault.checkpoints_after):
            await anyio.lowlevel.checkpoint()
        if fault.raise_after:
            raise InjectedFault(f"injected into the {what}, after it ran")

    def hook_fired(self, probe: _HookProbe, reason: BaseException | None) -> None:
        track = self.track(probe.lifecycle)
        probe.fired += 1
        self.log(f"{track.name}: the hook of step {probe.step} fires ({reason!r})")
        what = f"the on_stopping hook passed to start() at step {probe.step}"
        if probe.fired > 1:
            self.fail(Invariant.HOOKS, f"{what} fired {probe.fired} times")
        elif track.state is not STOPPING:
            state = track.state.name if track.state else "unknown"
            self.fail(Invariant.HOOKS, f"{what} fired while {track.name} was {state}")
        elif track.stopping_from is not STARTED:
            self.fail(Invariant.HOOKS, f"{what} fired although that cycle never reached STARTED")
        elif reason is not track.stopping_reason:
            self.fail(
                Invariant.HOOKS,
                f"{what} received {reason!r}, but the stop's reason was {track.stopping_reason!r}",
            )
        elif track.raw_stops:
            self.fail(Invariant.HOOKS, f"{what} fired after the raw stop of {track.name} had begun")
        elif self.trio_steps is not None and self.step_count() != track.stopping_step:
            self.fail(
                Invariant.HOOKS,
                f"{what} fired in a later scheduling step than the one in which the stop began",
            )

    # -- the program --------------------------------------------------------

    async def main(self) -> None:
        if self.backend == "trio":
            self.trio_steps = _TrioSteps()
            trio.lowlevel.add_instrument(self.trio_steps)
        baseline = {task.id for task in anyio.get_running_tasks()}
        root = self.factory()
        self.objects = tuple(self.get_targets(root))
        self.handles = tuple(self.get_lifecycle(obj) for obj in self.objects)
        self.names = unique_names([self.track(handle).name for handle in self.handles])
        for name, handle in zip(self.names, self.handles, strict=True):
            self.track(handle).name = name
        by_caller: dict[int, list[tuple[int, Step]]] = {}
        for number, step in enumerate(self.program.steps, 1):
            by_caller.setdefault(step.caller, []).append((number, step))
        self.scope = anyio.CancelScope()
        with self.scope, startable.instrumented(self):
            try:
                async with startable.open_owner():
                    async with anyio.create_task_group() as callers:
                        for caller, steps in sorted(by_caller.items()):
                            callers.start_soon(self._caller, steps, name=f"caller {caller}")
                    await self._final_stop()
            except Exception as exc:
                self._expect(exc, "leaving open_owner()", StateError)
        if self.violation is not None:
            return
        self._final_checks()
        await self._no_tasks_left(baseline)
        self._user_invariants("after everything stopped")

    async def _caller(self, steps: list[tuple[int, Step]]) -> None:
        # One scope per caller, its deadline moved forward for each step: every
        # step is bounded, at the cost of one cancel scope rather than one each.
        label = ""
        with anyio.CancelScope() as bounded:
            for number, step in steps:
                for _ in range(step.delay):
                    await anyio.lowlevel.checkpoint()
                label = f"step {number} ({step.describe(self.names)})"
                bounded.deadline = anyio.current_time() + self.deadline
                await self._perform(number, step, label)
                self.steps_done += 1
                self._user_invariants(f"after step {number}")
        if bounded.cancelled_caught:
            self.fail(Invariant.DEADLINE, f"{label} did not return within {self.deadline}s")

    async def _perform(self, number: int, step: Step, label: str) -> None:
        self.log(label)
        handle = self.handles[step.target]
        self.in_flight += 1
        try:
            await self._act(number, step, handle)
        except Exception as exc:
            self._expect(exc, label, *self._errors_of(step))
        finally:
            self.in_flight -= 1

    def _errors_of(self, step: Step) -> tuple[type[BaseException], ...]:
        if step.action in (START, START_RAISING_HOOK, START_ASYNC_HOOK, CRASH, TASK):
            return (StateError,)
        if step.action in (STOP, STOP_REASON):
            return ()
        operation = self.operations.get(step.action)
        if operation is None:
            return ()
        return (StateError, *operation.raises) if operation.states is not None else operation.raises

    async def _act(self, number: int, step: Step, handle: Lifecycle) -> None:
        action = step.action
        if action in (START, START_RAISING_HOOK, START_ASYNC_HOOK):
            probe = _HookProbe(self, handle, number, action)
            self.hooks.append(probe)
            try:
                await handle.start(probe)
            except anyio.get_cancelled_exc_class():
                probe.outcome = "cancelled"
                raise
            except BaseException:
                probe.outcome = "raised"
                raise
            probe.outcome = "returned"
        elif action == STOP:
            await handle.stop()
        elif action == STOP_REASON:
            await handle.stop(Reason(f"given to stop() at step {number}"))
        elif action == STOP_NOWAIT:
            handle.stop_nowait(Reason(f"given to stop_nowait() at step {number}"))
        elif action == CRASH:
            handle.start_soon(self._crash, Reason(f"raised by the task started at step {number}"))
        elif action == TASK:
            sleeper = _Sleeper()
            handle.start_soon(self._sleep, sleeper)
            self.track(handle).sleepers.append(sleeper)
        else:
            await self._call(self.operations[action], step, handle)

    async def _call(self, operation: Operation, step: Step, handle: Lifecycle) -> None:
        handle = self.handles[operation.target]
        state = handle.state
        target = self.objects[operation.target]
        self.operations_in_flight += 1
        try:
            result = operation.call(target)
            if inspect.isawaitable(result):
                await result
        except StateError:
            if operation.states is None:
                raise
            return  # refused: the body did not run
        except BaseException:
            self._check_guard(operation, state)
            raise
        finally:
            self.operations_in_flight -= 1
        self._check_guard(operation, state)

    def _check_guard(self, operation: Operation, state: State) -> None:
        if operation.states is not None and state not in operation.states:
            allowed = ", ".join(s.name for s in State if s in operation.states)
            self.fail(
                Invariant.GUARDS,
                f"the body of {operation.name} ran while the service was {state.name} "
                f"(allowed: {allowed})",
            )

    async def _crash(self, reason: Reason) -> None:
        await anyio.lowlevel.checkpoint()
        raise reason

    async def _sleep(self, sleeper: _Sleeper) -> None:
        sleeper.entered = True
        try:
            await anyio.sleep_forever()
        finally:
            sleeper.exited = True

    def _expect(self, error: BaseException, where: str, *allowed: type[BaseException]) -> None:
        """Fail unless every leaf of `error` is expected."""
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                self._expect(inner, where, *allowed)
            return
        expected: tuple[type[BaseException], ...] = (
            InjectedFault,
            HookFault,
            Reason,
            AbortedError,
            *self.expected_errors,
            *allowed,
        )
        if isinstance(error, expected):
            return
        if isinstance(error, anyio.get_cancelled_exc_class()):
            return
        self.fail(
            Invariant.ERRORS,
            f"{where} raised {type(error).__name__}: {error} — not an injected fault, "
            "a given reason, or an expected error",
        )

    async def _final_stop(self) -> None:
        for index, handle in enumerate(self.handles):
            label = f"the final stop of {self.names[index]}"
            self.log(label)
            with anyio.move_on_after(self.deadline) as bounded:
                try:
                    await handle.stop()
                except Exception as exc:
                    self._expect(exc, label)
            if bounded.cancelled_caught:
                self.fail(Invariant.DEADLINE, f"{label} did not return within {self.deadline}s")

    def _final_checks(self) -> None:
        for name, handle in zip(self.names, self.handles, strict=True):
            if handle.state not in (READY, STOPPED):
                self.fail(Invariant.TASKS, f"{name} was {handle.state.name} after its owner closed")
        for probe in self.hooks:
            what = f"the on_stopping hook passed to start() at step {probe.step}"
            if probe.outcome == "returned" and probe.fired != 1:
                self.fail(
                    Invariant.HOOKS,
                    f"{what} fired {probe.fired} times, "
                    "though its start() returned (once expected)",
                )
            elif probe.outcome == "raised" and probe.fired:
                self.fail(Invariant.HOOKS, f"{what} fired although its start() raised")
            if probe.coroutine_ran is False:
                self.fail(Invariant.HOOKS, f"{what} returned a coroutine that never ran")

    async def _no_tasks_left(self, baseline: set[int]) -> None:
        with anyio.move_on_after(self.deadline) as waiting:  # a task that never blocks
            await anyio.wait_all_tasks_blocked()
        if waiting.cancelled_caught:
            still = f"tasks kept running {self.deadline}s after everything stopped"
            self.fail(Invariant.TASKS, still)
            return
        current = anyio.get_current_task().id
        left = [
            task.name or repr(task)
            for task in anyio.get_running_tasks()
            if task.id not in baseline and task.id != current
        ]
        if left:
            self.fail(
                Invariant.TASKS,
                f"{len(left)} task(s) still running after everything stopped: {', '.join(left)}",
            )

    def _user_invariants(self, when: str) -> None:
        if not self.invariants or self.violation is not None:
            return
        view = RunView(self.objects, self.handles, self.steps_done, tuple(self.events))
        for invariant in self.invariants:
            try:
                invariant(view)
            except Exception as exc:
                name = getattr(invariant, "__name__", repr(invariant))
                self.fail(Invariant.USER, f"{name} failed {when}: {exc}")
                return


def run_program(
    program: Program,
    factory: Callable[[], Any],
    *,
    targets: Callable[[Any], Sequence[Any]] | None = None,
    lifecycle: Callable[[Any], Lifecycle] = startable.of,
    operations: Sequence[Operation] = (),
    invariants: Sequence[Callable[[RunView], object]] = (),
    expected_errors: tuple[type[BaseException], ...] = (),
    backend: Backend = "trio",
    deadline: float | None = None,
) -> None:
    """Run one program in a fresh event loop and check every invariant.

    On trio the run uses `trio.testing.MockClock` with autojump, so sleeps and
    the deadline cost no real time and a hang shows at once; under hypothesis
    trio's scheduling order is seeded by the example, so a failure replays.

    Raises:
        LifecycleViolation: describing the first broken invariant.
    """
    recorder = _run(
        program,
        factory,
        targets=targets,
        lifecycle=lifecycle,
        operations=operations,
        invariants=invariants,
        expected_errors=expected_errors,
        backend=backend,
        deadline=deadline,
    )
    error = recorder.violation_error()
    if error is not None:
        raise error


def _run(
    program: Program,
    factory: Callable[[], Any],
    *,
    targets: Callable[[Any], Sequence[Any]] | None,
    lifecycle: Callable[[Any], Lifecycle],
    operations: Sequence[Operation],
    invariants: Sequence[Callable[[RunView], object]],
    expected_errors: tuple[type[BaseException], ...],
    backend: Backend,
    deadline: float | None,
) -> Recorder:
    recorder = Recorder(
        program,
        factory=factory,
        targets=targets or (lambda root: [root]),
        lifecycle=lifecycle,
        operations=operations,
        invariants=invariants,
        expected_errors=expected_errors,
        backend=backend,
        deadline=deadline if deadline is not None else default_deadline(backend),
    )
    if backend == "trio":
        clock = trio.testing.MockClock(autojump_threshold=0)
        anyio.run(recorder.main, backend="trio", backend_options={"clock": clock})
    else:
        anyio.run(recorder.main, backend=backend)
    return recorder


def unique_names(names: Sequence[str]) -> list[str]:
    """`names`, with `#1`, `#2`... added where a name repeats."""
    counts = {name: names.count(name) for name in names}
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        if counts[name] > 1:
            seen[name] = seen.get(name, 0) + 1
            name = f"{name}#{seen[name]}"
        unique.append(name)
    return unique


def default_deadline(backend: Backend) -> float:
    """Virtual seconds on trio (free), real seconds on asyncio (spent only when something hangs)."""
    return 60.0 if backend == "trio" else 5.0
