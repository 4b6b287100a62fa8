"""The lifecycle engine: `Startable` and `of`."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from functools import partial
from time import perf_counter
from types import CoroutineType, MethodType
from typing import Any, Final, TypeAlias, TypeGuard, cast, final

import anyio
import anyio.lowlevel
import attrs

from ._calls import Calls
from ._exceptions import AbortedError, NoOwnerError, StartableError, StateError, StoppedError
from ._instrument import INSTRUMENTS, Instrument
from ._lifecycle import (
    START_ACCEPTS,
    START_REPLIES,
    STOP_REPLIES,
    SUCCESSORS,
    Reply,
    State,
    describe_states,
)
from ._markers import ClassSpec, spec_for, takes_reason
from ._owner import CONTEXT, Owner, Task, combine, current_owner, inside_raw, lives_within
from ._registry import REGISTRY, ObjectRef, make_ref

READY, STARTING, STARTED, STOPPING, STOPPED = State

#: An on_stopping hook: called with the stop reason when a cycle leaves STARTED.
Hook: TypeAlias = Callable[[BaseException | None], object]


class _NoOwner:
    """Stands in for an owner where there is none: only its checkpoint is used.

    The owners' checkpoint is resolved once for the running backend; a call
    made with no owner in context uses anyio's, which looks it up each time.
    """

    checkpoint = staticmethod(anyio.lowlevel.checkpoint)


_FALLBACK: Final = _NoOwner()


@attrs.frozen
class StateChange:
    """One move of a lifecycle, as given to subscribers.

    Attributes:
        startable: the lifecycle that moved.
        previous: the state it left.
        current: the state it entered.
        reason: the stop reason (or start error) for moves into STOPPING and
            STOPPED; None otherwise.
        cycle: the number of the cycle (1 for the first start).
    """

    startable: Startable
    previous: State
    current: State
    reason: BaseException | None
    cycle: int


@attrs.frozen
class StartableStatistics:
    """A snapshot of a lifecycle, from `Startable.statistics`.

    Attributes:
        state: the current state.
        cycle: the number of the current (or last) cycle; 0 before the first start.
        start_duration: seconds the last raw start took, if one finished.
        stop_duration: seconds the last stop took (raw stop and teardown), if one finished.
        stop_reason: the reason of the current or last stop.
        last_error: the last error raised by raw start, raw stop, a hook or a
            background task, or given as stop reason.
        tasks: background and hook tasks currently alive in this cycle.
        owned: lifecycles started under this one that are not yet STOPPED.
        hooks: on_stopping hooks waiting for this cycle to leave STARTED.
    """

    state: State
    cycle: int
    start_duration: float | None
    stop_duration: float | None
    stop_reason: BaseException | None
    last_error: BaseException | None
    tasks: int
    owned: int
    hooks: int


class _Cycle(Owner):
    """One cycle of a lifecycle, from STARTING to STOPPED; owns what it starts."""

    __slots__ = (
        "holders",
        "hooks",
        "instruments",
        "last_error",
        "number",
        "outcome",
        "pending",
        "reason",
        "runner",
        "start_duration",
        "start_error",
        "start_event",
        "startable",
        "stop_duration",
        "stop_errors",
        "stop_event",
        "stop_time",
        "stop_waiters",
        "target",
    )

    def __init__(self, startable: Startable, parent: Owner, number: int, target: object) -> None:
        # Every field set here, without calling Owner.__init__: this runs on
        # each start, and the call is a measurable share of a no-op cycle.
        self.parent = parent
        self.task_group = parent.task_group
        self.checkpoint = parent.checkpoint
        self.children = None
        self.tasks = None
        self.closing = False
        self.closed = False
        self._idle = None
        self.startable = startable
        self.number = number
        self.target = target  # held strongly while the cycle runs
        # The instruments of the context where the cycle began see all of it,
        # whichever task makes its later moves.
        self.instruments = INSTRUMENTS.get()
        # (hook, the owner of the code that passed it): an async hook's task
        # belongs to whoever asked for it.
        self.hooks: list[tuple[Hook, Owner | None]] | None = None
        # Owners besides `parent` that started this cycle while it ran: it is
        # stopped by an owner's close only once none of them holds it.
        self.holders: list[Owner] | None = None
        self.start_event: anyio.Event | None = None
        self.stop_event: anyio.Event | None = None
        self.start_error: BaseException | None = None
        self.pending = False  # a stop was asked for during STARTING
        self.reason: BaseException | None = None
        self.stop_errors: list[Exception] | None = None
        self.outcome: Exception | None = None
        self.stop_waiters = 0
        self.runner: Task | None = None
        self.start_duration: float | None = None
        self.stop_duration: float | None = None
        self.stop_time = 0.0
        self.last_error: BaseException | None = None

    def describe(self) -> str:
        return repr(self.startable)

    def release(self) -> None:
        """Let go of its lifecycle, whose object is gone (see `Startable._release`)."""
        self.startable = _RELEASED

    def crash(self, exc: Exception) -> None:
        """A task of this cycle failed: the service stops with that error."""
        startable = self.startable
        self.last_error = exc
        state = startable._state
        if startable._cycle is not self or state is STOPPED:  # pragma: no cover - defensive
            raise exc
        if state is STARTING and not self.pending:
            self.pending = True
            self.reason = exc
        elif state is STARTED:
            startable._begin_stop(self, exc)
            startable._spawn_runner(self)
        else:
            exc.add_note(f"raised by a task of {startable!r} while it was {state.name}")
            self.record(exc)

    def record(self, exc: Exception) -> None:
        """Keep an error for the outcome of this cycle's stop."""
        if self.stop_errors is None:
            self.stop_errors = [exc]
        else:
            self.stop_errors.append(exc)


@attrs.frozen
class _FuncSpec:
    """The raw hooks of a Startable made from callables."""

    start: Callable[[], object] | None
    stop: Callable[..., object] | None
    stop_takes_err: bool


def _name_of(func: object) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


@final
class Startable:
    """The lifecycle of one object.

    Get the one belonging to an object with `startable.of`; or build
    one from two callables, without decorators:

    ```python
    lifecycle = startable.Startable(open_pool, close_pool, name="pool")
    ```

    The table on the *Semantics* page says exactly what `start` and
    `stop` do in each state. In short: a start while STARTING joins it,
    a stop while STARTING waits for the raw start and then stops, a failed
    raw start cleans up and re-raises, and a start while STOPPED begins a new
    cycle.

    Args:
        raw_start: called (and awaited if it returns an awaitable) to start.
        raw_stop: called to stop; receives the stop reason if it takes an
            argument.
        name: used in `repr()` and error messages.
    """

    __slots__ = (
        "__weakref__",
        "_calls",
        "_cycle",
        "_name",
        "_observers",
        "_ref",
        "_spec",
        "_state",
    )

    _state: State
    _calls: Calls | None
    _cycle: _Cycle | None
    _ref: ObjectRef | None
    _spec: ClassSpec | _FuncSpec
    _name: str | None
    _observers: list[Callable[[StateChange], object]] | None

    def __init__(
        self,
        raw_start: Callable[[], object] | None = None,
        raw_stop: Callable[..., object] | None = None,
        *,
        name: str | None = None,
    ) -> None:
        for label, func in (("raw_start", raw_start), ("raw_stop", raw_stop)):
            if func is not None and not callable(func):
                raise TypeError(f"Startable(): {label} must be callable, got {func!r}")
        self._state = READY
        self._cycle = None
        self._ref = None
        stop_takes_err = raw_stop is not None and takes_reason(raw_stop, bound=True)
        self._spec = _FuncSpec(raw_start, raw_stop, stop_takes_err)
        self._name = name if name is not None else (raw_start and _name_of(raw_start))
        self._observers = None
        self._calls = None

    @classmethod
    def _for_object(cls, ref: ObjectRef, spec: ClassSpec) -> Startable:
        self = object.__new__(cls)
        self._state = READY
        self._cycle = None
        self._ref = ref
        self._spec = spec
        self._name = None
        self._observers = None
        self._calls = None
        return self

    def _release(self) -> None:
        """Its object is gone: its last cycle lets go of it (called from the
        registry's weak-reference callback).

        A cycle and its lifecycle refer to each other; once the object is
        freed, nothing else refers to either, and without this they would
        be garbage that only the cyclic collector frees. Nothing runs in
        the cycle by then (a cycle holds its object until STOPPED).
        """
        cycle = self._cycle
        if cycle is not None:
            cycle.release()

    # -- introspection ------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state."""
        return self._state

    @property
    def name(self) -> str:
        """A short label for logs: the `name` given, or the object's class name."""
        if self._ref is not None:
            obj = self._ref()
            return type(obj).__qualname__ if obj is not None else "<collected>"
        return self._name or "Startable"

    @property
    def target(self) -> object | None:
        """The object this lifecycle belongs to (None if made from callables or collected)."""
        return None if self._ref is None else self._ref()

    def __repr__(self) -> str:
        if self._ref is not None:
            obj = self._ref()
            if obj is None:
                label = "<collected>"
            else:
                own = own_name(obj)
                named = f" {own!r}" if own is not None else ""
                label = f"{type(obj).__qualname__}{named} at {id(obj):#x}"
        else:
            label = self._name or f"at {id(self):#x}"
        cycle = self._cycle
        number = f" cycle {cycle.number}" if cycle is not None else ""
        return f"<Startable {label}: {self._state.name}{number}>"

    def statistics(self) -> StartableStatistics:
        """A snapshot of this lifecycle's current cycle and its last phases."""
        cycle = self._cycle
        if cycle is None:
            return StartableStatistics(self._state, 0, None, None, None, None, 0, 0, 0)
        return StartableStatistics(
            state=self._state,
            cycle=cycle.number,
            start_duration=cycle.start_duration,
            stop_duration=cycle.stop_duration,
            stop_reason=cycle.reason,
            last_error=cycle.last_error,
            tasks=len(cycle.tasks or ()),
            owned=len(cycle.children or ()),
            hooks=len(cycle.hooks or ()),
        )

    def subscribe(self, callback: Callable[[StateChange], object]) -> Callable[[], None]:
        """Call `callback(change)` synchronously on every move of this lifecycle.

        Callbacks run inside the move, in the task that causes it; they must
        not block. An exception from a callback is logged on the `startable`
        logger and does not affect the lifecycle.

        Returns:
            A function that removes the subscription (calling it twice is fine).
        """
        if self._observers is None:
            self._observers = []
        self._observers.append(callback)

        def unsubscribe() -> None:
            if self._observers is not None and callback in self._observers:
                self._observers.remove(callback)

        return unsubscribe

    async def wait_state(self, *states: State) -> State:
        """Wait until the lifecycle is in one of `states`; return that state.

        Returns at once (after a checkpoint) if it already is.
        """
        wanted = frozenset(states)
        if not wanted:
            raise TypeError("wait_state() needs at least one State")
        if self._state in wanted:
            await anyio.lowlevel.checkpoint()
            return self._state
        event = anyio.Event()
        reached: list[State] = []

        def observe(change: StateChange) -> None:
            if change.current in wanted and not reached:
                reached.append(change.current)
                event.set()

        unsubscribe = self.subscribe(observe)
        try:
            await event.wait()
        finally:
            unsubscribe()
        return reached[0]

    # -- the two calls ------------------------------------------------------

    async def start(self, on_stopping: Hook | None = None) -> None:
        """Start, or join the start in flight; see the table for every state.

        Args:
            on_stopping: called synchronously with the stop reason when this
                cycle leaves STARTED (not if the start fails: `start()`
                raises then). Passing the parent's `stop` —
                `await startable.of(child).start(startable.of(self).stop)` —
                makes the parent begin stopping in the same step as the
                child, with the child's reason. If the hook returns an
                awaitable, it runs as a task of the owner.

        Raises:
            StateError: while STOPPING, or if awaited from inside this
                object's own raw start.
            NoOwnerError: when beginning a cycle with no owner in context.
            Exception: whatever the raw start raised (after the raw stop ran).
        """
        cycle = self._cycle
        owner: Owner | None = cycle if cycle is not None and self._state is not STOPPED else None
        await (owner or CONTEXT.get()[0] or _FALLBACK).checkpoint()
        state = self._state  # read after the checkpoint: others may have run
        reply = START_REPLIES.get(state)
        if reply is not Reply.BEGIN:
            await self._start_without_beginning(state, reply, on_stopping)
            return
        await self._begin_cycle(on_stopping)

    async def _start_without_beginning(
        self, state: State, reply: Reply | None, on_stopping: Hook | None
    ) -> None:
        if reply is Reply.RETURN:
            self._hold()
            self._add_hook(on_stopping)
        elif reply is Reply.JOIN:
            self._hold()
            self._add_hook(on_stopping)
            await self._join_start()
        else:
            raise StateError(
                f"cannot start {self!r}: start() is accepted in "
                f"{describe_states(START_ACCEPTS)}, not {state.name}",
                actual=state,
                expected=START_ACCEPTS,
            )

    async def stop(self, err: BaseException | None = None) -> None:
        """Stop, or join the stop in flight; see the table for every state.

        Args:
            err: the reason, given to on_stopping hooks and to the raw stop.
                Pass the error when a service stops itself because something
                failed; leave it None for an ordinary stop.

        Raises:
            StateError: if awaited from inside this object's own raw start or
                raw stop (it would wait for itself).
            AbortedError: if the stop this call joined was interrupted.
            Exception: whatever the raw stop (or a hook, or a task left
                running) raised; several errors come as an ExceptionGroup.
        """
        cycle = self._cycle
        owner: Owner | None = cycle if cycle is not None and self._state is not STOPPED else None
        await (owner or CONTEXT.get()[0] or _FALLBACK).checkpoint()
        state = self._state  # read after the checkpoint: others may have run
        reply = STOP_REPLIES[state]
        cycle = self._cycle
        if reply is Reply.BEGIN:
            assert cycle is not None
            current = CONTEXT.get()[0]
            if err is None and cycle.holders and current is not None:
                err = self._shared_reason(cycle, current, "stop")
            while current is not None and current is not cycle:
                current = current.parent
            if current is not None:
                # Called from a task this stop will cancel: let the owner run it.
                self._begin_stop(cycle, err)
                self._spawn_runner(cycle)
                await self._join_stop(cycle)
                return
            self._begin_stop(cycle, err)
            outcome = await self._finish_stop(cycle)
            if outcome is not None:
                raise outcome
        elif reply is Reply.RETURN:
            if state is READY:
                self._move(STOPPED, err)
        else:
            assert cycle is not None
            if inside_raw(cycle):
                raise StateError(
                    f"stop() of {self!r} was awaited inside its own raw "
                    f"{'start' if state is STARTING else 'stop'} and would wait for itself",
                    actual=state,
                    expected=(READY, STARTED, STOPPED),
                )
            if reply is Reply.DEFER and not cycle.pending:
                cycle.pending = True
                cycle.reason = err
            await self._join_stop(cycle)

    def stop_nowait(self, err: BaseException | None = None) -> None:
        """Begin stopping now, without waiting; for synchronous callbacks.

        Does what `stop(err)` does, but returns at once: in STARTED the
        state becomes STOPPING and the hooks run before this returns, and the
        raw stop runs in a task of the owner. In STARTING the stop is
        scheduled for when the raw start finishes. Errors from the raw stop go
        to the owner (see *Errors go up the ownership tree*).
        """
        state = self._state
        cycle = self._cycle
        if state is READY:
            self._move(STOPPED, err)
        elif state is STARTING:
            assert cycle is not None
            if not cycle.pending:
                cycle.pending = True
                cycle.reason = err
        elif state is STARTED:
            assert cycle is not None
            self._begin_stop(cycle, err)
            self._spawn_runner(cycle)

    # -- background tasks ---------------------------------------------------

    def _tasks_owner(self, what: str) -> _Cycle:
        cycle = self._cycle
        state = self._state
        if cycle is None or state not in (STARTING, STARTED, STOPPING) or cycle.closing:
            raise StateError(
                f"{what} of {self!r}: background tasks can be started from STARTING "
                f"until the end of the raw stop, not while {state.name}",
                actual=state,
                expected=(STARTING, STARTED, STOPPING),
            )
        return cycle

    def start_soon(
        self, func: Callable[..., Awaitable[Any]], *args: Any, name: object = None
    ) -> None:
        """Run `func(*args)` as a background task of the current cycle.

        The task is cancelled and awaited at the end of the raw stop, before
        the state becomes STOPPED. If it raises, the service stops with that
        error (during STARTING: once the raw start finishes).

        Raises:
            StateError: outside STARTING, STARTED and the raw stop.
        """
        self._tasks_owner("start_soon()").spawn(func, *args, name=name)

    async def start_task(
        self, func: Callable[..., Awaitable[Any]], *args: Any, name: object = None
    ) -> Any:
        """Start a background task and wait until it reports that it is ready.

        `func` is called as `func(*args, task_status=status)` and must
        call `status.started(value)`; this returns `value`. An error
        raised before `started()` is raised here (so a raw start that waits
        for a task fails with that task's error); after it, the task behaves
        as with `start_soon`.
        """
        return await self._tasks_owner("start_task()").start_task(func, *args, name=name)

    # -- the engine ---------------------------------------------------------

    def _move(self, new: State, reason: BaseException | None = None) -> None:
        old = self._state
        if new not in SUCCESSORS[old]:  # pragma: no cover - a bug in the engine
            raise AssertionError(f"startable: illegal move {old.name} -> {new.name} of {self!r}")
        self._state = new
        cycle = self._cycle
        instruments = cycle.instruments if cycle is not None else INSTRUMENTS.get()
        if self._observers or instruments:
            change = StateChange(self, old, new, reason, cycle.number if cycle else 0)
            for callback in [*(self._observers or ()), *(i.on_move for i in instruments)]:
                try:
                    callback(change)
                except Exception:
                    _logger().exception("subscriber %r of %r failed", callback, self)

    def add_on_stopping(self, hook: Hook) -> None:
        """Register *hook* on the current cycle, synchronously, without starting.

        The hook is the same as `start(on_stopping=hook)` registers, and it
        follows the same rules (called once with the stop reason when the
        cycle leaves STARTED; the same hook twice counts once; not called if
        the start fails), but this call has no checkpoint and does not make
        the owner in context a holder of the cycle: it observes a lifecycle
        someone else runs, as a supervisor watching a dependency does.

        Raises:
            StateError: unless STARTING or STARTED (there is no cycle to
                watch, or it is already leaving STARTED).
        """
        state = self._state
        if state is not STARTING and state is not STARTED:
            raise StateError(
                f"cannot add an on_stopping hook to {self!r}: add_on_stopping() is "
                f"accepted in STARTING and STARTED, not {state.name}",
                actual=state,
                expected=(STARTING, STARTED),
            )
        self._add_hook(hook)

    def _add_hook(self, hook: Hook | None) -> None:
        if hook is None:
            return
        cycle = self._cycle
        assert cycle is not None
        if cycle.hooks is None:
            cycle.hooks = [(hook, current_owner())]
        elif all(hook != known for known, _ in cycle.hooks):
            cycle.hooks.append((hook, current_owner()))

    def _hold(self) -> None:
        """Make the owner in context a holder of the current cycle (a shared start)."""
        owner = CONTEXT.get()[0]
        cycle = self._cycle
        assert cycle is not None
        if owner is None or owner is cycle.parent or owner.closing:
            return
        holders = cycle.holders
        if holders is not None and owner in holders:
            return
        above: Owner | None = owner
        while above is not None:  # never held by what it owns: it would hold itself up
            if above is cycle:
                return
            above = above.parent
        if holders is None:
            cycle.holders = [owner]
        else:
            holders.append(owner)
        if owner.children is None:
            owner.children = {self: None}
        else:
            owner.children[self] = None

    def _shared_reason(self, cycle: _Cycle, by: Owner, how: str) -> StoppedError | None:
        """The reason of a plain stop of a shared lifecycle begun by one of its holders.

        None unless `by` (a holder that is itself stopping) stops it while
        another holder still runs: that one will stop through its hook, and
        must hear why.
        """
        holders = [cycle.parent, *(cycle.holders or ())]
        if by not in holders or not (by.closing or _is_stopping(by)):
            return None
        others = [h for h in holders if h is not None and h is not by and _is_running(h)]
        if not others:
            return None
        error = StoppedError(
            f"{self!r} was stopped by the {how} of {by.describe()}, "
            f"while {', '.join(h.describe() for h in others)} still held it"
        )
        if isinstance(by, _Cycle) and by.reason is not None:
            error.__cause__ = by.reason
        return error

    def _call_raw_start(self, target: object) -> object:
        spec = self._spec
        if type(spec) is ClassSpec:
            name = spec.start
            return None if name is None else getattr(target, name)()
        assert isinstance(spec, _FuncSpec)
        return None if spec.start is None else spec.start()

    def _call_raw_stop(self, target: object, reason: BaseException | None) -> object:
        spec = self._spec
        if type(spec) is ClassSpec:
            name = spec.stop
            func = None if name is None else getattr(target, name)
        else:
            assert isinstance(spec, _FuncSpec)
            func = spec.stop
        if func is None:
            return None
        return func(reason) if spec.stop_takes_err else func()

    async def _instrumented(
        self,
        instruments: tuple[Instrument, ...],
        stopping: _Cycle | None,
        raw: Callable[[], object],
    ) -> None:
        """Call a raw hook through the instruments, outermost first."""

        async def call() -> None:
            result = raw()
            if _isawaitable(result):
                await result

        wrapped: Callable[[], Awaitable[None]] = call
        for instrument in reversed(instruments):
            if stopping is None:
                wrapped = partial(instrument.raw_start, self, wrapped)
            else:
                wrapped = partial(instrument.raw_stop, self, stopping.reason, wrapped)
        await wrapped()

    async def _begin_cycle(self, on_stopping: Hook | None) -> None:
        outer = CONTEXT.get()
        owner = outer[0]
        if owner is None:
            raise NoOwnerError(
                f"cannot start {self!r}: it has no owner. Start it inside "
                "`async with startable.running(obj)` or `startable.open_owner()`, "
                "or from another service's raw start"
            )
        if owner.closing:
            raise NoOwnerError(f"cannot start {self!r}: its owner {owner.describe()} is stopping")
        ref = self._ref
        target = None if ref is None else ref()
        if target is None and ref is not None:
            raise StartableError(
                f"the object of {self!r} has been garbage-collected: startable.of() refers to "
                "its object weakly, so keep a reference to the object itself"
            )
        previous = self._cycle
        cycle = _Cycle(self, owner, previous.number + 1 if previous else 1, target)
        if on_stopping is not None:
            cycle.hooks = [(on_stopping, owner)]
        self._cycle = cycle
        children = owner.children
        if children is None:
            owner.children = {self: None}
        else:
            children[self] = None
        began = perf_counter()
        self._move(STARTING)
        token = CONTEXT.set((cycle, (cycle, outer[1])))
        try:
            if cycle.instruments:
                raw = partial(self._call_raw_start, target)
                await self._instrumented(cycle.instruments, None, raw)
            else:
                spec = self._spec
                if type(spec) is ClassSpec:
                    result = None if spec.start is None else getattr(target, spec.start)()
                else:
                    result = self._call_raw_start(target)
                if type(result) is CoroutineType or _isawaitable(result):
                    await result
        except BaseException as exc:
            CONTEXT.reset(token)
            cycle.start_duration = perf_counter() - began
            if isinstance(exc, Exception):
                self._start_failed(cycle, exc)
                outcome = await self._finish_stop(cycle)
                if outcome is not None:
                    exc.add_note(f"the raw stop of {self!r} that followed also failed: {outcome!r}")
                raise
            # Cancelled (or KeyboardInterrupt): the start is abandoned and its
            # clean-up is handed to the owner, so this task can unwind at once.
            why = _cancel_reason(exc)
            aborted = AbortedError(f"the start of {self!r} was abandoned: {why}", why)
            self._start_failed(cycle, aborted)
            self._spawn_runner(cycle)
            raise
        CONTEXT.reset(token)
        cycle.start_duration = perf_counter() - began
        self._move(STARTED)
        if cycle.start_event is not None:
            cycle.start_event.set()
        if cycle.pending and self._cycle is cycle and self._state is STARTED:
            self._begin_stop(cycle, cycle.reason)
            self._spawn_runner(cycle)

    def _start_failed(self, cycle: _Cycle, error: BaseException) -> None:
        cycle.start_error = cycle.reason = cycle.last_error = error
        cycle.hooks = None  # a failed start is reported by start(), not by hooks
        cycle.stop_time = perf_counter()
        self._move(STOPPING, error)
        if cycle.start_event is not None:
            cycle.start_event.set()

    async def _join_start(self) -> None:
        cycle = self._cycle
        assert cycle is not None
        if inside_raw(cycle):
            raise StateError(
                f"start() of {self!r} was awaited inside its own raw start "
                "and would wait for itself",
                actual=STARTING,
                expected=(READY, STARTED, STOPPED),
            )
        if cycle.start_event is None:
            cycle.start_event = anyio.Event()
        await cycle.start_event.wait()
        if cycle.start_error is not None:
            raise cycle.start_error

    def _begin_stop(self, cycle: _Cycle, reason: BaseException | None) -> None:
        """STARTED -> STOPPING, then call the hooks; synchronous."""
        cycle.reason = reason
        if reason is not None:
            cycle.last_error = reason
        cycle.stop_time = perf_counter()
        self._move(STOPPING, reason)
        hooks = cycle.hooks
        if hooks is None:
            return
        cycle.hooks = None
        instruments = cycle.instruments
        for hook, registrant in hooks:
            try:
                if instruments:
                    result = self._instrumented_hook(instruments, hook, reason)
                else:
                    result = self._call_hook(hook, reason)
                if _isawaitable(result):
                    host = registrant if registrant is not None and not registrant.closed else None
                    host = host or cycle.parent
                    assert host is not None
                    name = f"on_stopping hook {_name_of(hook)}"
                    host.spawn(_await, result, name=name, internal=True)
            except Exception as exc:
                exc.add_note(f"raised by the on_stopping hook {_name_of(hook)} of {self!r}")
                cycle.last_error = exc
                cycle.record(exc)

    @staticmethod
    def _call_hook(hook: Hook, reason: BaseException | None) -> object:
        if type(hook) is MethodType and hook.__func__ is _STOP:
            # `startable.of(parent).stop`: begin the parent's stop now.
            cast(Startable, hook.__self__).stop_nowait(reason)
            return None
        return hook(reason)

    def _instrumented_hook(
        self, instruments: tuple[Instrument, ...], hook: Hook, reason: BaseException | None
    ) -> object:
        """Call one on_stopping hook through the instruments, outermost first."""

        wrapped: Callable[[], object] = partial(self._call_hook, hook, reason)
        for instrument in reversed(instruments):
            wrapped = partial(instrument.on_stopping_hook, self, hook, reason, wrapped)
        return wrapped()

    def _spawn_runner(self, cycle: _Cycle) -> None:
        assert cycle.parent is not None
        cycle.runner = cycle.parent.spawn(
            self._stop_runner, cycle, runner=True, name=f"stop {self!r}"
        )

    async def _stop_runner(self, cycle: _Cycle) -> None:
        owner = cycle.parent
        assert owner is not None
        outcome = await self._finish_stop(cycle)
        if outcome is not None and cycle.stop_waiters == 0:
            owner.crash(outcome)  # nobody was waiting: the error goes up

    async def _join_stop(self, cycle: _Cycle) -> None:
        if cycle.stop_event is None:
            cycle.stop_event = anyio.Event()
        cycle.stop_waiters += 1
        try:
            await cycle.stop_event.wait()
        finally:
            cycle.stop_waiters -= 1
        if cycle.outcome is not None:
            raise cycle.outcome

    async def _finish_stop(self, cycle: _Cycle) -> Exception | None:
        """Run the raw stop and the teardown, then move to STOPPED.

        Returns the outcome for the callers. If this task is cancelled, the
        stop is forced to its end and the cancellation is re-raised.
        """
        target = cycle.target
        interrupted: BaseException | None = None
        token = CONTEXT.set((cycle, (cycle, CONTEXT.get()[1])))
        try:
            calls = self._calls
            if calls is not None and calls.scopes:
                try:
                    await calls.drain()
                except BaseException as exc:  # forced: the raw stop still runs, cancelled
                    interrupted = exc
            try:
                if cycle.instruments:
                    call = partial(self._call_raw_stop, target, cycle.reason)
                    await self._instrumented(cycle.instruments, cycle, call)
                else:
                    result = self._call_raw_stop(target, cycle.reason)
                    if type(result) is CoroutineType or _isawaitable(result):
                        await result
            except Exception as exc:
                cycle.last_error = exc
                cycle.record(exc)
            except BaseException as exc:
                interrupted = exc
            if cycle.tasks or cycle.children:
                interrupted = await cycle.close(interrupted)
            else:
                cycle.closing = cycle.closed = True
        finally:
            CONTEXT.reset(token)
        errors = cycle.stop_errors
        if interrupted is not None:
            aborted = AbortedError(f"the stop of {self!r} was interrupted")
            errors = [aborted, *errors] if errors else [aborted]
        outcome = None
        if errors:
            outcome = combine(errors, f"errors while stopping {self!r}")
            if len(errors) > 1:
                for error in errors:
                    if not getattr(error, "__notes__", None):
                        error.add_note(f"while stopping {self!r}")
        cycle.outcome = outcome
        cycle.stop_duration = perf_counter() - cycle.stop_time
        cycle.target = None
        self._move(STOPPED, cycle.reason)
        owner = cycle.parent
        assert owner is not None
        if owner.children is not None:
            owner.children.pop(self, None)
        if cycle.holders:
            for holder in cycle.holders:
                if holder.children is not None:
                    holder.children.pop(self, None)
            cycle.holders = None
        cycle.parent = None  # a finished cycle must not keep its owner alive
        if cycle.stop_event is not None:
            cycle.stop_event.set()
        if interrupted is not None:
            raise interrupted
        return outcome

    def _let_go(self, cycle: _Cycle, owner: Owner) -> bool:
        """`owner` ends: stop holding the cycle. True if another owner holds it on."""
        holders = cycle.holders
        if not holders:
            return False
        if owner is not cycle.parent:
            if owner in holders:  # one holder less; its owner still holds it
                holders.remove(owner)
            return True
        if self._state is STOPPING or cycle.pending:
            return False
        # The heir must end before the task group that holds this cycle's tasks.
        heir = next(
            (h for h in holders if not h.closing and lives_within(h, cycle.task_group)), None
        )
        if heir is None:
            return False
        holders.remove(heir)
        cycle.parent = heir  # its stop runner, hooks and errors now go to the heir
        if owner.children is not None:
            owner.children.pop(self, None)
        return True

    async def _stop_by_owner(self, owner: Owner) -> None:
        """Stop a lifecycle `owner` left running, unless another owner holds it on.

        Used by the owner's close.
        """
        cycle = self._cycle
        if cycle is None or self._state is STOPPED:
            return
        if self._let_go(cycle, owner):
            return
        if self._state is STARTED:
            reason = self._shared_reason(cycle, owner, "end") if cycle.holders else None
            self._begin_stop(cycle, reason)
            outcome = await self._finish_stop(cycle)
            if outcome is not None:
                raise outcome
            return
        if self._state is STARTING and not cycle.pending:
            cycle.pending = True  # if that start still succeeds, it stops at once
        try:
            await self._join_stop(cycle)
        except anyio.get_cancelled_exc_class():
            # Forced: cancel a stop running in a task of ours and wait for its end.
            if cycle.runner is not None:
                cycle.runner.cancel()
            if cycle.stop_event is None:
                cycle.stop_event = anyio.Event()
            with anyio.CancelScope(shield=True):
                await cycle.stop_event.wait()
            raise


_STOP: Final = Startable.stop


def _cancel_reason(exc: BaseException) -> str:
    """Why a cancellation happened, as the backend tells it (see `AbortedError.why`)."""
    reason = getattr(exc, "reason", None)  # trio
    if isinstance(reason, str) and reason:
        return reason
    if getattr(exc, "source", None) == "deadline":
        return "a deadline passed"
    _, found, told = str(exc).partition("; reason: ")  # anyio's, on asyncio
    if found and told:
        return "a deadline passed" if told == "deadline exceeded" else told
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt"
    return "cancelled"


#: What a cycle refers to once its object is gone (`Startable._release`).
_RELEASED = Startable(name="<collected>")
_RELEASED._state = STOPPED


def _is_running(owner: Owner) -> bool:
    """Whether `owner` is an open block, or a cycle that is STARTING or STARTED."""
    if owner.closing:
        return False
    if isinstance(owner, _Cycle):
        return owner.startable._cycle is owner and owner.startable._state in (STARTING, STARTED)
    return True


def _is_stopping(owner: Owner) -> bool:
    return (
        isinstance(owner, _Cycle)
        and owner.startable._cycle is owner
        and owner.startable._state is STOPPING
    )


def _isawaitable(obj: object) -> TypeGuard[Awaitable[object]]:
    return obj is not None and inspect.isawaitable(obj)


async def _await(awaitable: Awaitable[object]) -> None:
    await awaitable


def own_name(obj: object) -> str | None:
    """`obj.name` if it is a string (`ServiceNode 'kv'` in a label), else None."""
    try:
        own = getattr(obj, "name", None)
    except Exception:  # a property that fails: the label does without it
        return None
    return own if isinstance(own, str) else None


def _logger() -> Any:
    import logging

    return logging.getLogger("startable")


def of(obj: object) -> Startable:
    """The lifecycle of `obj`: the same `Startable` on every call.

    `obj`'s class must have a raw start, a raw stop or a guarded method
    (see `as_raw_start`). The object is referenced weakly while idle, so
    `of()` never keeps it alive. A `Startable` passed in is returned
    as is.

    Raises:
        TypeError: if the class has no lifecycle, or its instances cannot be
            weakly referenced (a `__slots__` class without `__weakref__`).

    Example:
        ```python
        service = Service()
        await startable.of(service).start()
        assert startable.of(service) is startable.of(service)
        ```
    """
    key = id(obj)
    found = REGISTRY.get(key)
    if found is not None and found._ref is not None and found._ref() is obj:
        return found
    if type(obj) is Startable:
        return obj
    spec = spec_for(type(obj))
    try:
        ref = make_ref(obj)
    except TypeError:
        raise TypeError(
            f"{type(obj).__qualname__} instances cannot be weakly referenced; add "
            "'__weakref__' to its __slots__ (attrs: keep weakref_slot=True, the default)"
        ) from None
    startable = Startable._for_object(ref, spec)
    REGISTRY[key] = startable
    return startable
