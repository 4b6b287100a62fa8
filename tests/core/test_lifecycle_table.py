"""The lifecycle table: one declaration drives the checks, messages and docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from startable import State
from startable._lifecycle import (
    MACHINE,
    MOVES,
    ROWS,
    START_ACCEPTS,
    STOP_ACCEPTS,
    Reply,
    render_mermaid,
    render_table,
)

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "docs" / "_generated"
READY, STARTING, STARTED, STOPPING, STOPPED = State


def test_moves_are_exactly_the_lifecycle() -> None:
    assert {
        (READY, STARTING),
        (READY, STOPPED),
        (STARTING, STARTED),
        (STARTING, STOPPING),
        (STARTED, STOPPING),
        (STOPPING, STOPPED),
        (STOPPED, STARTING),
    } == MOVES


def test_accepted_states() -> None:
    assert {READY, STARTING, STARTED, STOPPED} == START_ACCEPTS
    assert set(State) == STOP_ACCEPTS


def test_the_machine_is_built_from_the_rows() -> None:
    assert set(MACHINE.states) == {s.name for s in State}
    assert MACHINE.initial == "READY"
    assert {(r.trigger, r.source.name) for r in ROWS} == {
        (trigger, source)
        for trigger, event in MACHINE.events.items()
        for source in event.transitions
    }
    assert all(r.reply is not None for r in ROWS if r.trigger in ("start", "stop"))
    assert {r.reply for r in ROWS} >= set(Reply)


def render_shop_graph() -> str:
    from startable.cluster import load_cluster
    from startable.cluster._system.services import render_mermaid as render_graph

    return render_graph(load_cluster(ROOT / "examples" / "shop" / "shop.toml").services)


@pytest.mark.parametrize(
    ("name", "render"),
    [
        ("lifecycle-diagram.mmd", render_mermaid),
        ("lifecycle-table.md", render_table),
        ("shop-graph.mmd", render_shop_graph),
    ],
)
def test_generated_docs_are_up_to_date(name: str, render: object) -> None:
    path = GENERATED / name
    expected = render()  # type: ignore[operator]
    assert path.read_text() == expected, (
        f"docs/_generated/{name} is stale; run: uv run python docs/generate.py"
    )
