"""`check_lifecycle()`: hypothesis over generated programs, from plain pytest."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import hypothesis
from hypothesis import HealthCheck, given

import startable

from ._program import BUILTIN_ACTIONS, Program, programs
from ._runner import (
    Backend,
    Lifecycle,
    Operation,
    RunView,
    _run,
    default_deadline,
    unique_names,
)

#: The environment variable that sets how many programs `check_lifecycle` tries.
EXAMPLES_VARIABLE = "STARTABLE_EXAMPLES"
DEFAULT_EXAMPLES = 200


def default_examples() -> int:
    """`$STARTABLE_EXAMPLES` if set, else 200."""
    value = os.environ.get(EXAMPLES_VARIABLE)
    if value is None:
        return DEFAULT_EXAMPLES
    try:
        examples = int(value)
    except ValueError:
        raise ValueError(f"${EXAMPLES_VARIABLE} must be a whole number, not {value!r}") from None
    if examples < 1:
        raise ValueError(f"${EXAMPLES_VARIABLE} must be at least 1, not {examples}")
    return examples


def _guarded_operations(objects: Sequence[Any], names: Sequence[str]) -> list[Operation]:
    """An operation for each guarded method without required arguments."""
    found = []
    for index, obj in enumerate(objects):
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

            found.append(Operation(f"{names[index]}.{attribute}()", call, states, target=index))
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
) -> None:
    """Search for lifecycle races in the services `factory` builds.

    Hypothesis generates programs: several concurrent callers doing `start`,
    `stop` with and without a reason, guarded method calls, spontaneous stops
    from inside (`stop_nowait`, a crashing background task), with faults
    injected into raw starts and raw stops (raising before or after their
    work, taking extra checkpoints or virtual time). Every program runs in a
    fresh event loop, and the invariants of `Invariant` are checked after every
    step. A failure is shrunk to a short program and raised as a
    `LifecycleViolation` that describes it in plain words; hypothesis prints
    how to replay it.

    Args:
        factory: builds the object under test (called inside the event loop).
        targets: returns the objects whose lifecycles steps may address,
            given the root; by default just the root.
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
        max_examples: programs to try. If not given: `$STARTABLE_EXAMPLES`
            if set, else the `max_examples` of `settings` if given, else 200.
        settings: hypothesis settings to start from.

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
        objects = list(get_targets(factory()))
        if not objects:
            raise ValueError("targets() returned no objects")
        names = unique_names(
            [str(getattr(lifecycle(obj), "name", type(obj).__qualname__)) for obj in objects]
        )
        return names, _guarded_operations(objects, names) if discover_guards else []

    names, discovered = anyio.run(discover, backend=backend)
    all_operations = [*operations, *discovered]
    taken = set(BUILTIN_ACTIONS)
    for operation in all_operations:
        if operation.name in taken:
            raise ValueError(f"two operations are named {operation.name!r}")
        if not 0 <= operation.target < len(names):
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
    if max_examples is None:
        from_settings = settings.max_examples if settings is not None else None
        max_examples = (
            from_settings if from_settings and EXAMPLES_VARIABLE not in os.environ else None
        )
    chosen = hypothesis.settings(
        settings,
        max_examples=max_examples if max_examples is not None else default_examples(),
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )

    @chosen
    @given(strategy)
    def lifecycle_races(program: Program) -> None:
        recorder = _run(
            program,
            factory,
            targets=get_targets,
            lifecycle=lifecycle,
            operations=all_operations,
            invariants=invariants,
            expected_errors=tuple(expected_errors),
            backend=backend,
            deadline=deadline if deadline is not None else default_deadline(backend),
        )
        # Steer hypothesis towards programs whose calls overlap state changes:
        # that is where races live.
        hypothesis.target(float(recorder.moves_during_operations), label="moves during operations")
        hypothesis.target(
            float(recorder.moves_during_overlap), label="moves during overlapping steps"
        )
        error = recorder.violation_error()
        if error is not None:
            raise error

    lifecycle_races()
