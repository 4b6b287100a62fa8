"""The race checker against deliberately broken copies of the core (mutants).

Each mutant patches one method of the engine for the length of one test, so
that it breaks one promise of docs/semantics.md. The checker is then run as a
user would run it on their own services (a plain service, a parent composing
two children), with the default number of programs, and must report the
broken promise by name, with a program of at most 6 steps, whose replay
breaks it again. Together the mutants cover every `Invariant` but USER
(`test_checker.py` proves that one).

The search is derandomized so the suite is the same on every run; how often
each mutant is found with random searches is measured by
`uv run python tests/testing/test_mutants.py` (see its `main`).
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable
from functools import partial
from types import MethodType
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import hypothesis
import pytest

import startable
import startable._calls
import startable._markers
import startable._startable as engine
import startable.testing as st
from startable import State, StateError

READY, STARTING, STARTED, STOPPING, STOPPED = State
Startable = engine.Startable
# The default settings, but derandomized, and the default number of programs
# given explicitly: $STARTABLE_EXAMPLES may then raise it, never lower it.
SEARCH = hypothesis.settings(database=None, derandomize=True, max_examples=1000)


# -- the services, written as a user would -------------------------------------


def plain() -> tuple[Callable[[], Any], Any]:
    class Service:
        def __init__(self) -> None:
            self.connection: object | None = None

        @startable.as_raw_start
        async def _open(self) -> None:
            await anyio.lowlevel.checkpoint()  # connecting
            self.connection = object()

        @startable.as_raw_stop
        async def _close(self, err: BaseException | None) -> None:
            await anyio.lowlevel.checkpoint()  # saying goodbye
            self.connection = None

        @startable.assert_state()
        async def query(self) -> str:
            assert self.connection is not None
            return "answer"

    return Service, None


def draining() -> tuple[Callable[[], Any], Any]:
    class Writer:
        def __init__(self) -> None:
            self.file: list[str] | None = None

        @startable.as_raw_start
        async def _open(self) -> None:
            self.file = []

        @startable.as_raw_stop
        async def _close(self) -> None:
            self.file = None

        @startable.assert_state(drain=True)
        async def write(self) -> None:
            assert self.file is not None
            await anyio.lowlevel.checkpoint()  # a round trip
            self.file.append("line")  # fails if the raw stop ran meanwhile

    return Writer, None


def composed() -> tuple[Callable[[], Any], Any]:
    service, _ = plain()

    class App:
        def __init__(self) -> None:
            self.database = service()
            self.cache = service()

        @startable.as_raw_start
        async def _start(self) -> None:
            await startable.of(self.database).start(startable.of(self).stop)
            await startable.of(self.cache).start(startable.of(self).stop)

        @startable.as_raw_stop
        async def _stop(self) -> None:
            await startable.of(self.cache).stop()
            await startable.of(self.database).stop()

    return App, lambda app: [app, app.database, app.cache]


SHAPES = {"plain": plain, "draining": draining, "composed": composed}


# -- the mutants -----------------------------------------------------------------


@attrs.frozen
class Mutant:
    breaks: st.Invariant
    shape: str
    patch: Callable[[pytest.MonkeyPatch], None]


def _wrap(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, make: Callable[[Any], Any]
) -> None:
    monkeypatch.setattr(owner, name, make(getattr(owner, name)))


def stop_in_starting_returns_early(mp: pytest.MonkeyPatch) -> None:
    def make(join: Any) -> Any:
        async def _join_stop(self: Startable, cycle: Any) -> None:
            if self._state is STARTING:
                return  # the stop is scheduled; it does not wait for it
            await join(self, cycle)

        return _join_stop

    _wrap(mp, Startable, "_join_stop", make)


def restart_refused(mp: pytest.MonkeyPatch) -> None:
    def make(begin: Any) -> Any:
        async def _begin_cycle(self: Startable, on_stopping: Any) -> None:
            if self._cycle is not None:
                raise StateError("no restarts", actual=STOPPED, expected=(READY,))
            await begin(self, on_stopping)

        return _begin_cycle

    _wrap(mp, Startable, "_begin_cycle", make)


def start_raises_the_raw_stops_error(mp: pytest.MonkeyPatch) -> None:
    def make(begin: Any) -> Any:
        async def _begin_cycle(self: Startable, on_stopping: Any) -> None:
            try:
                await begin(self, on_stopping)
            except Exception:
                cycle = self._cycle
                if cycle is not None and cycle.outcome is not None:
                    raise cycle.outcome from None
                raise

        return _begin_cycle

    _wrap(mp, Startable, "_begin_cycle", make)


def stop_joiners_ignore_failures(mp: pytest.MonkeyPatch) -> None:
    def make(join: Any) -> Any:
        async def _join_stop(self: Startable, cycle: Any) -> None:
            try:
                await join(self, cycle)
            except Exception:
                pass

        return _join_stop

    _wrap(mp, Startable, "_join_stop", make)


def crash_ignored(mp: pytest.MonkeyPatch) -> None:
    def make(crash: Any) -> Any:
        def _crash(self: Any, exc: Exception) -> None:
            if self.startable._state is STOPPING:
                crash(self, exc)
            # otherwise: forgotten

        return _crash

    _wrap(mp, engine._Cycle, "crash", make)


def child_stop_does_not_stop_parent(mp: pytest.MonkeyPatch) -> None:
    def _call_hook(hook: Any, reason: BaseException | None) -> object:
        if type(hook) is MethodType and hook.__func__ is engine._STOP:
            return None
        return hook(reason)

    mp.setattr(Startable, "_call_hook", staticmethod(_call_hook))


def parent_loses_the_childs_reason(mp: pytest.MonkeyPatch) -> None:
    def _call_hook(hook: Any, reason: BaseException | None) -> object:
        if type(hook) is MethodType and hook.__func__ is engine._STOP:
            hook.__self__.stop_nowait(None)
            return None
        return hook(reason)

    mp.setattr(Startable, "_call_hook", staticmethod(_call_hook))


def stop_never_finishes(mp: pytest.MonkeyPatch) -> None:
    # The owner's forced close then waits, shielded, for a stop that never ends.
    def make(finish: Any) -> Any:
        async def _finish_stop(self: Startable, cycle: Any) -> Any:
            await anyio.Event().wait()
            return await finish(self, cycle)

        return _finish_stop

    _wrap(mp, Startable, "_finish_stop", make)


def teardown_never_finishes(mp: pytest.MonkeyPatch) -> None:
    async def _wait_all(self: Any) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.Event().wait()

    mp.setattr(engine.Owner, "_wait_all", _wait_all)


def start_joiner_reruns_the_raw_start(mp: pytest.MonkeyPatch) -> None:
    def make(join: Any) -> Any:
        async def _join_start(self: Startable) -> None:
            cycle = self._cycle
            raw = partial(self._call_raw_start, cycle.target)
            await self._instrumented(cycle.instruments, None, raw)
            await join(self)

        return _join_start

    _wrap(mp, Startable, "_join_start", make)


def stop_in_starting_does_not_wait(mp: pytest.MonkeyPatch) -> None:
    def make(stop: Any) -> Any:
        async def _stop(self: Startable, err: BaseException | None = None) -> None:
            await anyio.lowlevel.checkpoint()
            cycle = self._cycle
            if self._state is STARTING and cycle is not None and not cycle.pending:
                cycle.pending = True
                cycle.reason = err
                raw = partial(self._call_raw_stop, cycle.target, err)
                await self._instrumented(cycle.instruments, cycle, raw)
            await stop(self, err)

        return _stop

    _wrap(mp, Startable, "stop", make)


def restart_goes_through_ready(mp: pytest.MonkeyPatch) -> None:
    successors = dict(engine.SUCCESSORS)
    successors[STOPPED] = successors[STOPPED] | {READY}
    mp.setattr(engine, "SUCCESSORS", successors)

    def make(move: Any) -> Any:
        def _move(self: Startable, new: State, reason: BaseException | None = None) -> None:
            if self._state is STOPPED and new is STARTING:
                move(self, READY)
            move(self, new, reason)

        return _move

    _wrap(mp, Startable, "_move", make)


def later_hooks_lost(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(Startable, "_add_hook", lambda self, hook: None)


def hooks_get_no_reason(mp: pytest.MonkeyPatch) -> None:
    def _call_hook(hook: Any, reason: BaseException | None) -> object:
        if type(hook) is MethodType and hook.__func__ is engine._STOP:
            hook.__self__.stop_nowait(reason)
            return None
        return hook(None)

    mp.setattr(Startable, "_call_hook", staticmethod(_call_hook))


def failed_start_calls_the_hooks(mp: pytest.MonkeyPatch) -> None:
    def make(failed: Any) -> Any:
        def _start_failed(self: Startable, cycle: Any, error: BaseException) -> None:
            hooks = cycle.hooks or ()
            failed(self, cycle, error)
            for hook, _ in hooks:
                try:
                    result = Startable._call_hook(hook, error)
                except Exception:
                    continue
                if inspect.iscoroutine(result):
                    result.close()  # never run; the checker notices that too

        return _start_failed

    _wrap(mp, Startable, "_start_failed", make)


def raw_stop_loses_the_reason(mp: pytest.MonkeyPatch) -> None:
    def make(begin: Any) -> Any:
        def _begin_stop(self: Startable, cycle: Any, reason: BaseException | None) -> None:
            begin(self, cycle, reason)
            cycle.reason = None

        return _begin_stop

    _wrap(mp, Startable, "_begin_stop", make)


def tasks_outlive_the_stop(mp: pytest.MonkeyPatch) -> None:
    async def close(self: Any, interrupted: BaseException | None) -> BaseException | None:
        self.closing = self.closed = True
        return interrupted

    mp.setattr(engine._Cycle, "close", close)


def guard_lets_starting_through(mp: pytest.MonkeyPatch) -> None:
    def make(compile_guard: Any) -> Any:
        def _compile_guard(func: Any, allowed: frozenset[State], refuse: Any) -> Any:
            return compile_guard(func, allowed | {STARTING}, refuse)

        return _compile_guard

    _wrap(mp, startable._markers, "_compile_guard", make)


def drain_does_not_wait(mp: pytest.MonkeyPatch) -> None:
    async def drain(self: Any) -> None:
        pass

    mp.setattr(startable._calls.Calls, "drain", drain)


def stop_in_ready_raises(mp: pytest.MonkeyPatch) -> None:
    def make(stop: Any) -> Any:
        async def _stop(self: Startable, err: BaseException | None = None) -> None:
            never_started = self._state is READY
            await stop(self, err)
            if never_started:
                raise RuntimeError("it was never started")

        return _stop

    _wrap(mp, Startable, "stop", make)


def raw_stop_errors_swallowed(mp: pytest.MonkeyPatch) -> None:
    def make(finish: Any) -> Any:
        async def _finish_stop(self: Startable, cycle: Any) -> Any:
            await finish(self, cycle)
            cycle.outcome = None
            return None

        return _finish_stop

    _wrap(mp, Startable, "_finish_stop", make)


def waits_for_itself(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(engine, "inside_raw", lambda owner: False)  # no call is refused


def start_joiners_ignore_failures(mp: pytest.MonkeyPatch) -> None:
    def make(join: Any) -> Any:
        async def _join_start(self: Startable) -> None:
            try:
                await join(self)
            except StateError:
                raise  # a refused wait for itself is still refused
            except Exception:
                pass

        return _join_start

    _wrap(mp, Startable, "_join_start", make)


P = st.Invariant  # the promises
MUTANTS = {
    # The six the issue names, and the two hangs.
    "a stop during STARTING returns before STOPPED": Mutant(
        P.STOP_OUTCOME, "plain", stop_in_starting_returns_early
    ),
    "a restart from STOPPED is refused": Mutant(P.START_REFUSED, "plain", restart_refused),
    "a failed start raises its raw stop's error": Mutant(
        P.START_OUTCOME, "plain", start_raises_the_raw_stops_error
    ),
    "joiners of a failed stop return normally": Mutant(
        P.STOP_ERRORS, "plain", stop_joiners_ignore_failures
    ),
    "a crashing background task does not stop its service": Mutant(P.CRASH, "plain", crash_ignored),
    "a child's stop does not stop its parent": Mutant(
        P.COMPOSITION, "composed", child_stop_does_not_stop_parent
    ),
    "a stop never finishes": Mutant(P.DEADLINE, "plain", stop_never_finishes),
    "a teardown waits forever, shielded": Mutant(P.DEADLINE, "plain", teardown_never_finishes),
    # One or more for every other promise.
    "a start joiner runs the raw start again": Mutant(
        P.ONCE, "plain", start_joiner_reruns_the_raw_start
    ),
    "a stop during STARTING does not wait for the raw start": Mutant(
        P.ORDER, "plain", stop_in_starting_does_not_wait
    ),
    "a restart goes through READY": Mutant(P.MOVES, "plain", restart_goes_through_ready),
    "hooks of later starts are lost": Mutant(P.HOOKS, "plain", later_hooks_lost),
    "hooks get no reason": Mutant(P.HOOKS, "plain", hooks_get_no_reason),
    "a failed start calls the hooks": Mutant(P.HOOKS, "plain", failed_start_calls_the_hooks),
    "the raw stop loses the reason": Mutant(P.REASON, "plain", raw_stop_loses_the_reason),
    "background tasks outlive the stop": Mutant(P.TASKS, "plain", tasks_outlive_the_stop),
    "a guard lets calls in while STARTING": Mutant(P.GUARDS, "plain", guard_lets_starting_through),
    "a stop does not drain": Mutant(P.DRAIN, "draining", drain_does_not_wait),
    "stop() in READY raises": Mutant(P.ERRORS, "plain", stop_in_ready_raises),
    "the parent stops without the child's reason": Mutant(
        P.COMPOSITION, "composed", parent_loses_the_childs_reason
    ),
    "a raw stop's error is swallowed": Mutant(P.STOP_ERRORS, "plain", raw_stop_errors_swallowed),
    "a raw start may wait for itself": Mutant(P.SELF_WAIT, "plain", waits_for_itself),
    "start joiners ignore a failed start": Mutant(
        P.START_OUTCOME, "plain", start_joiners_ignore_failures
    ),
}


def test_every_promise_has_a_mutant() -> None:
    assert {mutant.breaks for mutant in MUTANTS.values()} == set(st.Invariant) - {P.USER}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_real_core_keeps_every_promise_under_the_same_search(shape: str) -> None:
    factory, targets = SHAPES[shape]()
    st.check_lifecycle(factory, targets=targets, settings=SEARCH)


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_the_checker_names_the_broken_promise(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    mutant = MUTANTS[name]
    mutant.patch(monkeypatch)
    factory, targets = SHAPES[mutant.shape]()  # defined now: guards compile at definition
    with pytest.raises(st.LifecycleViolation) as caught:
        st.check_lifecycle(factory, targets=targets, settings=SEARCH)
    violation = caught.value
    assert violation.invariant is mutant.breaks, violation
    assert len(violation.program.steps) <= 6, violation
    assert f"(promise broken: {mutant.breaks.value})" in str(violation)
    # The printed replay runs the same program, and it fails the same way.
    program = eval(violation.replay, vars(st))
    assert program == violation.program
    with pytest.raises(st.LifecycleViolation) as again:
        st.check_lifecycle(factory, targets=targets, replay=program)
    assert again.value.invariant is violation.invariant


def main() -> None:
    """How often random searches find each mutant, and how long they take.

    `uv run python tests/testing/test_mutants.py [RUNS]`: each mutant is searched for
    RUNS times (default 10) with the default settings, random seeds.
    """
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    only = sys.argv[2] if len(sys.argv) > 2 else ""
    for name, mutant in MUTANTS.items():
        if only not in name:
            continue
        found, steps, seconds = 0, [], []
        for _ in range(runs):
            with pytest.MonkeyPatch.context() as monkeypatch:
                mutant.patch(monkeypatch)
                factory, targets = SHAPES[mutant.shape]()
                began = time.perf_counter()
                try:
                    st.check_lifecycle(
                        factory, targets=targets, settings=hypothesis.settings(database=None)
                    )
                except st.LifecycleViolation as violation:
                    if violation.invariant is mutant.breaks:
                        found += 1
                        steps.append(len(violation.program.steps))
                seconds.append(time.perf_counter() - began)
        print(
            f"{name:58} found {found}/{runs}, steps <= {max(steps, default=0)}, "
            f"slowest {max(seconds):.1f}s"
        )


if __name__ == "__main__":
    main()
