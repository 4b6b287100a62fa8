"""The table of services `startable up` shows: one rich renderable from a manager's nodes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .. import State, of
from ..cluster import Resources, ServiceNode
from ..program import Phase
from ._humanise import (
    colour_of,
    forced_signal,
    format_bytes,
    format_duration,
    service_colours,
    short_error,
)
from ._output import escape

_STATE_STYLES = {
    State.READY: "dim",
    State.STARTING: "yellow",
    State.STARTED: "bold green",
    State.STOPPING: "yellow",
    State.STOPPED: "dim",
}
RUNNING = (State.STARTING, State.STARTED, State.STOPPING)
#: Below this many columns for it, the last errors go under the table, one a line.
_ERROR_WIDTH = 40


def _state_cell(node: ServiceNode) -> Text:
    lifecycle = of(node)
    state = lifecycle.state
    style = _STATE_STYLES[state]
    text = state.name
    if state is State.STOPPED:
        if lifecycle.statistics().stop_reason is not None:
            style = "bold red"
        if (forced := forced_signal(node)) is not None:  # not a clean stop: say how it ended
            text, style = f"STOPPED ({forced})", "bold red"
    elif state in RUNNING and node.health is not None:
        text += f" ({node.health})"
        if node.health == "unhealthy":
            style = "bold yellow"
    return Text(text, style=style)


def render_table(
    nodes: Iterable[ServiceNode], colours: dict[str, str] | None = None
) -> RenderableType:
    """A table of `nodes`, one row each, in the order given: name, state, pid, CPU,
    memory, restarts, uptime and last error.

    CPU and memory come from the last resource sample of a service in a
    child process, shown while it is running. When the console leaves the
    last error fewer than 40 columns, the errors are shown under the table
    instead, one a line, each as wide as the console.

    Args:
        nodes: the services.
        colours: the colour of each name (by default, `service_colours` of
            the nodes in their order).
    """
    nodes = list(nodes)
    if colours is None:
        colours = service_colours(node.name for node in nodes)
    return _ServiceTable(nodes, colours)


@attrs.frozen
class _ServiceTable:
    nodes: list[ServiceNode]
    colours: dict[str, str]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = self._table()
        left = options.max_width - Measurement.get(console, options, table).maximum
        if left >= _ERROR_WIDTH + 2:  # the padding on either side of the column
            yield self._table(error_width=left - 2)
            return
        yield table
        errors = [(node, short_error(node.last_error)) for node in self.nodes if node.last_error]
        if errors:
            width = max(len(escape(node.name)) for node, _ in errors)
            yield Text(" last errors", style="dim")
            for node, error in errors:
                line = Text(" ", no_wrap=True, overflow="ellipsis")  # under the table's column
                line.append(f"{escape(node.name):<{width}}", style=self._colour(node))
                line.append(f"  {error}", style="red")
                yield line

    def _colour(self, node: ServiceNode) -> str:
        return colour_of(node.name, self.colours)

    def _table(self, error_width: int | None = None) -> Table:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        # Only the last column gives way on a narrow terminal (its cells are cut).
        table.add_column("name", no_wrap=True)
        table.add_column("state", no_wrap=True)
        for header in ("pid", "CPU", "memory", "restarts", "uptime"):
            table.add_column(header, justify="right", no_wrap=True)
        if error_width is not None:
            table.add_column("last error", no_wrap=True, max_width=error_width)
        for node in self.nodes:
            running = of(node).state in RUNNING
            replicas = node.replicas
            state = _state_cell(node)
            if replicas:  # a pool: live of desired, and a row per replica below
                live = sum(of(replica).state is State.STARTED for replica in replicas)
                state.append(f" {live}/{len(replicas)}")
            self._row(
                table,
                error_width,
                Text(escape(node.name), style=self._colour(node)),
                state,
                node.pid if running and not replicas else None,  # (a pool: below)
                node.resources if running else [],
                node.restarts,
                node.uptime,
                node.last_error,
            )
            for replica in replicas:
                lifecycle = of(replica)
                self._row(
                    table,
                    error_width,
                    Text(f" #{replica.index}", style=self._colour(node)),
                    Text(lifecycle.state.name, style=_STATE_STYLES[lifecycle.state]),
                    replica.pid if lifecycle.state in RUNNING else None,
                    replica.container.resources if lifecycle.state in RUNNING else [],
                    replica.restarts,
                    replica.uptime,
                    replica.last_error,
                )
        return table

    @staticmethod
    def _row(
        table: Table,
        error_width: int | None,
        name: Text,
        state: Text,
        pid: int | None,
        samples: Sequence[Resources],
        restarts: int,
        uptime: float | None,
        last_error: BaseException | None,
    ) -> None:
        sample = samples[-1] if samples else None
        cpu, memory = (sample.cpu_percent, sample.rss) if sample is not None else (None, None)
        cells: list[RenderableType] = [
            name,
            state,
            *figure_cells(pid, cpu, memory, restarts, uptime),
        ]
        if error_width is not None:
            error = short_error(last_error) if last_error is not None else ""
            cells.append(Text(error, style="red", no_wrap=True, overflow="ellipsis"))
        table.add_row(*cells)


def figure_cells(
    pid: int | None,
    cpu_percent: float | None,
    memory: int | None,
    restarts: int,
    uptime: float | None,
) -> list[str]:
    """The pid, CPU, memory, restarts and uptime cells of a row ("-": unknown)."""
    return [
        str(pid) if pid is not None else "-",
        f"{cpu_percent:.1f}%" if cpu_percent is not None else "-",
        format_bytes(memory) if memory is not None else "-",
        str(restarts),
        format_duration(uptime) if uptime is not None else "-",
    ]


_HINTS: dict[Phase, str] = {
    "starting": "Ctrl-C to stop",
    "running": "Ctrl-C to stop",
    "stopping": "Ctrl-C again to force",
    "stopped": "",
}


def render(
    nodes: Iterable[ServiceNode],
    *,
    title: str,
    phase: Phase,
    colours: dict[str, str] | None = None,
) -> RenderableType:
    """The live display: a progress line (services STARTED of all) over `render_table`."""
    nodes = list(nodes)
    started = sum(1 for node in nodes if of(node).state is State.STARTED)
    header = Table.grid(padding=(0, 1))
    header.add_row(
        Text(escape(title), style="bold"),
        Text(phase, style="yellow" if phase in ("starting", "stopping") else ""),
        ProgressBar(total=max(len(nodes), 1), completed=started, width=30),
        Text(f"{started}/{len(nodes)} started"),
        Text(_HINTS[phase], style="dim"),
    )
    return Group(header, render_table(nodes, colours))
