"""`startable up --dev`: each pool runs one replica, reloaded when its source changes.

`dev_services` turns a cluster's specs into their dev form: every pool
becomes a pool of one replica that is never reforked (a crash waits for the
next save, which brings it back), and every other service is left as it is.
`reload_on_change` watches the source directories of the pools' entries
(`startable.cluster.source_directory`) with watchfiles and, once the files
have been quiet for the cluster's `reload_delay`, reloads the pools whose
directory holds a changed file: a new replica is STARTED, then the old one
is retired. The manager and the services that are no pools (an agent) are
never touched.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Iterable, Mapping

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .. import State, of
from ..cluster import RestartPolicy, ServicesManager, ServiceSpec, source_directory
from ..program import Narrator

STARTED = State.STARTED
#: watchfiles gives a batch once no change has come for this long (milliseconds),
#: which counts in the quiet before a reload.
STEP_MS = 20


def missing() -> str | None:
    """Why dev mode cannot run here (None: it can)."""
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        return "--dev needs watchfiles: pip install 'startable[dev]'"
    return None


def dev_services(specs: Iterable[ServiceSpec]) -> list[ServiceSpec]:
    """`specs` for dev mode: each pool a pool of one, never restarted on its own."""
    never = RestartPolicy(mode="never")
    return [
        attrs.evolve(spec, replicas=1, pool=True, restart=never) if spec.is_pool else spec
        for spec in specs
    ]


def watched_directories(specs: Iterable[ServiceSpec]) -> dict[str, str]:
    """The source directory of each pool that has one, by pool."""
    found = {spec.name: source_directory(spec) for spec in specs if spec.is_pool}
    return {name: directory for name, directory in found.items() if directory is not None}


def _holds(directory: str, path: str) -> bool:
    return os.path.commonpath([directory, os.path.abspath(path)]) == directory


async def quiet_batches(
    changes: MemoryObjectReceiveStream[set[str]], delay: float
) -> AsyncIterator[set[str]]:
    """The paths of `changes`, gathered until none came for `delay` seconds.

    So that two saves within `delay` make one batch (and one reload).
    """
    async with changes:
        async for first in changes:
            pending = set(first)
            while True:
                with anyio.move_on_after(delay) as quiet:
                    try:
                        pending |= await changes.receive()
                    except anyio.EndOfStream:
                        break
                if quiet.cancelled_caught:
                    break
            yield pending


async def watch(
    directories: Iterable[str], send: MemoryObjectSendStream[set[str]], stop: anyio.Event
) -> None:
    """Send the paths of the Python files that change under `directories`, until `stop`."""
    import watchfiles  # only in dev mode

    paths = sorted(set(directories))
    async with send:
        async for batch in watchfiles.awatch(
            *paths, watch_filter=watchfiles.PythonFilter(), stop_event=stop, step=STEP_MS
        ):
            send.send_nowait({path for _, path in batch})


async def reload_on_change(
    manager: ServicesManager,
    narrator: Narrator,
    directories: Mapping[str, str],
    delay: float,
    stop: anyio.Event,
) -> None:
    """Reload each pool whose directory holds a changed file, `delay` after the last change.

    A pool that is STARTED is reloaded; one that has stopped (it crashed) is
    started again. Runs until `stop` is set.
    """
    send, receive = anyio.create_memory_object_stream[set[str]](math.inf)
    async with anyio.create_task_group() as watching:
        watching.start_soon(watch, directories.values(), send, stop)
        # A batch comes STEP_MS after its last change: that is quiet already.
        async for changed in quiet_batches(receive, max(delay - STEP_MS / 1000, 0.0)):
            for pool, directory in directories.items():
                touched = sorted(p for p in changed if _holds(directory, p))
                if touched:
                    await _reload(manager, narrator, pool, touched)


async def _reload(
    manager: ServicesManager, narrator: Narrator, pool: str, touched: list[str]
) -> None:
    shown = os.path.basename(touched[0]) + (f" and {len(touched) - 1} more" if touched[1:] else "")
    try:
        if of(manager[pool]).state is STARTED:
            narrator.say(f"{shown} changed: reloading {pool}")
            await manager.reload(pool)
        else:
            narrator.say(f"{shown} changed: starting {pool} again")
            await manager.start_service(pool)
        narrator.say(f"{pool}: reloaded")
    except Exception as exc:  # the code is broken (it fails to start): the next save may mend it
        narrator.say(f"{pool} could not reload", error=exc)
