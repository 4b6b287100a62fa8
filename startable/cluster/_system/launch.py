"""Ordered launches: an action on each node of a graph once its predecessors are done.

The manager starts services dependencies first and stops them dependents
first with one function, `launch_in_order`; a pool can start its replicas
with it too. Nothing here knows what a node is beyond being hashable.
"""

from __future__ import annotations

import graphlib
import itertools
import math
from collections.abc import Callable, Coroutine, Hashable, Iterable, Iterator
from typing import Any, TypeAlias, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

N = TypeVar("N", bound=Hashable)
T = TypeVar("T")
#: Where an action reports its node once done, with the error it failed with (None: done).
Report: TypeAlias = MemoryObjectSendStream[tuple[N, Exception | None]]


def closure(targets: Iterable[N], predecessors: Callable[[N], Iterable[N]]) -> set[N]:
    """`targets` and, transitively, their predecessors (those `predecessors` gives)."""
    found: set[N] = set()
    pending = list(targets)
    while pending:
        node = pending.pop()
        if node not in found:
            found.add(node)
            pending.extend(predecessors(node))
    return found


async def launch_in_order(
    sorter: graphlib.TopologicalSorter[N],
    action: Callable[[N, Report[N]], Coroutine[Any, Any, None]],
) -> list[tuple[N, Exception]]:
    """Run `action` on each node of `sorter` once its predecessors are done.

    Each action runs in a task of its own and reports its node with the
    error it failed with, or None. After a failure no more are launched;
    those in flight finish. Returns the failures, in the order they came.
    """
    sorter.prepare()
    send, receive = anyio.create_memory_object_stream[tuple[N, Exception | None]](math.inf)
    failed: list[tuple[N, Exception]] = []
    with send, receive:
        async with anyio.create_task_group() as group:
            while sorter.is_active() and not failed:
                for node in sorter.get_ready():
                    group.start_soon(action, node, send)
                first = await receive.receive()
                # Every report that is in, before launching more.
                for node, error in itertools.chain([first], _already_in(receive)):
                    if error is None:
                        sorter.done(node)
                    else:
                        failed.append((node, error))
        failed.extend((n, e) for n, e in _already_in(receive) if e is not None)
    return failed


def _already_in(receive: MemoryObjectReceiveStream[T]) -> Iterator[T]:
    """What `receive` holds already, without waiting for more."""
    while True:
        try:
            yield receive.receive_nowait()
        except anyio.WouldBlock:
            return
