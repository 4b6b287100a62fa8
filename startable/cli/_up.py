"""`startable up FILE`: run the cluster a cluster file describes, in the foreground.

The run loop (`up`, `serve`) is kept apart from what is shown: `_table.render`
turns a manager's nodes into a rich renderable, and a reporter
(`_reporters.LiveReporter` on a terminal, `PlainReporter` otherwise) prints
events and service output.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Sequence
from typing import Literal

import anyio
import anyio.abc
import attrs
from rich.logging import RichHandler

import startable

from .. import State, of
from ..cluster import (
    OutputLine,
    ServiceDefinitionError,
    ServiceNode,
    ServicesManager,
    ServiceSpec,
    load_cluster,
)
from ..program import EXIT_FAILED, EXIT_FORCED, EXIT_OK, EXIT_USAGE, Phase, drive
from ._control import ControlError, ControlServer, LogBuffer, default_path
from ._humanise import describe_error, service_colours
from ._logfiles import LogFiles
from ._output import escape, nonblocking_std_streams
from ._reporters import LiveReporter, PlainReporter, Reporter, label_width

STARTED = State.STARTED


def up(
    path: str,
    *,
    backend: Literal["trio", "asyncio"] = "trio",
    live: bool | None = None,
    dev: bool = False,
    control: str | None = None,
    only: Sequence[str] = (),
) -> int:
    """Run the cluster described by the file at `path` until SIGINT or SIGTERM.

    While it runs, stdout and stderr are `Outlet`s: a reader that stops
    reading never blocks the event loop (its lines are dropped and counted).

    Args:
        path: the cluster file.
        backend: the anyio backend.
        live: a live table (True) or one line per event (False); by default
            live when stdout is a terminal.
        dev: dev mode: each pool runs one replica, never reforked, and is
            reloaded when a Python file under its entry's source directory
            changes (after the file's `reload_delay` of quiet).
        control: the control socket's path (by default `default_path` of
            the cluster's name and file).
        only: run only these services, and what they need (empty: all).

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
        options = cluster.manager_options()
    except ServiceDefinitionError as exc:  # ClusterFileError among them
        print(f"startable: error: {escape(str(exc), newlines=True)}", file=sys.stderr)
        return EXIT_USAGE
    if live is None:
        live = sys.stdout.isatty()
    try:
        services = needed(cluster.services, only)
    except KeyError as exc:
        print(f"startable: error: {path}: {exc.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    watching: Watching | None = None
    if dev:
        from ._dev import dev_services, missing, watched_directories

        if (why := missing()) is not None:
            print(f"startable: error: {why}", file=sys.stderr)
            return EXIT_USAGE
        services = dev_services(services)
        watching = Watching(watched_directories(services), cluster.reload_delay)
    order = [spec.name for spec in services]
    width = label_width(services)
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
            files = (
                LogFiles(cluster.log_directory, cluster.log_max_size, cluster.log_keep)
                if cluster.log_directory is not None
                else None
            )
            try:
                manager = ServicesManager(services, **options)
                logs = LogBuffer()
                _show_output(manager, reporter, logs, files)
                where = os.path.abspath(control) if control else None
                server = ControlServer(
                    manager, where or default_path(cluster.name, cluster.path), logs, order=order
                )
                return anyio.run(
                    serve,
                    manager,
                    reporter,
                    cluster.stop_timeout,
                    watching,
                    server,
                    backend=backend,
                )
            finally:
                root.removeHandler(handler)
                root.setLevel(level)
                if files is not None:
                    files.close()
    except KeyboardInterrupt:  # before `serve` listens for signals, or after it
        return EXIT_FORCED


def needed(specs: Sequence[ServiceSpec], only: Sequence[str]) -> list[ServiceSpec]:
    """The services of `specs` that `only` names, and all they depend on, in the
    file's order (all of them when `only` is empty).

    Raises:
        KeyError: a name that is no service of the file (its message says so).
    """
    if not only:
        return list(specs)
    by_name = {spec.name: spec for spec in specs}
    wanted: set[str] = set()
    stack = list(only)
    while stack:
        name = stack.pop()
        if name not in by_name:
            known = ", ".join(by_name)
            raise KeyError(f"there is no service named {escape(name)!r} (services: {known})")
        if name not in wanted:
            wanted.add(name)
            stack.extend(by_name[name].depends_on)
    return [spec for spec in specs if spec.name in wanted]


class _EscapingFormatter(logging.Formatter):
    """Log records with their control characters escaped: they may quote a service."""

    def format(self, record: logging.LogRecord) -> str:
        return escape(super().format(record), newlines=True)


def _show_output(
    manager: ServicesManager, reporter: Reporter, logs: LogBuffer, files: LogFiles | None = None
) -> None:
    """Send each service's output to `reporter`, `logs` and `files` (if any), those
    created at run time too."""

    def show(node: ServiceNode) -> None:
        name = node.name

        def output(line: OutputLine) -> None:
            logs.add(name, line)
            if files is not None:
                files.write(name, line)
            reporter.output(name, line)

        node.set_output(output)

    for node in manager.nodes.values():
        show(node)
    # Services that services create at run time too, each under its own name.
    manager.subscribe(
        lambda event: show(manager[event.service]) if event.kind == "created" else None
    )


@attrs.frozen
class Watching:
    """What dev mode watches: each pool's source directory, and the quiet before a reload."""

    directories: dict[str, str]
    delay: float


async def serve(
    manager: ServicesManager,
    reporter: Reporter,
    stop_timeout: float,
    watching: Watching | None = None,
    control: ControlServer | None = None,
) -> int:
    """Start `manager`, wait for a signal or for it to stop on its own, stop it.

    A first SIGINT or SIGTERM stops it (abandoning the start if it is still
    starting), in at most `stop_timeout` seconds; a second SIGINT forces it.
    While it runs, SIGHUP reloads every pool and SIGTTIN / SIGTTOU give each
    pool one replica more / less; with `watching` (dev mode), a pool is
    reloaded when its source changes.

    With `control`, its socket is served from before the start to after the
    stop (`startable status` and the other commands reach it); one that
    cannot be served (another `startable up` of the file runs) ends it with
    exit code 2 before anything starts.

    Returns:
        The exit code, as `up` describes it.
    """
    if control is None:
        return await _serve(manager, reporter, stop_timeout, watching)
    async with startable.open_owner():
        try:
            await of(control).start()
        except (ControlError, OSError) as exc:
            reporter.say(
                f"startable: error: the control socket cannot be served: {exc}", error=True
            )
            return EXIT_USAGE
        try:
            return await _serve(manager, reporter, stop_timeout, watching)
        finally:
            with anyio.CancelScope(shield=True):
                await of(control).stop()


async def _serve(
    manager: ServicesManager,
    reporter: Reporter,
    stop_timeout: float,
    watching: Watching | None,
) -> int:
    unsubscribe = manager.subscribe(functools.partial(reporter.event, manager))
    try:
        async with reporter.showing(manager), anyio.create_task_group() as operating:
            narrator = _Narrator(manager, reporter)
            operating.start_soon(_operate, manager, narrator)
            stop_watching = anyio.Event()
            if watching is not None:
                _watch(operating, manager, narrator, watching, stop_watching)
            code = await drive(of(manager), narrator, label=manager.name, stop_timeout=stop_timeout)
            stop_watching.set()  # (the watcher's thread sees it within a step)
            operating.cancel_scope.cancel()
        if code == EXIT_OK and manager.failed:  # it stopped cleanly, but not all had run
            for exited in manager.failed.values():
                narrator.say("a service had failed", error=exited)
            code = EXIT_FAILED
        return code
    finally:
        unsubscribe()


def _watch(
    group: anyio.abc.TaskGroup,
    manager: ServicesManager,
    narrator: _Narrator,
    watching: Watching,
    stop: anyio.Event,
) -> None:
    from ._dev import reload_on_change

    directories = watching.directories
    if not directories:
        narrator.say("dev mode: no pool has source files to watch")
        return
    for pool, directory in directories.items():
        narrator.say(f"dev mode: {pool} reloads when a .py file under {directory} changes")
    group.start_soon(reload_on_change, manager, narrator, directories, watching.delay, stop)


#: What the operator's signals do to every pool while the cluster runs.
POOL_SIGNALS = {signal.SIGHUP: "reload", signal.SIGTTIN: "grow", signal.SIGTTOU: "shrink"}


async def _operate(manager: ServicesManager, narrator: _Narrator) -> None:
    """SIGHUP reloads every pool; SIGTTIN and SIGTTOU give each one replica more
    or less (never fewer than one). One at a time, in the order they came.
    A cluster without pools leaves the three signals alone."""
    if not manager.pools():  # a hangup ends it as it ends any program, then
        return
    with anyio.open_signal_receiver(*POOL_SIGNALS) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            pools = manager.pools()
            if of(manager).state is not STARTED or not pools:
                why = "it is not running" if pools else "it has no pool"
                narrator.say(f"{name} received: ignored ({manager.name}: {why})")
                continue
            for pool in pools:
                await _change(manager, narrator, pool, POOL_SIGNALS[signal.Signals(signum)], name)


async def _change(
    manager: ServicesManager, narrator: _Narrator, pool: str, what: str, signame: str
) -> None:
    size = len(manager[pool].containers)
    try:
        if what == "reload":
            narrator.say(f"{signame} received: reloading {pool} ({size} replicas, one by one)")
            await manager.reload(pool)
            narrator.say(f"{pool}: reloaded")
        else:
            target = size + 1 if what == "grow" else size - 1
            if target < 1:
                narrator.say(f"{signame} received: {pool} keeps its one replica")
                return
            narrator.say(f"{signame} received: {pool} from {size} to {target} replicas")
            await manager.scale(pool, target)
    except Exception as exc:  # the cluster goes on; the operator is told
        narrator.say(f"{signame}: {pool} could not {what}", error=exc)


@attrs.define
class _Narrator:
    """What `drive` says, said by the reporter; the phase is shown by the table."""

    manager: ServicesManager
    reporter: Reporter

    def enter(self, phase: Phase) -> None:
        self.reporter.phase = phase
        if phase == "running":
            count = len(self.manager.nodes)
            services = f"{count} service{'' if count == 1 else 's'}"
            self.reporter.say(f"{self.manager.name}: {services} STARTED (Ctrl-C to stop)")
            pools = self.manager.pools()
            if pools:
                self.reporter.say(
                    f"pools {', '.join(pools)}: kill -HUP {os.getpid()} reloads them, "
                    "-TTIN / -TTOU adds / retires a replica"
                )

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
