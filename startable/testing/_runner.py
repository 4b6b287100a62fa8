"""Running one program against real lifecycles, and checking the invariants as it goes.

The `Recorder` is a `startable.Instrument`: it sees every move of every
lifecycle in the run, wraps every raw start and raw stop (where it injects
the program's faults and checks ordering) and every on_stopping hook call.
Callers are tasks that run their steps in order; every step is bounded by the
deadline, and the whole run by a watchdog: on trio, a run that can no longer
end (a wait that no cancellation reaches, such as a shielded wait for a stop
that never finishes) is abandoned as soon as it is idle past the watchdog's
bound, which costs no real time under the mock clock. The first broken
invariant cancels the run and is raised as a `LifecycleViolation`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
import hypothesis
import trio
import trio.testing
from hypothesis import strategies

import startable
from startable import AbortedError, State, StateChange, StateError

from ._program import (
    CRASH,
    START,
    START_ASYNC_HOOK,
    START_CANCELLED,
    START_RAISING_HOOK,
    STOP,
    STOP_CANCELLED,
    STOP_NOWAIT,
    STOP_REASON,
    TASK,
    Fault,
    Program,
    Step,
)
from ._trio import Hung, TrioSteps, WatchdogClock, close_abandoned, coroutines_of
from ._vocabulary import (
    Backend,
    Event,
    EventKind,
    HookFault,
    InjectedFault,
    Invariant,
    Lifecycle,
    LifecycleViolation,
    Operation,
    Reason,
    RunView,
)

READY, STARTING, STARTED, STOPPING, STOPPED = State
_UNSET: Any = object()
_NO_FAULT = Fault()
_NO_OUTCOME: Any = object()


@attrs.define(eq=False)
class _Round:
    """What the recorder knows about one cycle of one lifecycle."""

    number: int
    start_errors: list[BaseException] = attrs.field(factory=list)
    start_interrupted: bool = False
    stop_errors: list[BaseException] = attrs.field(factory=list)
    stop_interrupted: bool = False
    start_outcome: Any = _NO_OUTCOME  # what the first start() that failed raised
    stop_outcome: Any = _NO_OUTCOME  # what the first stop() tied to it did (None: returned)
    stopping_task: object = None  # the task that made its move into STOPPING
    stopping_index: int = 0  # which move into STOPPING of its lifecycle that was
    crashes: list[BaseException] = attrs.field(factory=list)  # crashed while STARTED


@attrs.define(eq=False)
class _Track:
    """What the recorder knows about one lifecycle."""

    name: str
    lifecycle: Any = None
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
    #: Tasks of cycles that reached STOPPED before the task had even begun:
    #: legitimate if it was cancelled meanwhile (it ends as soon as it runs).
    late: list[_Sleeper] = attrs.field(factory=list)
    round: _Round = attrs.field(factory=lambda: _Round(0))
    started_moves: int = 0
    stopping_moves: int = 0
    stopped: list[_Round] = attrs.field(factory=list)  # one per move into STOPPED
    start_errors: list[BaseException] = attrs.field(factory=list)  # in order, every cycle
    start_interrupts: int = 0
    stop_interrupts: int = 0
    draining: list[str] = attrs.field(factory=list)  # draining calls in flight


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
            error = HookFault(f"the hook of step {self.step} raised")
            self.run.track(self.lifecycle).round.stop_errors.append(error)
            raise error
        if self.kind == START_ASYNC_HOOK:
            self.coroutine_ran = False
            return self._async_part()
        return None

    async def _async_part(self) -> None:
        self.coroutine_ran = True
        await anyio.lowlevel.checkpoint()


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
        names: Sequence[str] | None = None,
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
        self.events: list[Event] = []
        self.violation: tuple[Invariant, str] | None = None
        self.scope: anyio.CancelScope | None = None  # made inside the event loop
        self.clock: WatchdogClock | None = None
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
        self.trio_steps: TrioSteps | None = None
        self.root: Any = None
        self.names: list[str] = list(names) if names else ["root"]
        self.helpers: anyio.abc.TaskGroup | None = None
        # The coroutines of a trio run the watchdog abandons, closed at once
        # afterwards: left to the garbage collector, their clean-up would run
        # in the middle of a later run, and reschedule tasks of this one there.
        self.abandoned: list[Any] = []
        self.main_task: trio.lowlevel.Task | None = None  # trio's own tasks are not ours

    # -- reporting ----------------------------------------------------------

    def log(self, kind: EventKind, text: str, **fields: Any) -> None:
        self.events.append(Event(kind, text, **fields))

    def fail(self, invariant: Invariant, detail: str) -> None:
        """Record the first violation and stop the run."""
        if self.violation is None:
            self.violation = (invariant, detail)
            self.log(EventKind.VIOLATION, f"VIOLATION: {detail}")
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
            track = self.tracks[id(lifecycle)] = _Track(name=str(name), lifecycle=lifecycle)
        return track

    def step_count(self) -> int:
        return self.trio_steps.count if self.trio_steps is not None else -1

    # -- the targets, looked up when needed -----------------------------------

    def objects(self) -> list[Any]:
        """The targets as they are now (None where one does not exist)."""
        try:
            found = list(self.get_targets(self.root))
        except Exception:
            found = [self.root]
        found += [None] * (len(self.names) - len(found))
        return found[: len(self.names)]

    def handle(self, obj: Any, index: int | None) -> Lifecycle:
        handle = self.get_lifecycle(obj)
        track = self.track(handle)
        if index is not None and track.state is None and track.raw_starts == 0:
            track.name = self.names[index]
        return handle

    # -- the instrument -----------------------------------------------------

    def on_move(self, change: StateChange) -> None:
        track = self.track(change.startable)
        previous, current = change.previous, change.current
        self.moves_during_operations += self.operations_in_flight
        self.moves_during_overlap += max(0, self.in_flight - 1)
        because = f" ({change.reason!r})" if change.reason is not None else ""
        self.log(
            EventKind.MOVE,
            f"{track.name}: {previous.name} → {current.name}{because}",
            lifecycle=track.name,
            previous=previous,
            current=current,
            reason=change.reason,
        )
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
            track.round = _Round(track.cycle)
        elif current is STARTED:
            track.started_moves += 1
        elif current is STOPPING:
            track.stopping_moves += 1
            track.stopping_reason = change.reason
            track.stopping_from = previous
            track.stopping_step = self.step_count()
            if self.trio_steps is None:
                track.round.stopping_task = anyio.get_current_task().id
                track.round.stopping_index = track.stopping_moves
            crashes = track.round.crashes
            if previous is STARTED and crashes and change.reason is not crashes[0]:
                self.fail(
                    Invariant.CRASH,
                    f"a background task of {track.name} raised {crashes[0]!r} while it was "
                    f"STARTED, but it began stopping with {change.reason!r}",
                )
        elif current is STOPPED:
            track.stopped.append(track.round if previous is STOPPING else _Round(0))
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
                elif not sleeper.entered:
                    track.late.append(sleeper)
            track.sleepers.clear()

    async def raw_start(self, lifecycle: Any, call: Callable[[], Awaitable[None]]) -> None:
        track = self.track(lifecycle)
        fault = next(self.start_faults, _NO_FAULT)
        self.log(
            EventKind.RAW_START,
            f"{track.name}: raw start begins" + _with(fault),
            lifecycle=track.name,
            fault=fault,
        )
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
        ran: list[bool] = []
        error: BaseException | None = None
        try:
            await self._faulty(fault, f"raw start of {track.name}", call, ran, lifecycle, True)
        except anyio.get_cancelled_exc_class() as exc:
            error = exc
            track.round.start_interrupted = True
            track.start_interrupts += 1
            raise
        except BaseException as exc:
            error = exc
            track.round.start_errors.append(exc)
            track.start_errors.append(exc)
            raise
        finally:
            track.in_start = False
            self.log(
                EventKind.RAW_START_END,
                f"{track.name}: raw start ends" + _how(bool(ran), error),
                lifecycle=track.name,
                ran=bool(ran),
                error=error,
            )

    async def raw_stop(
        self, lifecycle: Any, reason: BaseException | None, call: Callable[[], Awaitable[None]]
    ) -> None:
        track = self.track(lifecycle)
        fault = next(self.stop_faults, _NO_FAULT)
        self.log(
            EventKind.RAW_STOP,
            f"{track.name}: raw stop begins ({reason!r})" + _with(fault),
            lifecycle=track.name,
            reason=reason,
            fault=fault,
        )
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
        if track.draining:
            self.fail(
                Invariant.DRAIN,
                f"the raw stop of {track.name} began while {track.draining[0]} "
                "(guarded with drain) was still running",
            )
        track.raw_stops += 1
        track.in_stop = True
        ran: list[bool] = []
        error: BaseException | None = None
        try:
            await self._faulty(fault, f"raw stop of {track.name}", call, ran, lifecycle, False)
        except anyio.get_cancelled_exc_class() as exc:
            error = exc
            track.round.stop_interrupted = True
            track.stop_interrupts += 1
            raise
        except BaseException as exc:
            error = exc
            track.round.stop_errors.append(exc)
            raise
        finally:
            track.in_stop = False
            self.log(
                EventKind.RAW_STOP_END,
                f"{track.name}: raw stop ends" + _how(bool(ran), error),
                lifecycle=track.name,
                ran=bool(ran),
                error=error,
            )

    def on_stopping_hook(
        self,
        lifecycle: Any,
        hook: Callable[[BaseException | None], object],
        reason: BaseException | None,
        call: Callable[[], object],
    ) -> object:
        parent = getattr(hook, "__self__", None)
        if getattr(hook, "__func__", None) is not startable.Startable.stop or parent is None:
            return call()
        before = parent.state
        track = self.track(parent)
        moves = track.stopping_moves
        result = call()
        child = self.track(lifecycle).name
        if before is STARTED and parent.state is STARTED:
            self.fail(
                Invariant.COMPOSITION,
                f"{child} began stopping ({reason!r}) and called the stop of {track.name} "
                f"as its on_stopping hook, but {track.name} was still STARTED afterwards",
            )
        elif track.stopping_moves > moves and track.stopping_reason is not reason:
            self.fail(
                Invariant.COMPOSITION,
                f"{child} began stopping with {reason!r}, and so did {track.name}, "
                f"but with {track.stopping_reason!r}",
            )
        return result

    async def _faulty(
        self,
        fault: Fault,
        what: str,
        call: Callable[[], Awaitable[None]],
        ran: list[bool],
        lifecycle: Any,
        starting: bool,
    ) -> None:
        """Make the raw hook `call` as `fault` says; `ran` gets True once it ran."""
        if fault.sleep_before:
            await anyio.sleep(fault.sleep_before)
        for _ in range(fault.checkpoints_before):
            await anyio.lowlevel.checkpoint()
        if fault.waits_for_itself:
            for name in ("start", "stop") if starting else ("stop",):
                await self._wait_for_itself(lifecycle, name, what)
        if fault.raise_before:
            raise InjectedFault(f"injected into the {what}, instead of running it")
        ran.append(True)
        await call()
        for _ in range(fault.checkpoints_after):
            await anyio.lowlevel.checkpoint()
        if fault.raise_after:
            raise InjectedFault(f"injected into the {what}, after it ran")

    async def _wait_for_itself(self, lifecycle: Any, name: str, what: str) -> None:
        """Inside a raw hook, await the lifecycle's own `name`(): it must refuse."""
        track = self.track(lifecycle)
        self.log(EventKind.STEP, f"the {what} awaits {track.name}.{name}()")
        with anyio.move_on_after(self.deadline / 2) as waited:
            try:
                await getattr(lifecycle, name)()
            except StateError:
                return
            except Exception as exc:
                self.fail(
                    Invariant.SELF_WAIT,
                    f"{name}() awaited inside the {what} raised {exc!r}, not StateError",
                )
                return
        if waited.cancelled_caught:
            self.fail(
                Invariant.SELF_WAIT,
                f"{name}() awaited inside the {what} waited for itself "
                f"(it had not returned after {self.deadline / 2:g}s)",
            )
        else:
            self.fail(
                Invariant.SELF_WAIT,
                f"{name}() awaited inside the {what} returned instead of raising StateError",
            )

    def hook_fired(self, probe: _HookProbe, reason: BaseException | None) -> None:
        track = self.track(probe.lifecycle)
        probe.fired += 1
        self.log(
            EventKind.HOOK,
            f"{track.name}: the hook of step {probe.step} fires ({reason!r})",
            lifecycle=track.name,
            step=probe.step,
            reason=reason,
        )
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
            self.trio_steps = TrioSteps()
            trio.lowlevel.add_instrument(self.trio_steps)
            self.main_task = trio.lowlevel.current_task()
        baseline = {task.id for task in anyio.get_running_tasks()}
        self.root = self.factory()
        objects = self.objects()
        for index, obj in enumerate(objects):
            if obj is not None:
                self.handle(obj, index)
        by_caller: dict[int, list[tuple[int, Step]]] = {}
        for number, step in enumerate(self.program.steps, 1):
            by_caller.setdefault(step.caller, []).append((number, step))
        longest = max((len(steps) for steps in by_caller.values()), default=0)
        # No run that keeps its promises takes this long (each step and each
        # final stop is bounded by the deadline); past it, the run is hung.
        # Virtual time is free; on asyncio the bound is real time, and steps
        # there take milliseconds unless something hangs.
        if self.backend == "trio":
            bound = self.deadline * (longest + len(self.names) + 3)
        else:
            bound = self.deadline * 2 + 1
        self.scope = anyio.CancelScope()
        async with anyio.create_task_group() as watch:
            watch.start_soon(self._watchdog, bound, name="startable.testing watchdog")
            with self.scope, startable.instrumented(self):
                try:
                    async with startable.open_owner():
                        async with anyio.create_task_group() as callers:
                            self.helpers = callers
                            for caller, steps in sorted(by_caller.items()):
                                callers.start_soon(self._caller, steps, name=f"caller {caller}")
                        await self._final_stop()
                except Exception as exc:
                    self._expect(exc, "leaving open_owner()", StateError)
            watch.cancel_scope.cancel()
        if self.violation is not None:
            return
        self._final_checks()
        await self._no_tasks_left(baseline)
        self._user_invariants("after everything stopped")

    async def _watchdog(self, bound: float) -> None:
        await anyio.sleep(bound)
        self.hung(f"the run had not ended {bound:g}s after it began")

    def hung(self, what: str) -> None:
        """The run cannot end: report it, and abandon the event loop.

        If a background task of a cycle that reached STOPPED before the task
        ran is still running, the run hangs on it: that is the promise broken.
        """
        for track in self.tracks.values():
            if any(sleeper.entered and not sleeper.exited for sleeper in track.late):
                self.fail(
                    Invariant.TASKS,
                    f"a background task of {track.name}, started before it reached "
                    "STOPPED, was never cancelled: the run hung on it",
                )
        busy = [
            f"{track.name} was {track.state.name}"
            for track in self.tracks.values()
            if track.state not in (None, READY, STOPPED)
        ]
        self.fail(
            Invariant.DEADLINE,
            f"{what}: something waits where no cancellation reaches (such as a shielded "
            f"wait for a stop that never finishes)" + (f"; {', '.join(busy)}" if busy else ""),
        )
        if self.clock is not None:
            self.clock.abandon = True
            assert self.main_task is not None
            self.abandoned = coroutines_of(self.main_task)
        else:
            asyncio.get_running_loop().stop()

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
        operation = self.operations.get(step.action)
        index = step.target if operation is None else operation.target
        if callable(index):
            try:
                obj = index(self.root)
            except Exception:
                obj = None
        else:
            obj = self.objects()[index]
        if obj is None:
            self.log(EventKind.SKIPPED, f"{label}: skipped, its target does not exist now")
            return
        handle = self.handle(obj, None if callable(index) else index)
        self.log(EventKind.STEP, label, lifecycle=self.track(handle).name, step=number)
        self.in_flight += 1
        error: BaseException | None = None
        try:
            await self._act(number, step, handle, obj)
        except Exception as exc:
            error = exc
            self._expect(exc, label, *self._errors_of(step))
        finally:
            self.in_flight -= 1
            self.log(
                EventKind.STEP_END,
                f"{label} ends" + (f", raising {error!r}" if error is not None else ""),
                step=number,
                error=error,
            )

    def _errors_of(self, step: Step) -> tuple[type[BaseException], ...]:
        if step.action in (START, START_RAISING_HOOK, START_ASYNC_HOOK, START_CANCELLED):
            return (StateError,)
        if step.action in (CRASH, TASK):
            return (StateError,)
        if step.action in (STOP, STOP_REASON, STOP_CANCELLED):
            return ()
        operation = self.operations.get(step.action)
        if operation is None:
            return ()
        return (StateError, *operation.raises) if operation.states is not None else operation.raises

    async def _act(self, number: int, step: Step, handle: Lifecycle, obj: Any) -> None:
        action = step.action
        if action in (START, START_RAISING_HOOK, START_ASYNC_HOOK):
            probe = _HookProbe(self, handle, number, action)
            self.hooks.append(probe)
            try:
                await self._start(handle, probe)
            except anyio.get_cancelled_exc_class():
                probe.outcome = "cancelled"
                raise
            except BaseException:
                probe.outcome = "raised"
                raise
            probe.outcome = "returned"
        elif action == START_CANCELLED:
            with self._cancelled_after(step.delay):
                await self._start(handle, None)
        elif action == STOP:
            await self._stop(handle, None)
        elif action == STOP_REASON:
            await self._stop(handle, Reason(f"given to stop() at step {number}"))
        elif action == STOP_CANCELLED:
            with self._cancelled_after(step.delay):
                await self._stop(handle, None)
        elif action == STOP_NOWAIT:
            handle.stop_nowait(Reason(f"given to stop_nowait() at step {number}"))
        elif action == CRASH:
            track = self.track(handle)
            reason = Reason(f"raised by the task started at step {number}")
            handle.start_soon(self._crash, track, reason)
        elif action == TASK:
            sleeper = _Sleeper()
            handle.start_soon(self._sleep, sleeper)
            self.track(handle).sleepers.append(sleeper)
        else:
            await self._call(self.operations[action], handle, obj)

    def _cancelled_after(self, checkpoints: int) -> anyio.CancelScope:
        """A scope that another task cancels after `checkpoints` checkpoints.

        The canceller runs in the callers' task group, not in one around the
        call: errors of the call then come out as themselves.
        """
        scope = anyio.CancelScope()
        assert self.helpers is not None
        self.helpers.start_soon(_cancel_after, scope, checkpoints, name="canceller")
        return scope

    async def _start(self, handle: Lifecycle, hook: _HookProbe | None) -> None:
        """`await handle.start(hook)`, checking what it returned or raised."""
        track = self.track(handle)
        begin_state = track.state or handle.state
        begin_started = track.started_moves
        begin_errors = len(track.start_errors)
        begin_interrupts = track.start_interrupts
        try:
            await handle.start(hook)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            own = track.start_errors[begin_errors:]
            if any(exc is error for error in own):
                raise  # its raw start's own error (or that of the start it joined)
            if isinstance(exc, StateError):
                if handle.state is not STOPPING:
                    self.fail(
                        Invariant.START_REFUSED,
                        f"start() of {track.name} raised StateError ({exc}) while it was "
                        f"{handle.state.name}",
                    )
            elif isinstance(exc, AbortedError):
                if track.start_interrupts == begin_interrupts:
                    self.fail(
                        Invariant.START_OUTCOME,
                        f"start() of {track.name} raised AbortedError, but no start of it "
                        "was interrupted meanwhile",
                    )
            else:
                expected = f" ({own[-1]!r})" if own else ""
                self.fail(
                    Invariant.START_OUTCOME,
                    f"start() of {track.name} raised {exc!r}, which is not the error its raw "
                    f"start raised{expected}",
                )
            raise
        if track.started_moves == begin_started and begin_state is not STARTED:
            self.fail(
                Invariant.START_OUTCOME,
                f"start() of {track.name} returned, but it did not become STARTED "
                f"(it is {handle.state.name})",
            )

    async def _stop(self, handle: Lifecycle, reason: BaseException | None) -> None:
        """`await handle.stop(reason)`, checking what it returned or raised."""
        track = self.track(handle)
        begin_state = track.state or handle.state
        begin = len(track.stopped)
        stoppings = track.stopping_moves
        seen: list[tuple[int, State | None]] = []  # (STOPPED moves, state) when it resumed
        task = None
        if self.trio_steps is not None:
            task = trio.lowlevel.current_task()
            self.trio_steps.watch[task] = lambda: seen.append((len(track.stopped), track.state))
        outcome: BaseException | None = None
        try:
            await handle.stop(reason)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            outcome = exc
        finally:
            if task is not None:
                assert self.trio_steps is not None
                self.trio_steps.watch.pop(task, None)
        if len(track.stopped) == begin and begin_state is not STOPPED:
            how = "raised" if outcome is not None else "returned"
            self.fail(
                Invariant.STOP_OUTCOME,
                f"stop() of {track.name} {how} while it was {handle.state.name}, "
                "before it was STOPPED",
            )
        tied = self._tied_stop(track, begin, stoppings, seen)
        if tied is not None:
            must_raise = tied.stop_errors or tied.stop_interrupted
            if must_raise and outcome is None:
                what = repr(tied.stop_errors[0]) if tied.stop_errors else "an interruption"
                self.fail(
                    Invariant.STOP_ERRORS,
                    f"stop() of {track.name} returned normally, though the stop it waited "
                    f"for failed with {what}",
                )
            elif tied.stop_outcome is _NO_OUTCOME:
                tied.stop_outcome = outcome
            elif tied.stop_outcome is not outcome:
                self.fail(
                    Invariant.STOP_ERRORS,
                    f"two callers of the same stop of {track.name} saw different outcomes: "
                    f"{_outcome(tied.stop_outcome)} and {_outcome(outcome)}",
                )
        if outcome is not None:
            raise outcome

    def _tied_stop(
        self, track: _Track, begin: int, stoppings: int, seen: list[tuple[int, State | None]]
    ) -> _Round | None:
        """The stop a stop() call waited for (or ran), if that can be told for sure."""
        if self.trio_steps is not None:
            if not seen:
                return None
            moves, state = seen[0]
            if len(track.stopped) == moves:  # nothing stopped after it looked: it saw STOPPED
                if state is not STOPPED:
                    self.fail(
                        Invariant.STOP_OUTCOME,
                        f"stop() of {track.name} found it {state.name if state else 'READY'} "
                        "and returned before it was STOPPED",
                    )
                return None
            return track.stopped[moves]
        # Elsewhere: only a stop this very call began (in its own task) is sure.
        me = anyio.get_current_task().id
        return next(
            (
                r
                for r in track.stopped[begin:]
                if r.stopping_task == me and r.stopping_index > stoppings
            ),
            None,
        )

    async def _call(self, operation: Operation, handle: Lifecycle, obj: Any) -> None:
        state = handle.state
        track = self.track(handle)
        self.operations_in_flight += 1
        if operation.drain:
            track.draining.append(operation.name)
        try:
            result = operation.call(obj)
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
            if operation.drain:
                track.draining.remove(operation.name)
        self._check_guard(operation, state)

    def _check_guard(self, operation: Operation, state: State) -> None:
        if operation.states is not None and state not in operation.states:
            allowed = ", ".join(s.name for s in State if s in operation.states)
            self.fail(
                Invariant.GUARDS,
                f"the body of {operation.name} ran while its service was {state.name} "
                f"(allowed: {allowed})",
            )

    async def _crash(self, track: _Track, reason: Reason) -> None:
        await anyio.lowlevel.checkpoint()
        if track.state is STARTED:
            track.round.crashes.append(reason)
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
        stopped: set[int] = set()
        for index in range(len(self.names)):
            obj = self.objects()[index]  # looked up again: the root's stop may change them
            if obj is None:
                continue
            handle = self.handle(obj, index)
            if id(handle) in stopped:
                continue
            stopped.add(id(handle))
            label = f"the final stop of {self.names[index]}"
            self.log(EventKind.FINAL_STOP, label, lifecycle=self.track(handle).name)
            with anyio.move_on_after(self.deadline) as bounded:
                try:
                    await self._stop(handle, None)
                except Exception as exc:
                    self._expect(exc, label)
            if bounded.cancelled_caught:
                self.fail(Invariant.DEADLINE, f"{label} did not return within {self.deadline}s")

    def _final_checks(self) -> None:
        for track in self.tracks.values():
            state = track.lifecycle.state if track.lifecycle is not None else track.state
            if state not in (READY, STOPPED, None):
                self.fail(Invariant.TASKS, f"{track.name} was {state.name} after its owner closed")
            if track.round.crashes and track.stopping_from is not STARTED:
                self.fail(
                    Invariant.CRASH,
                    f"a background task of {track.name} raised {track.round.crashes[0]!r} "
                    "while it was STARTED, but it never began stopping",
                )
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
        objects = self.objects()
        handles = tuple(None if obj is None else self.get_lifecycle(obj) for obj in objects)
        view = RunView(tuple(objects), handles, self.steps_done, tuple(self.events))
        for invariant in self.invariants:
            try:
                invariant(view)
            except Exception as exc:
                name = getattr(invariant, "__name__", repr(invariant))
                self.fail(Invariant.USER, f"{name} failed {when}: {exc}")
                return


async def _cancel_after(scope: anyio.CancelScope, checkpoints: int) -> None:
    for _ in range(checkpoints):
        await anyio.lowlevel.checkpoint()
    scope.cancel()


def _with(fault: Fault) -> str:
    return "" if fault == _NO_FAULT else f" [fault: {fault.describe()}]"


def _how(ran: bool, error: BaseException | None) -> str:
    replaced = "" if ran else " without running (a fault or a cancellation came first)"
    return replaced + (f", raising {error!r}" if error is not None else "")


def _outcome(outcome: BaseException | None) -> str:
    return "it returned" if outcome is None else f"it raised {outcome!r}"


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
    the deadline cost no real time and a hang shows at once. trio's
    scheduling order is seeded the way hypothesis seeds it for each example,
    whether or not this is called from a hypothesis test, so a program
    interleaves the same way every time it runs.

    Raises:
        LifecycleViolation: describing the first broken invariant.
    """
    options = RunOptions(
        targets=targets,
        lifecycle=lifecycle,
        operations=operations,
        invariants=invariants,
        expected_errors=expected_errors,
        backend=backend,
        deadline=deadline,
    )
    error = replayed(program, factory, options).violation_error()
    if error is not None:
        raise error


@attrs.frozen(kw_only=True)
class RunOptions:
    """How a program is run: on what, checking what (`run_program`'s arguments;
    `names` labels the targets in reports)."""

    targets: Callable[[Any], Sequence[Any]] | None = None
    lifecycle: Callable[[Any], Lifecycle] = startable.of
    operations: Sequence[Operation] = ()
    invariants: Sequence[Callable[[RunView], object]] = ()
    expected_errors: tuple[type[BaseException], ...] = ()
    backend: Backend = "trio"
    deadline: float | None = None
    names: Sequence[str] | None = None


def replayed(program: Program, factory: Callable[[], Any], options: RunOptions) -> Recorder:
    """`_run`, seeded as under hypothesis even when called from outside a test.

    Hypothesis seeds the random generators registered with it (trio's
    scheduler registers its own) for each example; outside a test, running
    the one program as a one-example test gives it that same seeding.
    """
    if hypothesis.currently_in_test_context():
        return _run(program, factory, options)
    recorders: list[Recorder] = []

    @hypothesis.settings(
        database=None,
        max_examples=1,
        deadline=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(strategies.just(program))
    def once(program: Program) -> None:
        recorders.append(_run(program, factory, options))

    once()
    return recorders[-1]


def _run(program: Program, factory: Callable[[], Any], options: RunOptions) -> Recorder:
    backend = options.backend
    recorder = Recorder(
        program,
        factory=factory,
        targets=options.targets or (lambda root: [root]),
        lifecycle=options.lifecycle,
        operations=options.operations,
        invariants=options.invariants,
        expected_errors=options.expected_errors,
        backend=backend,
        deadline=options.deadline if options.deadline is not None else default_deadline(backend),
        names=options.names,
    )
    try:
        if backend == "trio":
            recorder.clock = WatchdogClock()
            clock = {"clock": recorder.clock.clock}
            anyio.run(recorder.main, backend="trio", backend_options=clock)
        else:
            anyio.run(recorder.main, backend=backend)
    except trio.TrioInternalError as exc:
        if not isinstance(exc.__cause__, Hung):
            raise
        close_abandoned(recorder.abandoned)
    except RuntimeError as exc:
        if recorder.violation is None or "Event loop stopped" not in str(exc):
            raise
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
