"""Shrinking a failing program: greedy passes over its steps and faults.

Hypothesis's own shrinker works on the choices that drew a program, which for
these programs (a swarm of switches, steps, two lists of faults) takes
thousands of runs; most of a failing check's time went there. A program is
small and its parts are independent, so removing and simplifying them one at
a time, keeping each change after which the same promise still breaks, gets
to a short program in a few dozen runs. Every candidate is run as a replay
(same seeding as under hypothesis), so the result replays exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import TypeVar

import attrs

from ._program import BUILTIN_ACTIONS, START, STOP, Fault, Program, Step

T = TypeVar("T")

#: Simpler stand-ins for built-in actions, tried in order.
_SIMPLER = {
    action: [START] if action.startswith("start") else [STOP]
    for action in BUILTIN_ACTIONS
    if action not in (START, STOP)
}


def shrink(program: Program, fails: Callable[[Program], bool], *, budget: int = 600) -> Program:
    """The smallest program found that still `fails`, trying at most `budget` candidates."""
    tried = 0
    improved = True
    while improved and tried < budget:
        improved = False
        for candidate in _candidates(program):
            if tried >= budget:
                break
            tried += 1
            if _size(candidate) < _size(program) and fails(candidate):
                program = candidate
                improved = True
                break  # start again from the smaller program
    return program


def _size(program: Program) -> tuple[int, int, int]:
    """What shrinking minimises: steps first, then faults, then everything else."""
    faults = [*program.start_faults, *program.stop_faults]
    noise = sum(step.delay + step.caller + step.target for step in program.steps)
    noise += sum(len(_SIMPLER.get(step.action, ())) for step in program.steps)
    noise += sum(_weight(fault) for fault in faults)
    return (len(program.steps), len(faults), noise)


def _weight(fault: Fault) -> int:
    return (
        fault.checkpoints_before
        + fault.checkpoints_after
        + int(fault.sleep_before > 0) * 2
        + int(fault.raise_before)
        + int(fault.raise_after)
        + 1
    )


def _candidates(program: Program) -> Iterator[Program]:
    steps = program.steps
    # Fewer steps: each one removed, the last ones first; then two at once
    # (in a race, a step may only matter together with another).
    for index in reversed(range(len(steps))):
        if len(steps) > 1:
            yield attrs.evolve(program, steps=steps[:index] + steps[index + 1 :])
    for first in reversed(range(len(steps))):
        for second in reversed(range(first)):
            if len(steps) > 2:
                kept = tuple(s for i, s in enumerate(steps) if i not in (first, second))
                yield attrs.evolve(program, steps=kept)
    if len(steps) > 6:  # still long: three at once
        for dropped in itertools.combinations(reversed(range(len(steps))), 3):
            kept = tuple(s for i, s in enumerate(steps) if i not in dropped)
            yield attrs.evolve(program, steps=kept)
    # Fewer faults: trailing ones dropped, then each made a plain call.
    for starts in (True, False):
        faults = program.start_faults if starts else program.stop_faults

        def with_faults(new: tuple[Fault, ...], starts: bool = starts) -> Program:
            if starts:
                return attrs.evolve(program, start_faults=new)
            return attrs.evolve(program, stop_faults=new)

        for index in reversed(range(len(faults))):
            if index == len(faults) - 1:
                yield with_faults(faults[:index])
            elif faults[index] != Fault():
                yield with_faults(_replace(faults, index, Fault()))
            for plainer in _simpler_faults(faults[index]):
                yield with_faults(_replace(faults, index, plainer))
    # Simpler steps: no delay, caller 0, target 0, a plainer action.
    for index, step in enumerate(steps):
        for simpler in _simpler_steps(step):
            yield attrs.evolve(program, steps=_replace(steps, index, simpler))


def _simpler_faults(fault: Fault) -> Iterator[Fault]:
    if fault.sleep_before:
        yield attrs.evolve(fault, sleep_before=0.0)
    if fault.checkpoints_before:
        yield attrs.evolve(fault, checkpoints_before=0)
    if fault.checkpoints_after:
        yield attrs.evolve(fault, checkpoints_after=0)
    if fault.raise_before:
        yield attrs.evolve(fault, raise_before=False)
    if fault.raise_after:
        yield attrs.evolve(fault, raise_after=False)


def _simpler_steps(step: Step) -> Iterator[Step]:
    if step.delay:
        yield attrs.evolve(step, delay=0)
        if step.delay > 1:
            yield attrs.evolve(step, delay=step.delay - 1)
    if step.caller:
        yield attrs.evolve(step, caller=0)
        yield attrs.evolve(step, caller=step.caller - 1)
    if step.target:
        yield attrs.evolve(step, target=0)
    for action in _SIMPLER.get(step.action, ()):
        yield attrs.evolve(step, action=action)


def _replace(items: tuple[T, ...], index: int, value: T) -> tuple[T, ...]:
    return (*items[:index], value, *items[index + 1 :])
