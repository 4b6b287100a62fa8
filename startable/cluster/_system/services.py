"""Descriptions of services (`ServiceSpec`, `RestartPolicy`) and their checks.

Everything here is checked before anything starts: names, uniqueness,
dependencies (unknown ones, cycles), entries, permissions.
"""

from __future__ import annotations

import graphlib
import shlex
import signal
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import attrs

from .._errors import DependencyCycleError, ServiceDefinitionError
from .._names import check_entry, check_name, number
from .._process.command import NOT_ENDING, Readiness
from .._process.controller import OutputLine
from .._process.listen import MAX_LISTEN, ListenAddress
from .._process.options import ProcessOptions
from .._sandbox.permissions import Permissions


@attrs.frozen(kw_only=True)
class RestartPolicy:
    """When a service that stopped on its own is started again, and how often.

    A service "stops on its own" when it crashes, exits, or stops itself; a
    stop asked for by the manager or the user is never followed by a restart,
    and neither is a stop caused by a dependency (the cascade): those come
    back when the dependency does.

    Attributes:
        mode: `"never"`; `"on-failure"` (restart after a stop with a reason,
            the default); `"always"` (after a clean stop too).
        intensity: at most this many restarts within `period` seconds; one
            more failure escalates: the manager stops everything with an
            `EscalationError`.
        period: the window of `intensity`, in seconds.
        backoff: the delay before the first restart in a window, in seconds;
            it doubles with each restart in the window...
        max_backoff: ...up to this.
    """

    mode: Literal["never", "on-failure", "always"] = attrs.field(
        default="on-failure", validator=attrs.validators.in_(("never", "on-failure", "always"))
    )
    intensity: int = attrs.field(default=5, validator=attrs.validators.ge(0))
    period: float = attrs.field(default=60.0, validator=number(above=0))
    backoff: float = attrs.field(default=0.1, validator=attrs.validators.ge(0))
    max_backoff: float = attrs.field(default=10.0, validator=attrs.validators.ge(0))

    def delay(self, restarts_in_window: int) -> float:
        """The delay before the next restart, after `restarts_in_window` in the window."""
        return float(min(self.backoff * 2**restarts_in_window, self.max_backoff))


def _as_command(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """A command as a tuple of arguments; a string is split as a shell would (`shlex`)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise ValueError(f"the command {value!r} cannot be split: {exc}") from None
    try:
        return tuple(value)
    except TypeError:
        raise TypeError(f"a command is a string or a list of strings, not {value!r}") from None


def _check_command(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    args = value if isinstance(value, tuple) else ()
    if not args or not args[0] or not all(isinstance(a, str) and "\0" not in a for a in args):
        raise ValueError(
            f"{type(instance).__name__}.{attribute.name}: a command is a program and its "
            f"arguments, strings without NUL (the program not empty), not {value!r}"
        )


def as_stop_signal(value: int | str) -> signal.Signals:
    """`"SIGINT"`, `"INT"` or a number, as a signal that ends a program by default.

    Raises:
        ValueError: not a signal, or one that does not end a program (SIGSTOP...).
        TypeError: neither a string nor an integer.
    """
    if isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            signum = signal.Signals[name]
        except KeyError:
            raise ValueError(f"{value!r} is not a signal's name") from None
    elif isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"a signal is a name or a number, not {value!r}")
    else:
        try:
            signum = signal.Signals(value)
        except ValueError:
            raise ValueError(f"{value} is not a signal") from None
    if signum in NOT_ENDING:
        raise ValueError(f"{signum.name} does not end a program by default: not a stop signal")
    return signum


#: `HealthCheck.interval` and `HealthCheck.timeout` at most, in seconds.
MAX_HEALTH_INTERVAL = 86400.0
MAX_HEALTH_TIMEOUT = 3600.0


@attrs.frozen(kw_only=True)
class HealthCheck:
    """A probe of a running service, every `interval` seconds once it is STARTED:
    `retries` failures in a row stop it as failed (`HealthCheckFailed`), so that
    its restart policy brings it back and what depends on it follows.

    Give exactly one of `command` (healthy when it exits 0 within `timeout`)
    and `port` (healthy when `host:port` accepts a TCP connection within
    `timeout`). It applies to every kind of service.

    Attributes:
        command: a program and its arguments (a string is split as a shell
            would), run in the service's `cwd` with its `env`.
        port: a TCP port to connect to.
        host: where `port` is tried.
        interval: seconds between the end of one check and the next (the
            first comes `interval` after the start); a day at most.
        timeout: seconds one check may take (a command that runs longer is
            killed, and the check has failed); an hour at most.
        retries: failures in a row that stop the service.
    """

    command: tuple[str, ...] | None = attrs.field(
        default=None, converter=_as_command, validator=_check_command
    )
    port: int | None = attrs.field(default=None, validator=number(at_least=1, integer=True))
    host: str = attrs.field(default="127.0.0.1", validator=attrs.validators.min_len(1))
    interval: float = attrs.field(default=10.0, validator=number(above=0))
    timeout: float = attrs.field(default=5.0, validator=number(above=0))
    retries: int = attrs.field(default=3, validator=number(at_least=1, integer=True))

    def __attrs_post_init__(self) -> None:
        if (self.command is None) == (self.port is None):
            raise ValueError("a health check is one of command or port")
        for name, most in (("interval", MAX_HEALTH_INTERVAL), ("timeout", MAX_HEALTH_TIMEOUT)):
            if getattr(self, name) > most:
                raise ValueError(
                    f"HealthCheck.{name}: {most:g} seconds at most, not {getattr(self, name):g}"
                )
        if self.port is not None and self.port > 65535:
            raise ValueError(f"HealthCheck.port: {self.port} is not a TCP port")

    def describe(self) -> str:
        """The probe, in words."""
        if self.command is not None:
            return shlex.join(self.command)
        return f"{self.host}:{self.port}"


def _as_names(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ServiceDefinitionError(f"depends_on is a list of names, not the string {value!r}")
    return tuple(value)


def _names(instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for name in value:
        check_name(name)


#: Where a host of a cluster of many finds the cluster key when none is given.
ENV_CLUSTER_KEY = "STARTABLE_CLUSTER_KEY"
#: The fewest bytes a cluster key may have.
MIN_KEY_BYTES = 32


def key_problem(key: bytes, what: str) -> str | None:
    """Why `key` (`what` says where it came from) cannot be a cluster key; None if it can."""
    if len(key) < MIN_KEY_BYTES:
        return f"{what} has {len(key)} bytes; a cluster key has {MIN_KEY_BYTES} or more"
    return None


#: Replicas one service may have at most.
MAX_REPLICAS = 256


def _as_addresses(addresses: Iterable[ListenAddress | str]) -> tuple[ListenAddress, ...]:
    if isinstance(addresses, str):
        raise TypeError(f"listen is a list of addresses, not the string {addresses!r}")
    return tuple(a if isinstance(a, ListenAddress) else ListenAddress.parse(a) for a in addresses)


def _as_process_options(options: ProcessOptions | Mapping[str, object]) -> ProcessOptions:
    return ProcessOptions.of(options)


@attrs.frozen(kw_only=True)
class ServiceSpec:
    """One service, as the manager is told about it.

    Give exactly one of `entry` (run in a `ServiceContainer`: a child process
    of its own), `factory` (run in this process; a zero-argument callable
    returning an object with a lifecycle, called at every start) or `command`
    (a program that is not a Python lifecycle, run as a `CommandProcess`), or
    set `remote` (it runs on other hosts).

    Attributes:
        name: unique in its manager; see `NAME_RULE`.
        entry: `"package.module:attribute"`; or `"path/to/file.py:attribute"`
            (relative to the service's `cwd`); or with `code` a name it defines.
        code: source text the child runs to define `entry`.
        factory: for a service in this process.
        depends_on: names of the services it needs; it starts after they are
            STARTED and stops before they stop.
        permissions: what it may do in its process (containers only).
        may_create_services: whether it may create services of its own
            (its children: they depend on it and go before it).
        env: environment variables of its process.
        cwd: working directory of its process.
        restart: its `RestartPolicy`.
        container_options: how its process is run (`ProcessOptions`: the
            interpreter, timeouts, how much is kept); a mapping gives the
            fields by name, and is checked as the spec is made.
        on_output: called with each line its process writes (`OutputLine`).
        listen: TCP addresses (`"127.0.0.1:8000"` or `ListenAddress`) the
            manager binds once, before the service's first start, and keeps
            bound across its restarts; its process gets them at descriptors
            3, 4... as socket activation passes them (`listen_sockets`).
        replicas: how many processes run it (a pool when more than one): each
            replica is reached under the service's name, a request goes to
            the one with the fewest requests waiting, and one that stops on
            its own is restarted by `restart` while the others serve.
        pool: run it as a pool even with one replica, so that `reload` and
            `scale` apply to it (a service with `replicas` > 1 is a pool).
        preload: for a pool, fork its replicas from a *zygote*: one process
            that applies the permissions and imports the entry's module once
            (`"package.module:Attr"` entries; a file or `code` is loaded in
            each replica), so that a replica costs a fork instead of a new
            interpreter. See docs/explanation/pools.md.
        limit: for a pool, the seconds it may go without a live replica:
            if none is STARTED again by then, the pool stops with a
            `ClusterError` (a failure: cascade and escalation apply).
        remote: it runs on other hosts of the cluster, not here (the manager
            needs a `redis` link): its node is STARTED while an instance is
            live in the registry, waiting `limit` seconds for one at each
            start, and stops on its own when the last one is gone. Only
            `depends_on`, `restart` and `limit` apply to it.
        command: a program and its arguments (a string is split as a shell
            would): it runs in `cwd` with `env`, its output is captured, it
            is STARTED once `ready` holds, it stops on its own when it exits
            (a failure unless it exits 0), and its stop is `stop_signal`, then
            SIGKILL after `container_options.term_timeout`. It has no data
            plane. Of `permissions`, only `memory`, `cpu_time` and
            `open_files` apply to it.
        ready: when a `command` is STARTED (`Readiness`: its program runs, a
            TCP port accepts, a line on stdout matches, or sd_notify's `READY=1`).
        stop_signal: what asks a `command` to stop (a name such as `"SIGINT"`,
            or a number).
        health: a `HealthCheck` run while it is STARTED, for every kind of
            service (not `remote` ones).
        drain: for a pool, the seconds a replica that is being replaced
            (`reload`, or `scale` down) is given to answer the requests it was
            given: it gets no new one, and is stopped once it owes none, or
            when these pass.
    """

    name: str = attrs.field(validator=lambda _, __, value: check_name(value))
    entry: str | None = None
    code: str | None = None
    factory: Callable[[], object] | None = None
    depends_on: tuple[str, ...] = attrs.field(default=(), converter=_as_names, validator=_names)
    permissions: Permissions | None = None
    may_create_services: bool = False
    env: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    cwd: str | None = None
    restart: RestartPolicy = attrs.field(
        factory=RestartPolicy, validator=attrs.validators.instance_of(RestartPolicy)
    )
    container_options: ProcessOptions = attrs.field(
        factory=ProcessOptions, converter=_as_process_options
    )
    on_output: Callable[[OutputLine], object] | None = None
    listen: tuple[ListenAddress, ...] = attrs.field(default=(), converter=_as_addresses)
    replicas: int = attrs.field(default=1, validator=number(at_least=1, integer=True))
    pool: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    preload: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    limit: float = attrs.field(default=60.0, validator=number(above=0))
    drain: float = attrs.field(default=10.0, validator=number(above=0))
    remote: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    command: tuple[str, ...] | None = attrs.field(
        default=None, converter=_as_command, validator=_check_command
    )
    ready: Readiness = attrs.field(
        factory=Readiness, validator=attrs.validators.instance_of(Readiness)
    )
    stop_signal: signal.Signals = attrs.field(default=signal.SIGTERM, converter=as_stop_signal)
    health: HealthCheck | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(HealthCheck))
    )

    @property
    def is_pool(self) -> bool:
        """Whether it runs as a pool (`replicas` > 1, or `pool`)."""
        return self.pool or self.replicas > 1

    def __attrs_post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise ServiceDefinitionError(f"service {self.name!r}: {problem}", self.name)

    def _problem(self) -> str | None:
        if self.remote:
            return self._remote_problem()
        if self.command is not None:
            return self._command_problem()
        if self.ready != Readiness() or self.stop_signal != signal.SIGTERM:
            return "ready and stop_signal are for a command"
        if (self.entry is None) == (self.factory is None):
            return (
                "give exactly one of entry (a child process), factory (in this process) "
                "or command (a program)"
            )
        if self.entry is not None:
            try:
                check_entry(self.entry, self.code is not None)
            except ValueError as exc:
                return str(exc)
        elif (
            self.code is not None
            or self.permissions is not None
            or self.env
            or self.cwd
            or self.on_output is not None
            or self.listen
            or self.replicas != 1
            or self.pool
            or self.preload
        ):
            return (
                "code, permissions, env, cwd, on_output, listen, replicas, pool and preload "
                "are for services in a child process (entry)"
            )
        factory: object = self.factory
        if factory is not None and not callable(factory):
            return f"factory must be callable, not {factory!r}"
        permissions: object = self.permissions
        if permissions is not None and not isinstance(permissions, Permissions):
            return f"permissions must be a Permissions, not {permissions!r}"
        if self.preload and not self.is_pool:
            return "preload is for pools: give it replicas = 2 or more, or pool = true"
        if self.replicas > MAX_REPLICAS:
            return f"a pool has {MAX_REPLICAS} replicas at most, not {self.replicas}"
        if len(self.listen) > MAX_LISTEN:
            return f"it may listen on {MAX_LISTEN} addresses at most, not {len(self.listen)}"
        if len({str(a) for a in self.listen}) != len(self.listen):
            return f"an address is listed twice in listen: {[str(a) for a in self.listen]}"
        return self._graph_problem()

    def _command_problem(self) -> str | None:
        python_only = {
            "entry": self.entry is not None,
            "code": self.code is not None,
            "factory": self.factory is not None,
            "may_create_services": self.may_create_services,
            "listen": bool(self.listen),
            "replicas": self.replicas != 1,
            "pool": self.pool,
            "preload": self.preload,
        }
        given = [name for name, set_ in python_only.items() if set_]
        if given:
            return f"a command is a program: {', '.join(given)} do not apply to it"
        permissions: object = self.permissions
        if permissions is not None:
            if not isinstance(permissions, Permissions):
                return f"permissions must be a Permissions, not {permissions!r}"
            sandboxed = [
                name
                for name in ("read", "write", "network", "subprocesses")
                if getattr(permissions, name)
            ]
            if sandboxed:
                return (
                    f"of permissions, a command takes memory, cpu_time and open_files; "
                    f"{', '.join(sandboxed)} are for Python services (entry)"
                )
        return self._graph_problem()

    def _remote_problem(self) -> str | None:
        local = {
            "entry": self.entry is not None,
            "code": self.code is not None,
            "factory": self.factory is not None,
            "permissions": self.permissions is not None,
            "may_create_services": self.may_create_services,
            "env": bool(self.env),
            "cwd": self.cwd is not None,
            "on_output": self.on_output is not None,
            "listen": bool(self.listen),
            "replicas": self.replicas != 1,
            "pool": self.pool,
            "preload": self.preload,
            "command": self.command is not None,
            "health": self.health is not None,
        }
        given = [name for name, set_ in local.items() if set_]
        if given:
            return f"a remote service runs on another host: {', '.join(given)} do not apply to it"
        return self._graph_problem()

    def _graph_problem(self) -> str | None:
        if self.name in self.depends_on:
            return "it depends on itself"
        if len(set(self.depends_on)) != len(self.depends_on):
            return f"a dependency is listed twice in {list(self.depends_on)}"
        return None


def check_graph(
    specs: Iterable[ServiceSpec], known: Mapping[str, object] | None = None
) -> list[str]:
    """Check a set of services together; return their names in dependency order.

    `known` names services that already exist (a dependency may name them).

    Raises:
        ServiceDefinitionError: a duplicate name or an unknown dependency.
        DependencyCycleError: the dependencies form a cycle (it names it).
    """
    known = known or {}
    by_name: dict[str, ServiceSpec] = {}
    for spec in specs:
        if spec.name in by_name or spec.name in known:
            raise ServiceDefinitionError(f"two services are named {spec.name!r}", spec.name)
        by_name[spec.name] = spec
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for spec in by_name.values():
        for dependency in spec.depends_on:
            if dependency not in by_name and dependency not in known:
                raise ServiceDefinitionError(
                    f"service {spec.name!r} depends on {dependency!r}, which does not exist",
                    spec.name,
                )
        sorter.add(spec.name, *(d for d in spec.depends_on if d in by_name))
    try:
        return list(sorter.static_order())
    except graphlib.CycleError as exc:
        # graphlib gives the cycle from dependency to dependent; say it the other way.
        raise DependencyCycleError(tuple(reversed(exc.args[1]))) from None


def render_mermaid(specs: Iterable[ServiceSpec]) -> str:
    """A mermaid flowchart of the services: an arrow from each service to what it depends on."""
    specs = list(specs)
    lines = ["flowchart BT"]
    lines.extend(f"    {spec.name}" for spec in specs)
    for spec in specs:
        lines.extend(f"    {spec.name} --> {dependency}" for dependency in spec.depends_on)
    return "\n".join(lines) + "\n"
