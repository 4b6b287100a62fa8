"""How `startable up` says things: sizes, durations, errors, events, colours."""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from ..cluster import RemoteError, ServiceNode
from ._output import escape

#: Colours for service names, given in creation order; red is kept for errors.
_HUES = ("cyan", "magenta", "green", "yellow", "blue")
PALETTE = (*_HUES, *(f"bright_{hue}" for hue in _HUES))


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


def forced_signal(node: ServiceNode) -> str | None:
    """The signal that ended its process, if the stop ladder had to send one."""
    ended_by = node.ended_by
    return ended_by if ended_by in ("SIGTERM", "SIGKILL") else None
