"""Reporters: how `startable up` prints events and output.

A live table on a terminal (`LiveReporter`), plain lines otherwise (`PlainReporter`).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, TextIO

import anyio
import attrs
from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text

from .. import State
from ..cluster import OutputLine, ServiceEvent, ServicesManager, ServiceSpec
from ..program import Phase
from ._humanise import colour_of, forced_signal, in_order, short_error
from ._output import coloured_line, escape, output_line
from ._table import render

_REFRESH = 0.5  # seconds between two frames of the live display
_TICKS_PER_FRAME = 5  # output is printed this many times per frame


def label(service: str, line: OutputLine) -> str:
    """Who wrote `line`: the service, and which replica of a pool (`web#2`)."""
    return service if line.replica is None else f"{service}#{line.replica}"


def label_width(services: Sequence[ServiceSpec]) -> int:
    """How wide the labels of `services`' output are (a pool's replicas' at its size)."""
    return max(
        (len(s.name) + (len(f"#{s.replicas - 1}") if s.is_pool else 0) for s in services),
        default=0,
    )


def describe_event(manager: ServicesManager, event: ServiceEvent) -> str:
    """One plain line for `event`: `"kv: STARTED (pid 1234)"`, `"worker: restarting in 0.1s"`.

    Control characters in it are escaped (see `escape`).
    """
    name = escape(event.service)
    if event.kind == "moved" and event.change is not None:
        change = event.change
        text = f"{name}: {change.current.name}"
        node = manager.nodes.get(event.service)
        forced = (
            forced_signal(node) if node is not None and change.current is State.STOPPED else None
        )
        if change.current is State.STARTED and node is not None and node.replicas:
            pids = ", ".join(str(r.pid) for r in node.replicas if r.pid is not None)
            plural = "s" if len(node.replicas) != 1 else ""
            text += f" ({len(node.replicas)} replica{plural}: pid{plural} {pids})"
        elif change.current is State.STARTED and node is not None and node.pid is not None:
            text += f" (pid {node.pid})"
        elif change.reason is not None or forced is not None:
            said = [short_error(change.reason)] if change.reason is not None else []
            said += [f"ended by {forced}"] if forced is not None else []
            text += f" ({'; '.join(said)})"
        return text
    if event.kind == "restarting" and event.replica is not None:
        return f"{name}: replica #{event.replica} restarting in {event.delay or 0:g}s"
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
        self._write(
            self.out, f"{escape(label(service, line)):<{self.width}} | {output_line(line.text)}"
        )

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
        forced = stopped and node is not None and forced_signal(node) is not None
        if event.kind in ("restarting", "escalated") or failed or forced:
            self._print(Text(describe_event(manager, event), style="yellow"))

    def output(self, service: str, line: OutputLine) -> None:
        prefix = Text(
            f"{escape(label(service, line)):<{self.width}}", style=colour_of(service, self.colours)
        )
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
