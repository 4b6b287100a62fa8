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


def test_the_command_reference_names_every_command_and_option() -> None:
    """docs/_generated/cli.md is argparse's help, whose layout changes between
    Pythons: what must match is every command and every option it has."""
    import argparse

    from startable.cli import _parser

    page = (GENERATED / "cli.md").read_text()
    parser = _parser(width=88)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        assert f"## `startable {name}`" in page, f"{name}: run uv run python docs/generate.py"
        for action in command._actions:
            for option in action.option_strings:
                assert option in page, f"{name} {option}: run uv run python docs/generate.py"
            if action.help and action.help != argparse.SUPPRESS:
                first = action.help.split()[0]
                assert first in page
