"""`check_lifecycle()`: hypothesis over generated programs, from plain pytest."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import hypothesis
from hypothesis import HealthCheck, Phase, Verbosity, given

import startable

from ._program import BUILTIN_ACTIONS, Program, programs
from ._runner import RunOptions, _run, default_deadline, replayed, unique_names
from ._shrink import shrink
from ._vocabulary import Backend, Lifecycle, LifecycleViolation, Operation, RunView

#: The environment variable that sets how many programs `check_lifecycle` tries.
EXAMPLES_VARIABLE = "STARTABLE_EXAMPLES"
DEFAULT_EXAMPLES = 1000


def knob() -> int | None:
    """`$STARTABLE_EXAMPLES` (or `--startable-examples`), if set."""
    value = os.environ.get(EXAMPLES_VARIABLE)
    if value is None:
        return None
    try:
        examples = int(value)
    except ValueError:
        raise ValueError(f"${EXAMPLES_VARIABLE} must be a whole number, not {value!r}") from None
    if examples < 1:
        raise ValueError(f"${EXAMPLES_VARIABLE} must be at least 1, not {examples}")
    return examples


def default_examples() -> int:
    """`$STARTABLE_EXAMPLES` if set, else the default (1000)."""
    value = knob()
    return DEFAULT_EXAMPLES if value is None else value


def examples_to_try(explicit: int | None, settings: hypothesis.settings | None) -> int:
    """How many programs a check tries.

    `$STARTABLE_EXAMPLES` (or `--startable-examples`) replaces the default
    and raises a figure the test gives itself (`max_examples=`, or its
    settings'), but never lowers the latter: a nightly job searches longer
    everywhere, and a proof that needs 5000 programs keeps them.
    """
    chosen = explicit
    if chosen is None and settings is not None and settings.max_examples != 100:
        chosen = settings.max_examples  # 100 is hypothesis's default: not chosen
    from_knob = knob()
    if chosen is None:
        return DEFAULT_EXAMPLES if from_knob is None else from_knob
    return chosen if from_knob is None else max(chosen, from_knob)


def _guarded_operations(objects: Sequence[Any], names: Sequence[str]) -> list[Operation]:
    """An operation for each guarded method without required arguments."""
    found = []
    for index, obj in enumerate(objects):
        if obj is None:
            continue
        cls = type(obj)
        for attribute in sorted(dir(cls)):
            member = inspect.getattr_static(cls, attribute, None)
            states = startable.guarded_states(member)
            if states is None or not callable(member):
                continue
            params = list(inspect.signature(member).parameters.values())[1:]
            if any(
                p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                for p in params
            ):
                continue  # needs arguments the checker cannot invent

            def call(target: Any, attribute: str = attribute) -> object:
                return getattr(target, attribute)()

            drains = startable.drain_timeout(member) is not None
            found.append(
                Operation(f"{names[index]}.{attribute}()", call, states, target=index, drain=drains)
            )
    return found


def check_lifecycle(
    factory: Callable[[], Any],
    *,
    targets: Callable[[Any], Sequence[Any]] | None = None,
    operations: Sequence[Operation] = (),
    discover_guards: bool = True,
    invariants: Sequence[Callable[[RunView], object]] = (),
    expected_errors: Sequence[type[BaseException]] = (),
    actions: Sequence[str] = BUILTIN_ACTIONS,
    callers: int = 3,
    min_steps: int = 1,
    max_steps: int = 10,
    inject_faults: bool = True,
    backend: Backend = "trio",
    deadline: float | None = None,
    lifecycle: Callable[[Any], Lifecycle] = startable.of,
    max_examples: int | None = None,
    settings: hypothesis.settings | None = None,
    replay: Program | None = None,
) -> None:
    """Search for lifecycle races in the services `factory` builds.

    Hypothesis generates programs: several concurrent callers doing `start`,
    `stop` with and without a reason, guarded method calls, spontaneous stops
    from inside (`stop_nowait`, a crashing background task), with faults
    injected into raw starts and raw stops (raising before or after their
    work, taking extra checkpoints or virtual time). Every program runs in a
    fresh event loop, and the invariants of `Invariant` are checked after every
    step. A failure is shrunk to a short program and raised as a
    `LifecycleViolation` that describes it in plain words and ends with the
    `replay=` argument that runs exactly that program again.

    Args:
        factory: builds the object under test (called inside the event loop).
        targets: returns the objects whose lifecycles steps may address,
            given the root; by default just the root. It is called again
            whenever a step needs its target, so it may name objects the root
            builds in its raw start (`lambda app: [app, app.cache]`): a step
            whose target does not exist at that moment is skipped. How many
            targets there are is learnt once, from the root as the factory
            returns it or, if that fails, once it has started.
        operations: extra calls to make at random (methods of your service).
        discover_guards: add a call for every guarded method of a target
            that takes no arguments.
        invariants: your own checks, called with a `RunView` after every step;
            they fail by raising.
        expected_errors: exception types your services may legitimately raise.
        actions: the built-in actions programs draw from.
        callers: how many concurrent callers.
        min_steps: the shortest program.
        max_steps: the longest program.
        inject_faults: inject faults into raw hooks.
        backend: `"trio"` (virtual time, replayable scheduling) or `"asyncio"`.
        deadline: seconds any call may take (virtual on trio).
        lifecycle: how to get the lifecycle of an object (`startable.of`).
        max_examples: programs to try. If not given: the `max_examples` of
            `settings` if it sets one (other than hypothesis's default, 100),
            else 1000 (about 2 to 10 seconds for
            a small service; enough to find each kind of bug our own mutation
            suite plants, every run). `$STARTABLE_EXAMPLES` (or
            `pytest --startable-examples`) replaces the default, and raises
            a figure given here but never lowers it.
        settings: hypothesis settings to start from.
        replay: run this one program (from a `LifecycleViolation`'s
            `replay`) instead of searching, with the same interleaving it
            had when it failed.

    Raises:
        LifecycleViolation: with the shortest failing program found.

    Example:
        ```python
        def test_no_races() -> None:
            startable.testing.check_lifecycle(MyService)
        ```
    """
    if callers < 1 or not 1 <= min_steps <= max_steps:
        raise ValueError("check_lifecycle() needs callers >= 1 and 1 <= min_steps <= max_steps")
    if backend not in ("trio", "asyncio"):
        raise ValueError(f"backend must be 'trio' or 'asyncio', not {backend!r}")
    unknown = [action for action in actions if action not in BUILTIN_ACTIONS]
    if unknown:
        raise ValueError(
            f"unknown built-in actions: {unknown}; see startable.testing.BUILTIN_ACTIONS"
        )
    get_targets = targets or (lambda root: [root])

    async def discover() -> tuple[list[str], list[Operation]]:
        root = factory()
        objects = _objects(get_targets, root)
        if objects is None:  # it names what the root builds when it starts
            async with startable.open_owner():
                await lifecycle(root).start()
                try:
                    objects = list(get_targets(root))
                finally:
                    await lifecycle(root).stop()
        if not objects:
            raise ValueError("targets() returned no objects")
        names = unique_names(
            [
                f"#{index}"
                if obj is None
                else str(getattr(lifecycle(obj), "name", type(obj).__qualname__))
                for index, obj in enumerate(objects)
            ]
        )
        return names, _guarded_operations(objects, names) if discover_guards else []

    names, discovered = anyio.run(discover, backend=backend)
    all_operations = [*operations, *discovered]
    taken = set(BUILTIN_ACTIONS)
    for operation in all_operations:
        if operation.name in taken:
            raise ValueError(f"two operations are named {operation.name!r}")
        if not callable(operation.target) and not 0 <= operation.target < len(names):
            raise ValueError(
                f"operation {operation.name!r} targets #{operation.target}, "
                f"but there are {len(names)} targets"
            )
        taken.add(operation.name)
    strategy = programs(
        actions=actions,
        operations=[operation.name for operation in all_operations],
        targets=len(names),
        callers=callers,
        min_steps=min_steps,
        max_steps=max_steps,
        inject_faults=inject_faults,
        sleeps=backend == "trio",
    )
    options = RunOptions(
        targets=get_targets,
        lifecycle=lifecycle,
        operations=all_operations,
        invariants=invariants,
        expected_errors=tuple(expected_errors),
        backend=backend,
        deadline=deadline if deadline is not None else default_deadline(backend),
        names=names,
    )
    if replay is not None:
        error = replayed(replay, factory, options).violation_error()
        if error is not None:
            raise error
        return
    phases = settings.phases if settings is not None else tuple(Phase)
    quiet = settings is None or settings.verbosity == Verbosity.normal
    chosen = hypothesis.settings(
        settings,
        max_examples=examples_to_try(max_examples, settings),
        deadline=None,
        # Failures are shrunk by `shrink`, in a few dozen runs where
        # hypothesis's shrinker takes thousands on these programs.
        phases=[phase for phase in phases if phase is not Phase.shrink],
        report_multiple_bugs=False,
        # Hypothesis's own replay advice (@reproduce_failure) cannot work on
        # a test it does not see: the violation says how to replay instead.
        print_blob=False,
        verbosity=Verbosity.quiet if quiet else settings.verbosity,  # type: ignore[union-attr]
        suppress_health_check=[HealthCheck.too_slow],
    )

    @chosen
    @given(strategy)
    def lifecycle_races(program: Program) -> None:
        recorder = _run(program, factory, options)
        # Steer hypothesis towards programs whose calls overlap state changes:
        # that is where races live. One score only: with several, which
        # programs hypothesis tries depends on the order of a set of their
        # labels, that is on PYTHONHASHSEED, and a derandomized search would
        # differ from one run to the next.
        hypothesis.target(
            float(recorder.moves_during_operations + recorder.moves_during_overlap),
            label="moves during concurrent calls",
        )
        error = recorder.violation_error()
        if error is not None:
            raise error

    try:
        lifecycle_races()
    except LifecycleViolation as found:
        if Phase.shrink not in phases:
            raise
        smallest, broken = found, found.invariant

        def fails(candidate: Program) -> bool:
            nonlocal smallest
            error = replayed(candidate, factory, options).violation_error()
            if error is None or error.invariant is not broken:
                return False
            smallest = error
            return True

        shrink(found.program, fails)
        raise smallest from None


def _objects(get_targets: Callable[[Any], Sequence[Any]], root: Any) -> list[Any] | None:
    """The targets of `root`, or None if some do not exist yet."""
    try:
        objects = list(get_targets(root))
    except Exception:
        return None
    return None if any(obj is None for obj in objects) else objects
