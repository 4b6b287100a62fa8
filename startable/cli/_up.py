"""`startable up FILE`: run the cluster a cluster file describes, in the foreground.

The run loop (`up`, `serve`) is kept apart from what is shown: `render` turns
a manager's nodes into a rich renderable, and a reporter (`LiveReporter` on a
terminal, `PlainReporter` otherwise) prints events and service output.
"""

from __future__ import annotations

import functools
import itertools
import logging
import sys
import textwrap
import zlib
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Literal, Protocol, TextIO

import anyio
import attrs
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.logging import RichHandler
from rich.measure import Measurement
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .. import State, of
from ..cluster import (
    OutputLine,
    RemoteError,
    ServiceDefinitionError,
    ServiceEvent,
    ServiceNode,
    ServicesManager,
    load_cluster,
)
from ..program import EXIT_FAILED, EXIT_FORCED, EXIT_OK, EXIT_USAGE, Phase, drive
from ._output import coloured_line, escape, nonblocking_std_streams, output_line

#: Colours for service names, given in creation order; red is kept for errors.
_HUES = ("cyan", "magenta", "green", "yellow", "blue")
PALETTE = (*_HUES, *(f"bright_{hue}" for hue in _HUES))
_STATE_STYLES = {
    State.READY: "dim",
    State.STARTING: "yellow",
    State.STARTED: "bold green",
    State.STOPPING: "yellow",
    State.STOPPED: "dim",
}
#: Below this many columns for it, the last errors go under the table, one a line.
_ERROR_WIDTH = 40
_REFRESH = 0.5  # seconds between two frames of the live display
_TICKS_PER_FRAME = 5  # output is printed this many times per frame


# -- humanising ---------------------------------------------------------------------


def format_bytes(size: int) -> str:
    """`size` bytes in binary units: `"512 B"`, `"23.4 MiB"`."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    units = ("KiB", "MiB", "GiB", "TiB")
    for unit in units[:-1]:
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} {units[-1]}"


def format_duration(seconds: float) -> str:
    """A duration as a person reads it: `"42s"`, `"3m 05s"`, `"2h 10m"`, `"4d 01h"`."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, whole = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {whole:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def short_error(error: BaseException, width: int | None = None) -> str:
    """The first line of `error` (its type first, unless it already says it), cut to `width`.

    Control characters in it are escaped (see `escape`): its text may come
    from a service.
    """
    text = escape(str(error).strip().split("\n")[0])
    if not isinstance(error, RemoteError):  # a RemoteError begins with the remote type
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def describe_error(error: BaseException) -> str:
    """The whole of `error` for the user: every error of a group, notes first.

    Control characters but newlines are escaped (see `escape`).
    """
    if isinstance(error, BaseExceptionGroup):
        return "\n\n".join(describe_error(e) for e in error.exceptions)
    notes = list(getattr(error, "__notes__", ()))
    lines = [f"{note}:" for note in notes]
    if isinstance(error, RemoteError):
        where = f"where: {error.where}"
        lines = [f"{note}:" for note in notes if note != where]
        if error.where:  # said before the error, not in its words
            lines.append(where)
        lines.append(str(error))
    else:
        lines.append(f"{type(error).__name__}: {error}")
    return escape("\n".join(lines), newlines=True)


# -- rendering ----------------------------------------------------------------------


def service_colours(names: Iterable[str]) -> dict[str, str]:
    """A colour for each service, in order: the same file gives the same colours."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def colour_of(name: str, colours: dict[str, str]) -> str:
    """The colour of `name`; one stable across runs for a service not in `colours`."""
    return colours.get(name) or PALETTE[zlib.crc32(name.encode()) % len(PALETTE)]


def in_order(nodes: Iterable[ServiceNode], names: Iterable[str]) -> list[ServiceNode]:
    """`nodes` in the order of `names` (a cluster file's), then the others as they came."""
    rank = {name: i for i, name in enumerate(names)}
    nodes = list(nodes)
    return sorted(nodes, key=lambda node: rank.get(node.name, len(rank)))  # a stable sort


def _forced(node: ServiceNode) -> str | None:
    """The signal that ended its process, if the stop ladder had to send one."""
    ended_by = node.ended_by
    return ended_by if ended_by in ("SIGTERM", "SIGKILL") else None


def _state_cell(node: ServiceNode) -> Text:
    lifecycle = of(node)
    state = lifecycle.state
    style = _STATE_STYLES[state]
    text = state.name
    if state is State.STOPPED:
        if lifecycle.statistics().stop_reason is not None:
            style = "bold red"
        if (forced := _forced(node)) is not None:  # not a clean stop: say how it ended
            text, style = f"STOPPED ({forced})", "bold red"
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
            running = of(node).state in (State.STARTING, State.STARTED, State.STOPPING)
            samples = node.container.resources if node.container is not None and running else []
            sample = samples[-1] if samples else None
            pid = node.pid if running else None
            uptime = node.uptime
            cells: list[RenderableType] = [
                Text(escape(node.name), style=self._colour(node)),
                _state_cell(node),
                str(pid) if pid is not None else "-",
                f"{sample.cpu_percent:.1f}%" if sample is not None else "-",
                format_bytes(sample.rss) if sample is not None else "-",
                str(node.restarts),
                format_duration(uptime) if uptime is not None else "-",
            ]
            if error_width is not None:
                error = short_error(node.last_error) if node.last_error is not None else ""
                cells.append(Text(error, style="red", no_wrap=True, overflow="ellipsis"))
            table.add_row(*cells)
        return table


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


# -- reporting ----------------------------------------------------------------------


def describe_event(manager: ServicesManager, event: ServiceEvent) -> str:
    """One plain line for `event`: `"kv: STARTED (pid 1234)"`, `"worker: restarting in 0.1s"`.

    Control characters in it are escaped (see `escape`).
    """
    name = escape(event.service)
    if event.kind == "moved" and event.change is not None:
        change = event.change
        text = f"{name}: {change.current.name}"
        node = manager.nodes.get(event.service)
        forced = _forced(node) if node is not None and change.current is State.STOPPED else None
        if change.current is State.STARTED and node is not None and node.pid is not None:
            text += f" (pid {node.pid})"
        elif change.reason is not None or forced is not None:
            said = [short_error(change.reason)] if change.reason is not None else []
            said += [f"ended by {forced}"] if forced is not None else []
            text += f" ({'; '.join(said)})"
        return text
    if event.kind == "restarting":
        return f"{name}: restarting in {event.delay or 0:g}s"
    if event.kind == "escalated":
        return f"{name}: failed too often: stopping everything"
    return f"{name}: {event.kind}"


class Reporter(Protocol):
    """Where `serve` reports to.

    A reporter escapes whatever a service supplied (see `escape`) and never
    blocks (it writes to `Outlet`s when `up` runs it).
    """

    phase: Phase

    def event(self, manager: ServicesManager, event: ServiceEvent) -> None: ...

    def output(self, service: str, line: OutputLine) -> None: ...

    def say(self, text: str, *, error: bool = False) -> None: ...

    def showing(self, manager: ServicesManager) -> AbstractAsyncContextManager[None]: ...


@attrs.define(eq=False)
class PlainReporter:
    """One line per event and per line of output, flushed at once: for pipes and logs.

    A line of output is always `name | text`, its text escaped to one line
    (see `output_line`): a service cannot write a line that looks like one
    of startable's own.
    """

    width: int
    out: TextIO = attrs.field(factory=lambda: sys.stdout)
    err: TextIO = attrs.field(factory=lambda: sys.stderr)
    phase: Phase = "starting"

    def event(self, manager: ServicesManager, event: ServiceEvent) -> None:
        self._write(self.out, describe_event(manager, event))

    def output(self, service: str, line: OutputLine) -> None:
        self._write(self.out, f"{escape(service):<{self.width}} | {output_line(line.text)}")

    def say(self, text: str, *, error: bool = False) -> None:
        self._write(self.err if error else self.out, escape(text, newlines=True))

    @staticmethod
    def _write(stream: TextIO, line: str) -> None:
        # One write a line: an Outlet keeps or drops it whole.
        stream.write(line + "\n")
        stream.flush()

    @asynccontextmanager
    async def showing(self, manager: ServicesManager) -> AsyncIterator[None]:
        yield


@attrs.define(eq=False)
class LiveReporter:
    """A table refreshed in place, with the services' output printed above it.

    Lines are printed in batches, a few times a second: rich redraws the
    table after every print, which a chatty service would otherwise turn
    into one redraw per line. A line of output keeps the colours the
    service gave it, every other control character is escaped (see
    `coloured_line`), and a long line wraps under its text, never under its
    prefix.
    """

    width: int
    #: By service name; as `render_table` gives them (`service_colours` of the nodes).
    colours: dict[str, str] = attrs.field(factory=dict)
    console: Console = attrs.field(factory=Console)
    #: For errors once the display is gone (above it while it is shown).
    errors: Console = attrs.field(factory=lambda: Console(stderr=True))
    phase: Phase = "starting"
    #: The table's order (a cluster file's); services not in it come after.
    order: list[str] = attrs.field(factory=list)
    _pending: list[Text | tuple[Text, Text]] = attrs.field(factory=list, init=False)
    _shown: bool = attrs.field(default=False, init=False)

    def event(self, manager: ServicesManager, event: ServiceEvent) -> None:
        # The table shows every state; only what it cannot show is printed.
        change = event.change
        failed = change is not None and change.current is State.STOPPING and change.reason
        node = manager.nodes.get(event.service)
        stopped = change is not None and change.current is State.STOPPED
        forced = stopped and node is not None and _forced(node) is not None
        if event.kind in ("restarting", "escalated") or failed or forced:
            self._print(Text(describe_event(manager, event), style="yellow"))

    def output(self, service: str, line: OutputLine) -> None:
        prefix = Text(f"{escape(service):<{self.width}}", style=colour_of(service, self.colours))
        if line.stream == "stderr":
            prefix.append(" ┃ ", style="dim red")
        else:
            prefix.append(" │ ", style="dim")
        self._print((prefix, coloured_line(line.text)))

    def say(self, text: str, *, error: bool = False) -> None:
        first, _, rest = escape(text, newlines=True).partition("\n")
        message = Text(first, style="bold red" if error else "bold")
        if rest:
            message.append("\n" + rest)
        if error and not self._shown:
            self.errors.print(message)
        else:
            self._print(message)

    def _print(self, item: Text | tuple[Text, Text]) -> None:
        self._pending.append(item)
        if not self._shown:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            width = self.console.width
            lines = Text("\n").join(self._line(item, width) for item in self._pending)
            self._pending.clear()
            self.console.print(lines)

    def _line(self, item: Text | tuple[Text, Text], width: int) -> Text:
        if isinstance(item, Text):
            return item
        prefix, body = item
        indent = prefix.cell_len
        if indent + body.cell_len <= width or width - indent < 10:
            return prefix + body
        wrapped = body.wrap(self.console, width - indent, overflow="fold")
        pad = Text(" " * indent)
        return Text("\n").join([prefix + wrapped[0], *(pad + piece for piece in wrapped[1:])])

    @asynccontextmanager
    async def showing(self, manager: ServicesManager) -> AsyncIterator[None]:
        def frame() -> RenderableType:
            nodes = in_order(manager.nodes.values(), self.order)
            return render(nodes, title=manager.name, phase=self.phase, colours=self.colours)

        # Refreshed from this task, not rich's thread: the nodes are only read
        # between two steps of the event loop.
        with Live(frame(), console=self.console, auto_refresh=False) as live:
            async with anyio.create_task_group() as refresher:

                async def refresh() -> None:
                    for tick in itertools.count():
                        if tick % _TICKS_PER_FRAME == 0:
                            live.update(frame(), refresh=not self._pending)
                        self._flush()  # redraws the table too
                        await anyio.sleep(_REFRESH / _TICKS_PER_FRAME)

                self._shown = True
                refresher.start_soon(refresh)
                try:
                    yield
                finally:
                    refresher.cancel_scope.cancel()
                    self._shown = False
            self._flush()
            live.update(frame(), refresh=True)


# -- running ------------------------------------------------------------------------


def up(path: str, *, backend: Literal["trio", "asyncio"] = "trio", live: bool | None = None) -> int:
    """Run the cluster described by the file at `path` until SIGINT or SIGTERM.

    While it runs, stdout and stderr are `Outlet`s: a reader that stops
    reading never blocks the event loop (its lines are dropped and counted).

    Args:
        path: the cluster file.
        backend: the anyio backend.
        live: a live table (True) or one line per event (False); by default
            live when stdout is a terminal.

    Returns:
        The exit code: 0 when everything stopped cleanly after a signal (or
        on its own without a reason: `on_service_exit = "stop"` after a
        service ended cleanly), 2 when the file cannot be used, 130 when a
        second SIGINT forced the stop, 1 otherwise (a failed start, a service
        that escalated, a service that failed and was not restarted, a stop
        that failed, needed a signal, or took longer than the file's
        `stop_timeout`).
    """

    try:
        cluster = load_cluster(path)
    except ServiceDefinitionError as exc:  # ClusterFileError among them
        print(f"startable: error: {escape(str(exc), newlines=True)}", file=sys.stderr)
        return EXIT_USAGE
    if live is None:
        live = sys.stdout.isatty()
    order = [spec.name for spec in cluster.services]
    width = max((len(name) for name in order), default=0)
    root = logging.getLogger()
    level = root.level
    try:
        with nonblocking_std_streams():
            reporter: Reporter
            if live:
                # Both consoles look sys.stdout and sys.stderr up as they write:
                # while the display is shown, rich sends those above it.
                reporter = LiveReporter(width, service_colours(order), order=order)
                handler: logging.Handler = RichHandler(console=reporter.errors, show_path=False)
                handler.setFormatter(_EscapingFormatter("%(message)s"))
            else:
                reporter = PlainReporter(width)
                handler = logging.StreamHandler(sys.stderr)
                handler.setFormatter(_EscapingFormatter("%(levelname)s %(name)s: %(message)s"))
            root.addHandler(handler)
            root.setLevel(logging.WARNING)
            try:
                manager = ServicesManager(
                    cluster.services, name=cluster.name, on_service_exit=cluster.on_service_exit
                )
                _show_output(manager, reporter)
                return anyio.run(serve, manager, reporter, cluster.stop_timeout, backend=backend)
            finally:
                root.removeHandler(handler)
                root.setLevel(level)
    except KeyboardInterrupt:  # before `serve` listens for signals, or after it
        return EXIT_FORCED


class _EscapingFormatter(logging.Formatter):
    """Log records with their control characters escaped: they may quote a service."""

    def format(self, record: logging.LogRecord) -> str:
        return escape(super().format(record), newlines=True)


def _show_output(manager: ServicesManager, reporter: Reporter) -> None:
    """Send each service's output to `reporter`, those created at run time too."""

    def show(node: ServiceNode) -> None:
        if node.container is not None:  # read at each start, by the controller it makes
            node.container.on_output = functools.partial(reporter.output, node.name)

    for node in manager.nodes.values():
        show(node)
    # Services that services create at run time too, each under its own name.
    manager.subscribe(
        lambda event: show(manager[event.service]) if event.kind == "created" else None
    )


async def serve(manager: ServicesManager, reporter: Reporter, stop_timeout: float) -> int:
    """Start `manager`, wait for a signal or for it to stop on its own, stop it.

    A first SIGINT or SIGTERM stops it (abandoning the start if it is still
    starting), in at most `stop_timeout` seconds; a second SIGINT forces it.

    Returns:
        The exit code, as `up` describes it.
    """
    unsubscribe = manager.subscribe(functools.partial(reporter.event, manager))
    try:
        async with reporter.showing(manager):
            narrator = _Narrator(manager, reporter)
            code = await drive(of(manager), narrator, label=manager.name, stop_timeout=stop_timeout)
            if code == EXIT_OK and manager.failed:  # it stopped cleanly, but not all had run
                for exited in manager.failed.values():
                    narrator.say("a service had failed", error=exited)
                code = EXIT_FAILED
            return code
    finally:
        unsubscribe()


@attrs.define
class _Narrator:
    """What `drive` says, said by the reporter; the phase is shown by the table."""

    manager: ServicesManager
    reporter: Reporter

    def enter(self, phase: Phase) -> None:
        self.reporter.phase = phase
        if phase == "running":
            count = len(self.manager.nodes)
            self.reporter.say(f"{self.manager.name}: {count} services STARTED (Ctrl-C to stop)")

    def say(self, text: str, *, failed: bool = False, error: BaseException | None = None) -> None:
        if error is not None:
            described = describe_error(error)
            if "\n" in described:
                # Indented: no line of an error's text (it may come from a
                # service) can pass for a line of startable's own.
                text += ":\n" + textwrap.indent(described, "  ")
            else:
                text += ": " + described
        self.reporter.say(text, error=failed or error is not None)
