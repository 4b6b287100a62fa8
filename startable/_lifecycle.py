"""The lifecycle table, declared once.

The rows below are the single source of truth for the legal moves between
states, for what `start()` and `stop()` do in each state, for the states
named in error messages, and for the diagram and table in the docs. They are
loaded into one `transitions.Machine` at import time, which validates them;
the run-time engine then uses the plain lookups derived from that machine (a
`Machine` per object would cost ~10 KiB and ~50 µs each).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs
import transitions


class State(enum.Enum):
    """The five states of a lifecycle.

    Attributes:
        READY: created, never started.
        STARTING: raw start is running.
        STARTED: raw start succeeded; the service is usable.
        STOPPING: on_stopping hooks have been called; raw stop is running.
        STOPPED: raw stop has finished. `start()` begins a new cycle.
    """

    READY = "READY"
    STARTING = "STARTING"
    STARTED = "STARTED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"

    # Members are singletons compared by identity; the C-level identity hash
    # makes the engine's table lookups about twice as fast as Enum's own.
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"State.{self.name}"

    def can_move_to(self, other: State) -> bool:
        """Whether the lifecycle table allows a move from this state to `other`."""
        return (self, other) in MOVES


class Reply(enum.Enum):
    """What a call of `start()` or `stop()` does in a given state."""

    BEGIN = "begins"  # runs the raw hook in the calling task
    JOIN = "joins"  # waits for the phase in flight and shares its outcome
    RETURN = "returns at once"
    DEFER = "waits for raw start to finish, then stops"


@attrs.frozen
class Row:
    """One row of the lifecycle table: `trigger` in `source` goes to `dest`.

    `dest` is None when the call does not move the state. `reply` is set for
    the two public calls, `start` and `stop`; the other triggers are the
    engine's own events.
    """

    trigger: str
    source: State
    dest: State | None
    reply: Reply | None = None
    note: str = ""


READY, STARTING, STARTED, STOPPING, STOPPED = State

#: The lifecycle. A call that has no row in a state raises StateError there.
ROWS: tuple[Row, ...] = (
    Row("start", READY, STARTING, Reply.BEGIN, "raw start runs once"),
    Row("start", STARTING, None, Reply.JOIN, "raw start is not run again"),
    Row("start", STARTED, None, Reply.RETURN),
    Row("start", STOPPED, STARTING, Reply.BEGIN, "a new cycle"),
    Row("stop", READY, STOPPED, Reply.RETURN, "no raw hook runs"),
    Row("stop", STARTING, None, Reply.DEFER, "ok or not"),
    Row("stop", STARTED, STOPPING, Reply.BEGIN, "on_stopping hooks are called with err"),
    Row("stop", STOPPING, None, Reply.JOIN, "a second err is ignored"),
    Row("stop", STOPPED, None, Reply.RETURN),
    Row("raw_start_returned", STARTING, STARTED),
    Row("raw_start_raised", STARTING, STOPPING, note="raw stop runs with the error"),
    Row("raw_stop_finished", STOPPING, STOPPED, note="whether raw stop raised or not"),
)

MACHINE = transitions.Machine(
    model=None,
    states=[state.name for state in State],
    initial=READY.name,
    transitions=[
        {"trigger": row.trigger, "source": row.source.name, "dest": row.dest and row.dest.name}
        for row in ROWS
    ],
    auto_transitions=False,
)


def _derive_moves() -> frozenset[tuple[State, State]]:
    moves = set()
    for event in MACHINE.events.values():
        for source, candidates in event.transitions.items():
            for transition in candidates:
                if transition.dest is not None:
                    moves.add((State[source], State[transition.dest]))
    return frozenset(moves)


def _derive_accepts(trigger: str) -> frozenset[State]:
    return frozenset(State[source] for source in MACHINE.events[trigger].transitions)


def _derive_replies(trigger: str) -> Mapping[State, Reply]:
    accepted = _derive_accepts(trigger)
    replies = {row.source: row.reply for row in ROWS if row.trigger == trigger}
    assert set(replies) == accepted  # the machine and the rows agree
    return {state: reply for state, reply in replies.items() if reply is not None}


#: Every legal (from, to) pair; the engine refuses any other move.
MOVES = _derive_moves()
#: For each state, the states it may move to (the engine's check of each move).
SUCCESSORS = {state: frozenset(b for a, b in MOVES if a is state) for state in State}
#: The states in which `start()` / `stop()` are accepted.
START_ACCEPTS = _derive_accepts("start")
STOP_ACCEPTS = _derive_accepts("stop")
#: What a call does in each state where it is accepted.
START_REPLIES = _derive_replies("start")
STOP_REPLIES = _derive_replies("stop")


def describe_states(states: frozenset[State] | set[State]) -> str:
    """`READY, STARTED` in declaration order."""
    return ", ".join(state.name for state in State if state in states)


def render_mermaid() -> str:
    """The lifecycle as a Mermaid `stateDiagram-v2`, drawn from the machine."""
    lines = ["stateDiagram-v2", "    direction LR", f"    [*] --> {MACHINE.initial}"]
    for trigger, event in MACHINE.events.items():
        for source, candidates in event.transitions.items():
            for transition in candidates:
                label = f"{trigger}()" if trigger in ("start", "stop") else trigger
                dest = transition.dest or source
                reply = next(
                    (r.reply for r in ROWS if r.trigger == trigger and r.source.name == source),
                    None,
                )
                if transition.dest is None and reply is not None:
                    label = f"{label} {reply.value}"
                lines.append(f"    {source} --> {dest}: {label}")
    return "\n".join(lines) + "\n"


def render_table() -> str:
    """The call table (state x call) as Markdown, drawn from the rows."""
    header = "| state | `start(on_stopping=None)` | `stop(err=None)` |\n|---|---|---|\n"
    body = []
    for state in State:
        cells = []
        for trigger in ("start", "stop"):
            row = next((r for r in ROWS if r.trigger == trigger and r.source is state), None)
            if row is None:
                cells.append("raises `StateError`")
                continue
            assert row.reply is not None
            text = row.reply.value if row.dest is None else f"→ {row.dest.name}"
            if row.note:
                text += f" ({row.note})"
            cells.append(text)
        body.append(f"| {state.name} | {cells[0]} | {cells[1]} |\n")
    return header + "".join(body)
