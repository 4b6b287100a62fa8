"""startable.testing: it finds each kind of bug, and our own core passes it.

The number of programs per run of the checker over our core is the
checker's default (1000), or $STARTABLE_EXAMPLES (set 50000 for nightly).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import anyio
import hypothesis
import pytest

import startable
import startable.testing as st
from startable import State

from ..core.test_composition import Parent, build_tree
from ..naive import BUGS, NaiveService, naive_lifecycle
from ..probes import Probe

SUITE_EXAMPLES = int(os.environ.get(st.EXAMPLES_VARIABLE, "1000"))
# A proof must find its bug on every run: the search is derandomized (the
# same programs each time) and its bound, which only limits how long it may
# search, is passed as max_examples= so that $STARTABLE_EXAMPLES cannot lower it.
PROOF = {"settings": hypothesis.settings(database=None, derandomize=True), "max_examples": 5000}

EXPECTED = {
    "illegal move": st.Invariant.MOVES,
    "start does not join": st.Invariant.ONCE,
    "stop does not wait for start": st.Invariant.ORDER,
    "hook called twice": st.Invariant.HOOKS,
    "reason lost": st.Invariant.REASON,
    "stop can hang": st.Invariant.DEADLINE,
    "tasks outlive stop": st.Invariant.TASKS,
    "stop before start raises": st.Invariant.STOP_OUTCOME,
}


def test_every_bug_has_a_proof() -> None:
    # Every invariant is proved by a mutant of the real core (test_mutants.py);
    # the naive implementation proves the checker is not tied to our engine.
    assert set(EXPECTED) == set(BUGS)


# -- proof: each broken implementation is caught, with a short program -------


@pytest.mark.parametrize("bug", sorted(EXPECTED))
def test_the_checker_catches(bug: str) -> None:
    with pytest.raises(st.LifecycleViolation) as caught:
        st.check_lifecycle(
            lambda: NaiveService(frozenset({bug})),
            lifecycle=naive_lifecycle,
            **PROOF,
        )
    violation = caught.value
    assert violation.invariant is EXPECTED[bug], violation
    assert len(violation.program.steps) <= 6, violation  # shrunk (programs go up to 10)
    assert violation.invariant.value in str(violation)
    assert "program:" in str(violation)


def test_the_checker_catches_a_guard_that_lets_the_body_run_while_starting() -> None:
    query = st.Operation("query()", lambda service: service.query(), states={State.STARTED})
    with pytest.raises(st.LifecycleViolation) as caught:
        st.check_lifecycle(NaiveService, lifecycle=naive_lifecycle, operations=[query], **PROOF)
    assert caught.value.invariant is st.Invariant.GUARDS
    assert "ran while its service was STARTING" in caught.value.detail
    assert len(caught.value.program.steps) <= 6


@pytest.mark.parametrize("bug", ["stop does not wait for start", "hook called twice"])
def test_the_checker_catches_on_asyncio_too(bug: str) -> None:
    with pytest.raises(st.LifecycleViolation) as caught:
        st.check_lifecycle(
            lambda: NaiveService(frozenset({bug})),
            lifecycle=naive_lifecycle,
            backend="asyncio",
            **PROOF,
        )
    assert caught.value.invariant is EXPECTED[bug]


def test_user_invariants_are_checked_after_every_step() -> None:
    def never_started_twice(view: st.RunView) -> None:
        assert startable.of(view.root).statistics().cycle < 2, "the service was restarted"

    with pytest.raises(st.LifecycleViolation) as caught:
        st.check_lifecycle(Probe, invariants=[never_started_twice], **PROOF)
    assert caught.value.invariant is st.Invariant.USER
    assert "never_started_twice" in caught.value.detail
    assert "restarted" in caught.value.detail


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_the_naive_implementation_without_bugs_passes(backend: st._vocabulary.Backend) -> None:
    st.check_lifecycle(NaiveService, lifecycle=naive_lifecycle, backend=backend, max_examples=300)


# -- our own core, under the checker --------------------------------------------


class Group:
    """Two users sharing one injected pool: aggregation."""

    def __init__(self) -> None:
        self.pool = Probe("pool")
        self.first = User(self.pool)
        self.second = User(self.pool)

    @startable.as_raw_start
    async def _start(self) -> None:
        await startable.of(self.first).start(startable.of(self).stop)
        await startable.of(self.second).start(startable.of(self).stop)

    @startable.as_raw_stop
    async def _stop(self) -> None:
        await startable.of(self.second).stop()
        await startable.of(self.first).stop()


class User:
    def __init__(self, pool: Probe) -> None:
        self.pool = pool

    @startable.as_raw_start
    async def _start(self) -> None:
        await startable.of(self.pool).start(startable.of(self).stop)

    @startable.as_raw_stop
    async def _stop(self) -> None:
        await anyio.lowlevel.checkpoint()

    @startable.assert_state()
    async def use(self) -> str:
        return await self.pool.ping()


def single() -> Any:
    return Probe("service")


def composed() -> Any:
    return Parent([])


def tree() -> Any:
    return build_tree([])["top"]


def tree_nodes(top: Any) -> list[Any]:
    middle, middle_sibling = top.children
    leaf, leaf_sibling = middle.children
    return [top, middle, middle_sibling, leaf, leaf_sibling]


SHAPES = {
    "single service": (single, None),
    "parent with two composed children": (composed, lambda p: [p, p.child1, p.child2]),
    "injected child shared by two users": (Group, lambda g: [g, g.first, g.second, g.pool]),
    "three-level tree": (tree, tree_nodes),
}


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_our_core_keeps_every_invariant(shape: str, backend: st._vocabulary.Backend) -> None:
    factory, targets = SHAPES[shape]
    st.check_lifecycle(
        factory,
        targets=targets,
        backend=backend,
        max_examples=SUITE_EXAMPLES,
        settings=hypothesis.settings(database=None),
    )


# -- determinism and the API --------------------------------------------------


def test_a_run_replays_exactly() -> None:
    logs: list[tuple[str, ...]] = []

    def record(view: st.RunView) -> None:
        logs.append(tuple(_texts(view.events)))  # keeps the last snapshot of each run

    program = st.Program(
        steps=(
            st.Step(0, st.START),
            st.Step(1, st.STOP_REASON, delay=1),
            st.Step(2, st.START, delay=2),
            st.Step(0, st.CRASH),
        ),
        start_faults=(st.Fault(sleep_before=0.5, checkpoints_after=2),),
        stop_faults=(st.Fault(raise_after=True),),
    )

    @hypothesis.settings(derandomize=True, database=None, max_examples=1)
    @hypothesis.given(hypothesis.strategies.just(program))
    def run(program: st.Program) -> None:
        st.run_program(program, single, invariants=[record])

    run()
    first = logs[-1]
    logs.clear()
    run()
    assert logs[-1] == first
    assert any("raw start begins" in event for event in first)
    assert any("raw stop ends" in event for event in first)


def test_programs_describe_themselves() -> None:
    program = st.Program(
        steps=(st.Step(0, st.START), st.Step(1, st.STOP_REASON, target=1, delay=2)),
        start_faults=(st.Fault(raise_before=True),),
    )
    text = program.describe(["parent", "child"])
    assert "1. caller 0: start on parent" in text
    assert "2. caller 1: stop with a reason on child after 2 checkpoints" in text
    assert "fault: raw start call 1 raises instead of running" in text
    assert program.callers == 2


def test_check_lifecycle_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="callers"):
        st.check_lifecycle(Probe, callers=0)
    with pytest.raises(ValueError, match="backend"):
        st.check_lifecycle(Probe, backend="curio")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown built-in actions"):
        st.check_lifecycle(Probe, actions=["dance"])
    with pytest.raises(ValueError, match="two operations"):
        st.check_lifecycle(Probe, operations=[st.Operation("start", lambda s: None)])
    with pytest.raises(ValueError, match="targets #3"):
        st.check_lifecycle(Probe, operations=[st.Operation("x", lambda s: None, target=3)])


def test_guarded_methods_are_discovered_and_expected_errors_honoured() -> None:
    class Flaky:
        @startable.as_raw_start
        async def _start(self) -> None:
            pass

        @startable.assert_state()
        async def fetch(self) -> str:
            raise ConnectionResetError("the server hung up")

    with pytest.raises(st.LifecycleViolation) as caught:
        st.check_lifecycle(Flaky, **PROOF)
    assert caught.value.invariant is st.Invariant.ERRORS
    assert "Flaky.fetch()" in caught.value.detail
    st.check_lifecycle(Flaky, expected_errors=[ConnectionResetError], max_examples=100)


def test_examples_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from startable.testing._check import default_examples

    monkeypatch.delenv(st.EXAMPLES_VARIABLE, raising=False)
    assert default_examples() == 1000
    monkeypatch.setenv(st.EXAMPLES_VARIABLE, "50000")
    assert default_examples() == 50000
    monkeypatch.setenv(st.EXAMPLES_VARIABLE, "lots")
    with pytest.raises(ValueError, match="whole number"):
        default_examples()


@pytest.mark.processes
def test_pytest_option_sets_the_examples(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os

        def test_examples():
            assert os.environ["STARTABLE_EXAMPLES"] == "7"
        """
    )
    result = pytester.runpytest_subprocess("--startable-examples", "7")
    result.assert_outcomes(passed=1)


def test_the_testing_layer_uses_only_the_public_core() -> None:
    import ast
    from pathlib import Path

    for path in (Path(st.__file__).parent).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = "." * node.level + node.module
                if module.startswith("startable") or node.level > 1:
                    assert module in ("startable", "..", ".._util"), (path.name, module)
                    if module == "startable":
                        assert all(a.name in startable.__all__ for a in node.names), path.name


def test_where_the_number_of_programs_comes_from(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []

    def counted() -> Probe:
        runs.append(1)
        return Probe()

    def tried(**options: Any) -> int:
        runs.clear()
        st.check_lifecycle(counted, settings=hypothesis.settings(database=None), **options)
        return len(runs) - 1  # one more call discovers the targets

    monkeypatch.delenv(st.EXAMPLES_VARIABLE, raising=False)
    assert tried(max_examples=7) == 7
    monkeypatch.setenv(st.EXAMPLES_VARIABLE, "9")
    assert tried() == 9  # the knob replaces the default
    assert tried(max_examples=5) == 9  # and raises what a test asks for (it used to lose)
    assert tried(max_examples=12) == 12  # but never lowers it


# -- replay, events, targets built at start ------------------------------------


def _texts(events: Sequence[st.Event]) -> list[str]:
    """The events' lines, object addresses left out."""
    return [re.sub(r"0x[0-9a-f]+", "0x…", str(event)) for event in events]


def test_a_violation_ends_with_a_replay_that_fails_the_same_way(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def factory() -> NaiveService:
        return NaiveService(frozenset({"reason lost"}))

    with pytest.raises(st.LifecycleViolation) as caught:
        st.check_lifecycle(factory, lifecycle=naive_lifecycle, **PROOF)
    violation = caught.value
    assert f"check_lifecycle(..., replay={violation.replay})" in str(violation)
    assert "reproduce_failure" not in capsys.readouterr().out  # advice that cannot work
    replay = eval(violation.replay, vars(st))  # as a user pastes it
    for _ in range(3):  # the same interleaving every time
        with pytest.raises(st.LifecycleViolation) as again:
            st.check_lifecycle(factory, lifecycle=naive_lifecycle, replay=replay)
        assert again.value.invariant is violation.invariant
        assert _texts(again.value.events) == _texts(violation.events)


def test_run_program_replays_exactly_outside_hypothesis_too() -> None:
    program = st.Program(
        steps=(
            st.Step(0, st.START),
            st.Step(1, st.STOP_REASON, delay=1),
            st.Step(2, st.START, delay=2),
            st.Step(1, st.START, delay=1),
        ),
        stop_faults=(st.Fault(checkpoints_before=2),),
    )
    runs: list[list[str]] = []

    def record(view: st.RunView) -> None:
        runs[-1][:] = _texts(view.events)

    for _ in range(3):
        runs.append([])
        st.run_program(program, single, invariants=[record])
    assert runs[0] == runs[1] == runs[2]


def test_events_show_a_fault_that_replaced_the_raw_stop() -> None:
    replaced: list[st.Event] = []

    def watch(view: st.RunView) -> None:
        for event in view.events:
            ended = event.kind is st.EventKind.RAW_STOP_END
            if ended and event.ran is False and event not in replaced:
                replaced.append(event)

    program = st.Program(
        steps=(st.Step(0, st.START), st.Step(0, st.STOP)),
        stop_faults=(st.Fault(raise_before=True),),
    )
    st.run_program(program, single, invariants=[watch])
    (event,) = replaced
    assert isinstance(event.error, st.InjectedFault)
    assert event.lifecycle == "root"
    assert "without running" in str(event)


class Cache:
    def __init__(self) -> None:
        self.entries: dict[str, bytes] | None = None

    @startable.as_raw_start
    async def _open(self) -> None:
        self.entries = {}

    @startable.as_raw_stop
    async def _close(self) -> None:
        self.entries = None

    @startable.assert_state()
    async def put(self, key: str, value: bytes) -> None:
        assert self.entries is not None
        self.entries[key] = value


class App:
    """Builds its cache in its raw start, as the how-to's tree example does."""

    cache: Cache | None = None

    @startable.as_raw_start
    async def _start(self) -> None:
        self.cache = Cache()
        await startable.of(self.cache).start(startable.of(self).stop)

    @startable.as_raw_stop
    async def _stop(self) -> None:
        if self.cache is not None:  # None if the start was abandoned early
            await startable.of(self.cache).stop()


def test_operations_and_targets_may_name_children_built_in_raw_start() -> None:
    put = st.Operation(
        "cache.put('k')",
        lambda cache: cache.put("k", b"v"),
        states={State.STARTED},
        target=lambda app: app.cache,  # the cache whose state `states` is about
    )
    st.check_lifecycle(
        App,
        targets=lambda app: [app, app.cache],  # the cache exists once App has started
        operations=[put],
        settings=hypothesis.settings(database=None, derandomize=True),
        max_examples=300,
    )


@pytest.mark.processes
def test_a_derandomized_search_is_the_same_whatever_the_hash_seed() -> None:
    # examples/race_testing.py promises the same search on every run; it used to
    # find a different race with PYTHONHASHSEED=0 than with 1.
    import subprocess
    import sys
    from pathlib import Path

    examples = Path(__file__).resolve().parents[2] / "examples"
    code = (
        "import race_testing as r, startable.testing as st\n"
        "try:\n"
        "    st.check_lifecycle(r.BuggyCounter, settings=r.SEARCH)\n"
        "except st.LifecycleViolation as v:\n"
        "    print(v.replay)\n"
    )
    outputs = []
    for seed in ("0", "1"):
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=300,  # a bound against hangs
            cwd=examples,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]
    assert outputs[0].startswith("Program(steps=")
