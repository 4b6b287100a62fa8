"""The operator's commands against a running `startable up`: `status`, `logs`,
`start`, `stop`, `restart` and `down`, through its control socket (`_control`).

Each finds the socket from the cluster file (the first argument when it ends
in `.toml`, else `./startable.toml`), or takes `--control PATH`. Exit codes:
0 when the command was carried out, 1 when the cluster refused or failed it
(the error is printed), 2 when there is no cluster to ask (no such file, or
no `startable up` of it runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence

import anyio
import msgspec
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .. import StartableError
from ..cluster import ServiceDefinitionError, load_cluster
from ..program import EXIT_FAILED, EXIT_FORCED, EXIT_OK, EXIT_USAGE
from ._control import (
    ClusterGone,
    Command,
    ControlError,
    Line,
    NotRunning,
    Status,
    command,
    default_path,
    request,
)
from ._output import escape, output_line
from ._table import figure_cells

DEFAULT_FILE = "startable.toml"


class _Usage(StartableError):
    """No cluster to ask: exit code 2."""


def locate(arguments: Sequence[str], control: str | None) -> tuple[str, list[str]]:
    """The control socket's path, and the arguments that are not the cluster file."""
    rest = list(arguments)
    if control is not None:
        return os.path.abspath(control), rest
    file = rest.pop(0) if rest and rest[0].endswith(".toml") else DEFAULT_FILE
    if not os.path.isfile(file):
        named = "" if file != DEFAULT_FILE else " (name the cluster file, or give --control PATH)"
        raise _Usage(f"no such cluster file: {file}{named}")
    try:
        cluster = load_cluster(file)
    except ServiceDefinitionError as exc:
        raise _Usage(str(exc)) from None
    return default_path(cluster.name, cluster.path), rest


def run_command(
    name: str,
    arguments: Sequence[str],
    *,
    control: str | None = None,
    as_json: bool = False,
    lines: int = 10,
    follow: bool = False,
    watch: float | None = None,
) -> int:
    """Run the operator's command `name`; its exit code (`watch`: `status` again
    every that many seconds, until Ctrl-C or the cluster's end)."""
    try:
        path, services = _arguments(name, arguments, control)
        replicas = 0
        if name == "scale":
            replicas = _replicas(services)
            services = services[:1]
        asked = command(name, services, lines=lines, follow=follow, replicas=replicas)
        if watch is not None and name == "status":
            return anyio.run(_watch, path, as_json, watch, backend="trio")
        return anyio.run(_run, asked, path, as_json, backend="trio")
    except _Usage as exc:
        print(f"startable: error: {escape(str(exc), newlines=True)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # `logs -f` and `status --watch` end with Ctrl-C
        return EXIT_OK if follow or watch is not None else EXIT_FORCED


def _replicas(arguments: Sequence[str]) -> int:
    if len(arguments) != 2 or not arguments[1].isdigit():
        raise _Usage("startable scale: name one pool and a number of replicas: scale web 4")
    return int(arguments[1])


def _arguments(name: str, arguments: Sequence[str], control: str | None) -> tuple[str, list[str]]:
    path, services = locate(arguments, control)
    if name in ("start", "stop", "restart") and not services:
        raise _Usage(f"startable {name}: name the services")
    if name in ("status", "down") and services:
        raise _Usage(f"startable {name}: no services are named here ({services[0]!r}?)")
    return path, services


async def _run(asked: Command, path: str, as_json: bool) -> int:
    name, services, follow = asked.command, list(asked.services), asked.follow
    got: list[Status | Line] = []
    console = Console(highlight=False, soft_wrap=True)

    def take(message: Status | Line) -> None:
        if isinstance(message, Line):
            _print_line(message)
        else:
            got.append(message)

    try:
        await request(path, asked, take, deadline=None if follow else _deadline(name))
    except ClusterGone:
        if follow:  # the cluster stopped: nothing more to follow
            return EXIT_OK
        print("startable: error: the cluster stopped before it answered", file=sys.stderr)
        return EXIT_FAILED
    except ControlError as exc:
        print(f"startable: error: {escape(str(exc), newlines=True)}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, NotRunning) else EXIT_FAILED
    if name == "down":
        if not await _until_gone(path):
            print("startable: error: still stopping after 600s", file=sys.stderr)
            return EXIT_FAILED
        print("stopped")
    status = next((m for m in got if isinstance(m, Status)), None)
    if status is not None:
        if as_json:
            sys.stdout.write(json.dumps(_document(status), indent=2) + "\n")
        else:
            console.print(render_status(status))
    elif name in ("start", "stop", "restart", "reload"):
        print(f"{name}: done ({', '.join(services) or 'every pool'})")
    elif name == "scale":
        print(f"scale: {services[0]} has {asked.replicas} replicas")
    return EXIT_OK


async def _watch(path: str, as_json: bool, interval: float) -> int:
    """`status` every `interval` seconds: in place on a terminal, else one after
    another; it ends with Ctrl-C, or when the cluster has stopped."""
    console = Console(highlight=False, soft_wrap=True)
    live = None if as_json or not console.is_terminal else Live(console=console)
    shown = False
    with live if live is not None else contextlib.nullcontext():
        while True:
            got: list[Status | Line] = []
            try:
                await request(path, command("status"), got.append, deadline=_deadline("status"))
            except ControlError as exc:
                if isinstance(exc, NotRunning | ClusterGone) and shown:  # it has stopped
                    print("the cluster has stopped", file=sys.stderr)
                    return EXIT_OK
                print(f"startable: error: {escape(str(exc), newlines=True)}", file=sys.stderr)
                return EXIT_FAILED
            status = next(m for m in got if isinstance(m, Status))
            if as_json:
                sys.stdout.write(json.dumps(_document(status)) + "\n")
                sys.stdout.flush()
            elif live is not None:
                live.update(render_status(status))
            else:
                console.print(render_status(status))
                console.print()
            shown = True
            await anyio.sleep(interval)


def _document(status: Status) -> dict[str, object]:
    return {
        "cluster": status.cluster,
        "state": status.state,
        "pid": status.pid,
        "services": msgspec.to_builtins(status.rows),
    }


def _deadline(name: str) -> float:
    # A stop may take its ladder's time, a start the service's; status answers at once.
    return 10.0 if name in ("status", "logs", "down") else 600.0


async def _until_gone(path: str) -> bool:
    """Wait until the cluster has stopped (its control socket is gone); False if it
    has not within 600 seconds."""
    with anyio.move_on_after(600):
        while os.path.exists(path):  # noqa: ASYNC110, ASYNC240 - another process removes it
            await anyio.sleep(0.05)
        return True
    return False


def _print_line(line: Line) -> None:
    label = line.service if line.replica < 0 else f"{line.service}#{line.replica}"
    sys.stdout.write(f"{escape(label)} | {output_line(line.text)}\n")
    sys.stdout.flush()


def render_status(status: Status) -> Group:
    """What `startable status` prints: a table of the services, and their last errors."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for header in ("pid", "CPU", "memory", "restarts", "uptime"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("ended", no_wrap=True)
    errors: list[tuple[str, str]] = []
    for row in status.rows:
        name = escape(row.name) if row.replica < 0 else f" #{row.replica}"
        state = escape(row.state) + (f" {row.live}/{row.replicas}" if row.replicas else "")
        if row.health:
            state += f" ({escape(row.health)})"
        table.add_row(
            name,
            Text(state, style="bold green" if row.state == "STARTED" else ""),
            *figure_cells(row.pid, row.cpu_percent, row.memory, row.restarts, row.uptime),
            escape(row.ended) or "-",
        )
        if row.last_error:
            label = escape(row.name) + ("" if row.replica < 0 else f"#{row.replica}")
            errors.append((label, escape(row.last_error)))
    title = Text(f"{escape(status.cluster)}: {status.state} (pid {status.pid})", style="bold")
    parts: list[RenderableType] = [title, table]
    if errors:
        parts.append(Text("last errors", style="dim"))
        width = max(len(label) for label, _ in errors)
        for label, error in errors:
            line = Text(f"{label:<{width}}  ", no_wrap=True, overflow="ellipsis")
            line.append(error, style="red")
            parts.append(line)
    return Group(*parts)
