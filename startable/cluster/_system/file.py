"""Cluster files: a set of services described in TOML (`load_cluster`).

Everything in the file is checked while it is read, before anything starts:
its values, and (unless asked not to) that what it names is there on this
machine: directories, interpreters, entry modules, limits within the hard
limits. A problem is reported as a `ClusterFileError` naming the file and
the dotted key of the offending value. See *Reference: the cluster file*
for the format.
"""

from __future__ import annotations

import datetime
import difflib
import importlib.machinery
import math
import os
import re
import shlex
import shutil
import sys
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Final, Literal, TypeVar

import attrs

from .._errors import DependencyCycleError, ServiceDefinitionError
from .._names import check_entry, check_name, entry_file
from .._process.command import Readiness
from .._process.listen import MAX_LISTEN, ListenAddress
from .._sandbox.permissions import Permissions
from .services import (
    ENV_CLUSTER_KEY,
    MAX_REPLICAS,
    HealthCheck,
    RestartPolicy,
    ServiceSpec,
    as_stop_signal,
    check_graph,
    key_problem,
)

_T = TypeVar("_T")

#: The bound on stopping everything when the file does not give one, in seconds.
DEFAULT_STOP_TIMEOUT: Final = 30.0
#: `[cluster] reload_delay`: the quiet, in seconds, before `startable up --dev` reloads.
DEFAULT_RELOAD_DELAY: Final = 0.5
#: `[cluster] registry_ttl`: seconds an instance stays live without a heartbeat.
DEFAULT_REGISTRY_TTL: Final = 3.0
_REDIS_URL = re.compile(r"(rediss?|unix)://\S+|embedded(://127\.0\.0\.1:\d{1,5})?")

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MEMORY = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")
_UNITS: Final = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}
_SERVICE_KEYS: Final = (
    "entry",
    "code",
    "depends_on",
    "may_create_services",
    "env",
    "cwd",
    "python",
    "restart",
    "permissions",
    "timeouts",
    "listen",
    "replicas",
    "limit",
    "drain",
    "on_thread_error",
    "pool",
    "preload",
    "remote",
    "health",
)
#: The keys a `command` service may have.
_COMMAND_KEYS: Final = (
    "command",
    "depends_on",
    "env",
    "cwd",
    "restart",
    "permissions",
    "timeouts",
    "ready",
    "stop_signal",
    "health",
)
_CLUSTER_KEYS: Final = (
    "name",
    "stop_timeout",
    "on_service_exit",
    "reload_delay",
    "redis",
    "key_file",
    "registry_ttl",
    "logs",
)
#: `[cluster.logs]`: the defaults of `max_size` (bytes) and `keep`.
DEFAULT_LOG_SIZE: Final = 10 * 2**20
DEFAULT_LOG_KEEP: Final = 5
#: `[cluster.logs] keep` at most.
MAX_LOG_KEEP: Final = 1000
#: The keys a `remote = true` service may have.
_REMOTE_KEYS: Final = ("remote", "depends_on", "restart", "limit")
_MODES: Final = ("never", "on-failure", "always")
_ON_THREAD_ERROR: Final = ("report", "stop")
_ON_EXIT: Final = ("continue", "stop")
#: The keys of `[services.<name>.timeouts]`, and the container options they set.
_TIMEOUTS: Final = {"ready": "ready_timeout", "close": "close_timeout", "term": "term_timeout"}
#: The keys of `[services.<name>.permissions]` that set a resource limit, and its name.
_LIMITS: Final = {"memory": "RLIMIT_AS", "cpu_time": "RLIMIT_CPU", "open_files": "RLIMIT_NOFILE"}
#: setrlimit takes a signed 64-bit number.
_LIMIT_BOUND: Final = 2**63


class ClusterFileError(ServiceDefinitionError):
    """A cluster file was refused: it cannot be read, is not TOML, or a value
    in it is wrong. Raised by `load_cluster` and `parse_cluster`.

    Its message is `"{path}: {key}: {problem}"`, or `"{path}: {problem}"`
    when the problem is about the whole file.

    Attributes:
        path: the file, as it was named to `load_cluster` (or the `path`
            given to `parse_cluster`).
        key: the dotted key of the offending value (`services.kv.restart.mode`);
            for a key that is missing or unknown, the key of its table; None
            when the problem is about the whole file.
        problem: what is wrong, in words.
        service: the name of the service it is about, if any.
    """

    def __init__(
        self, path: str, problem: str, key: str | None = None, service: str | None = None
    ) -> None:
        super().__init__(f"{path}: {key}: {problem}" if key else f"{path}: {problem}", service)
        self.path = path
        self.key = key
        self.problem = problem

    def __reduce__(self) -> tuple[type[ClusterFileError], tuple[str, str, str | None, str | None]]:
        # The default would call __init__ with the message alone.
        return type(self), (self.path, self.problem, self.key, self.service)


def _specs(specs: Iterable[ServiceSpec]) -> tuple[ServiceSpec, ...]:
    return tuple(specs)


@attrs.frozen(kw_only=True)
class ClusterFile:
    """A cluster file, read and checked: the services to give a `ServicesManager`.

    Attributes:
        name: the cluster's name (`[cluster] name`, or the file's name
            without its extension).
        path: the file's absolute path (for `parse_cluster`, its `path`).
        directory: the absolute directory that relative paths in the file
            were resolved against, and that is on each service's `PYTHONPATH`.
        services: the services, in the order the file gives them.
        stop_timeout: the bound on stopping everything, in seconds.
        on_service_exit: what a service that stopped on its own for good
            means, `"continue"` or `"stop"` (see `ServicesManager`).
        reload_delay: under `startable up --dev`, the seconds of quiet after
            a source file changes before the pools are reloaded (two saves
            within it make one reload).
        redis: `[cluster] redis`: the Redis URL (or `"embedded"`, or
            `"embedded://127.0.0.1:PORT"`) through which this host joins the
            other hosts of the cluster; None for a cluster of one host.
        key_file: `[cluster] key_file`, absolute: the file holding the
            cluster key (`$STARTABLE_CLUSTER_KEY` when None).
        log_directory: `[cluster.logs] directory`, absolute: where `startable
            up` writes each service's output, `<service>.log` (None: nowhere).
        log_max_size: `[cluster.logs] max_size`: the bytes a log file may
            reach before it is rotated to `<service>.log.1`.
        log_keep: `[cluster.logs] keep`: how many rotated files are kept.
        registry_ttl: `[cluster] registry_ttl`: seconds an instance stays
            live in the registry without a heartbeat.
    """

    name: str
    path: str
    directory: str
    services: tuple[ServiceSpec, ...] = attrs.field(converter=_specs)
    stop_timeout: float = DEFAULT_STOP_TIMEOUT
    on_service_exit: Literal["continue", "stop"] = "continue"
    reload_delay: float = DEFAULT_RELOAD_DELAY
    redis: str | None = None
    key_file: str | None = None
    registry_ttl: float = DEFAULT_REGISTRY_TTL
    log_directory: str | None = None
    log_max_size: int = DEFAULT_LOG_SIZE
    log_keep: int = DEFAULT_LOG_KEEP

    def cluster_key(self) -> bytes | None:
        """The key in `key_file` (surrounding whitespace stripped), or None without one.

        Raises:
            ClusterFileError: it cannot be read, others may read it, or it is
                shorter than 32 bytes.
        """
        if self.key_file is None:
            return None
        return read_key_file(self.key_file, self.path)

    def manager_options(self) -> dict[str, Any]:
        """The `ServicesManager` arguments the `[cluster]` table gives (all but the services)."""
        options: dict[str, Any] = {"name": self.name, "on_service_exit": self.on_service_exit}
        if self.redis is not None:
            key = self.cluster_key()
            if key is None:
                from_env = os.environ.get(ENV_CLUSTER_KEY)
                if from_env is None:
                    why = (
                        "a cluster of many hosts needs the cluster key: give key_file, "
                        f"or set ${ENV_CLUSTER_KEY}"
                    )
                    raise ClusterFileError(self.path, why, "cluster.key_file")
                # (as the manager would refuse it, but before anything starts)
                short = key_problem(from_env.encode(), f"${ENV_CLUSTER_KEY}")
                if short is not None:
                    raise ClusterFileError(self.path, short, "cluster.key_file")
            options.update(redis=self.redis, cluster_key=key, registry_ttl=self.registry_ttl)
        return options


def read_key_file(path: str, shown: str = "<cluster>") -> bytes:
    """The cluster key in the file at `path`, checked (see `ClusterFile.cluster_key`)."""
    where = "cluster.key_file"
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            key = file.read(1 << 16).strip()
    except OSError as exc:
        why = f"cannot read the key file {path!r}: {exc.strerror}"
        raise ClusterFileError(shown, why, where) from None
    if mode & 0o077:
        raise ClusterFileError(
            shown, f"the key file {path!r} may be read by others: chmod 600 it", where
        )
    short = key_problem(key, f"the key in {path!r}")
    if short is not None:
        raise ClusterFileError(shown, short, where)
    return key


def load_cluster(path: str | os.PathLike[str], *, check_environment: bool = True) -> ClusterFile:
    """Read and check the cluster file at `path`.

    Relative paths in the file are resolved against the file's directory,
    which is also put on each service's `PYTHONPATH`, so that entries can
    name modules next to the file.

    Args:
        path: the TOML file (UTF-8).
        check_environment: check too that what the file names is there on
            this machine: each `cwd` and `permissions` path exists, each
            `python` is an executable, each entry's module or file can be
            found (without importing it), and each limit is within the
            system's hard limit. False checks the file alone (for a file
            meant for another machine).

    Returns:
        The checked file; `services` can be given to a `ServicesManager`.

    Raises:
        ClusterFileError: the file cannot be read, is not TOML, or something
            in it is wrong (its message names the file and the key).

    Example:
        ```python
        cluster = load_cluster("shop.toml")
        manager = ServicesManager(cluster.services, name=cluster.name)
        sys.exit(startable.run(manager, stop_timeout=cluster.stop_timeout))
        ```
    """
    shown = os.fspath(path)
    absolute = os.path.abspath(shown)
    try:
        with open(absolute, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ClusterFileError(shown, f"cannot read the cluster file: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ClusterFileError(shown, f"not UTF-8 text: {exc}") from exc
    return _parse(text, shown, absolute, os.path.dirname(absolute), check_environment)


def parse_cluster(
    text: str,
    *,
    path: str = "<cluster>",
    directory: str | None = None,
    check_environment: bool = True,
) -> ClusterFile:
    """Check the text of a cluster file, as `load_cluster` does a file.

    Args:
        text: the TOML text.
        path: names the text in errors; its name (without extension) is the
            cluster's name if the text gives none.
        directory: what relative paths are resolved against, and put on each
            service's `PYTHONPATH`; the current directory by default.
        check_environment: as for `load_cluster`.

    Raises:
        ClusterFileError: the text is not TOML, or something in it is wrong.
    """
    directory = os.path.abspath(directory or os.getcwd())
    return _parse(text, path, path, directory, check_environment)


def _parse(
    text: str, shown: str, absolute: str, directory: str, check_environment: bool
) -> ClusterFile:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ClusterFileError(shown, f"invalid TOML: {exc}") from exc
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ClusterFileError(shown, "invalid TOML: arrays or tables nested too deeply") from None
    root = _Table(shown, directory, (), document, check_environment=check_environment)
    root.check_keys(("cluster", "services"))
    cluster = root.table("cluster") or root.empty("cluster")
    cluster.check_keys(_CLUSTER_KEYS)
    name = cluster.string("name")
    if name is None:
        name = os.path.splitext(os.path.basename(absolute))[0] or "cluster"
    stop_timeout = cluster.number("stop_timeout", positive=True)
    reload_delay = cluster.number("reload_delay", positive=True)
    on_exit = cluster.string("on_service_exit") or "continue"
    redis = cluster.string("redis")
    if redis is not None and not _REDIS_URL.fullmatch(redis):
        raise cluster.error(
            'expected a Redis URL (redis://, rediss://, unix://), "embedded" or '
            f'"embedded://127.0.0.1:PORT", found {_describe(redis)}',
            "redis",
        )
    key_file = cluster.path("key_file")
    if key_file is not None and redis is None:
        raise cluster.error("a key_file is for a cluster of many hosts: give redis too", "key_file")
    registry_ttl = cluster.number("registry_ttl", positive=True)
    if key_file is not None and check_environment:
        read_key_file(key_file, shown)
    if on_exit not in _ON_EXIT:
        choices = ", ".join(repr(choice) for choice in _ON_EXIT)
        raise cluster.error(
            f"expected one of {choices}, found {_describe(on_exit)}", "on_service_exit"
        )
    logs = cluster.table("logs")
    log_fields: dict[str, Any] = {}
    if logs is not None:
        logs.check_keys(("directory", "max_size", "keep"))
        log_fields["log_directory"] = logs.path("directory")
        if log_fields["log_directory"] is None:
            raise logs.error("missing required key 'directory'")
        log_fields["log_max_size"] = _size(logs, "max_size")
        keep = log_fields["log_keep"] = logs.integer("keep", positive=False)
        if keep is not None and keep > MAX_LOG_KEEP:
            raise logs.error(f"keeps {MAX_LOG_KEEP} files at most, not {keep}", "keep")
    services = root.table("services")
    if services is None:
        raise root.error("missing required key 'services'")
    if not services.data:
        raise services.error("no services: add at least one [services.<name>] table")
    specs = [_service(services, service) for service in services.data]
    remote = [spec.name for spec in specs if spec.remote]
    if remote and redis is None:
        raise services.error(
            "a remote service runs on another host: give the cluster a redis URL",
            remote[0],
            "remote",
            service=remote[0],
        )
    try:
        check_graph(specs)
    except DependencyCycleError as exc:
        raise services.error(str(exc), service=exc.cycle[0]) from exc
    except ServiceDefinitionError as exc:
        key = ("services",) if exc.service is None else ("services", exc.service, "depends_on")
        raise ClusterFileError(shown, str(exc), _dotted(key), exc.service) from exc
    return ClusterFile(
        name=name,
        path=absolute,
        directory=directory,
        services=specs,
        stop_timeout=DEFAULT_STOP_TIMEOUT if stop_timeout is None else stop_timeout,
        on_service_exit=on_exit,  # type: ignore[arg-type]  # one of _ON_EXIT
        reload_delay=DEFAULT_RELOAD_DELAY if reload_delay is None else reload_delay,
        redis=redis,
        key_file=key_file,
        registry_ttl=DEFAULT_REGISTRY_TTL if registry_ttl is None else registry_ttl,
        **_present(log_fields),
    )


def _service(services: _Table, name: str) -> ServiceSpec:
    try:
        check_name(name)
    except ServiceDefinitionError as exc:
        raise services.error(str(exc), name, service=name) from exc
    table = services.table(name, service=name)
    assert table is not None  # TOML has no null: the key is there, so is a value
    if "command" in table.data:
        return _command(table, name)
    table.check_keys(_SERVICE_KEYS)
    if table.boolean("remote"):
        return _remote(table, name)
    entry = table.string("entry")
    if entry is None:
        raise table.error("missing required key 'entry' (\"module:attribute\")")
    code = table.string("code", empty=True)
    if code is not None and "\0" in code:
        raise table.error("the code cannot hold a NUL character", "code")
    try:
        check_entry(entry, code is not None)
    except ValueError as exc:
        raise table.error(str(exc), "entry") from exc
    file = entry_file(entry) if code is None else None
    if file is not None:  # relative to the cluster file, like every path in it
        entry = f"{table.resolve(file, 'entry')}:{entry.rpartition(':')[2]}"
    depends_on = _depends_on(table, name)
    env = _env(table)
    cwd = table.path("cwd")
    options: dict[str, Any] = {}
    python = table.string("python")
    if python is not None:
        if "\0" in python:
            raise table.error("a path cannot hold a NUL character", "python")
        # A bare name is looked up on $PATH; a path is relative to the file.
        options["python"] = python if os.sep not in python else table.resolve(python, "python")
    on_thread_error = table.string("on_thread_error")
    if on_thread_error is not None:
        if on_thread_error not in _ON_THREAD_ERROR:
            choices = ", ".join(repr(m) for m in _ON_THREAD_ERROR)
            raise table.error(
                f"expected one of {choices}, found {_describe(on_thread_error)}",
                "on_thread_error",
            )
        options["on_thread_error"] = on_thread_error
    timeouts = table.table("timeouts")
    if timeouts is not None:
        timeouts.check_keys(_TIMEOUTS)
        for key, option in _TIMEOUTS.items():
            options[option] = timeouts.number(key, positive=True)
    may_create_services = table.boolean("may_create_services")
    listen = _listen(table)
    replicas = table.integer("replicas", positive=True)
    pool = table.boolean("pool")
    preload = table.boolean("preload")
    limit = table.number("limit", positive=True)
    drain = table.number("drain", positive=True)
    if replicas is not None and replicas > MAX_REPLICAS:
        raise table.error(f"a pool has {MAX_REPLICAS} replicas at most, not {replicas}", "replicas")
    restart, permissions = _restart(table), _permissions(table)
    health = _health(table)
    if table.check_environment:  # once the values are known to be right
        _check_here(table, entry, code, env, cwd or table.directory, options.get("python"))
        if health is not None and health.command is not None:
            _check_program(
                table, health.command[0], env, cwd or table.directory, "health", "command"
            )
    fields = {
        "entry": entry,
        "code": code,
        "depends_on": depends_on,
        "env": env,
        "cwd": cwd or table.directory,
        "restart": restart,
        "permissions": permissions,
        "may_create_services": may_create_services,
        "container_options": _present(options),
        "listen": listen,
        "replicas": replicas,
        "pool": pool,
        "preload": preload,
        "limit": limit,
        "drain": drain,
        "health": health,
    }
    return table.build(ServiceSpec, name=name, **_present(fields))


def _command(table: _Table, name: str) -> ServiceSpec:
    """A `command = ...` service: a program, with what applies to one."""
    for key in table.data:
        if key in _SERVICE_KEYS and key not in _COMMAND_KEYS:
            raise table.error(f"a command is a program: {key!r} does not apply to it", key)
    table.check_keys(_COMMAND_KEYS)
    args = _args(table, "command")
    cwd = table.path("cwd") or table.directory
    env = _env(table, python=False)
    timeouts = table.table("timeouts")
    options: dict[str, Any] = {}
    if timeouts is not None:
        if "close" in timeouts.data:
            raise timeouts.error(
                "a command has no close request: its stop begins with its stop signal, "
                "then SIGKILL after timeouts.term",
                "close",
            )
        timeouts.check_keys(("ready", "term"))
        for key in ("ready", "term"):
            options[_TIMEOUTS[key]] = timeouts.number(key, positive=True)
    permissions = _permissions(table)
    if permissions is not None:
        asked = table.table("permissions")
        sandboxed = ("read", "write", "network", "subprocesses")
        given = [key for key in sandboxed if asked is not None and key in asked.data]
        if given:
            raise table.error(
                f"a command takes memory, cpu_time and open_files; {given[0]!r} is for "
                "Python services (entry)",
                "permissions",
                given[0],
            )
    stop_signal = table.string("stop_signal")
    if stop_signal is not None:
        try:
            as_stop_signal(stop_signal)
        except ValueError as exc:
            raise table.error(str(exc), "stop_signal") from None
    health = _health(table)
    if table.check_environment:
        _check_program(table, args[0], env, cwd, "command")
        if health is not None and health.command is not None:
            _check_program(table, health.command[0], env, cwd, "health", "command")
    fields = {
        "command": args,
        "depends_on": _depends_on(table, name),
        "env": env,
        "cwd": cwd,
        "restart": _restart(table),
        "permissions": permissions,
        "container_options": _present(options),
        "ready": _ready(table),
        "stop_signal": stop_signal,
        "health": health,
    }
    return table.build(ServiceSpec, name=name, **_present(fields))


def _args(table: _Table, key: str) -> list[str]:
    """A command: an array of strings, or one string split as a shell would."""
    value = table.get(key, (str, list), "a string or an array of strings")
    if isinstance(value, str):
        try:
            args = shlex.split(value)
        except ValueError as exc:
            raise table.error(f"cannot split {_describe(value)}: {exc}", key) from None
    else:
        args = value if isinstance(value, list) else []
        for arg in args:
            if not isinstance(arg, str):
                raise table.error(f"expected an array of strings, found {_describe(arg)}", key)
    if not args or not args[0]:
        raise table.error("expected a program to run, found none", key)
    if any("\0" in arg for arg in args):
        raise table.error("a command cannot hold a NUL character", key)
    return args


def _check_program(
    table: _Table, program: str, env: Mapping[str, str], cwd: str, *key: str
) -> None:
    """The program at `key` (a command's, a health check's, a `python`) must be there:
    an executable file (a path, relative to `cwd`), or found on `$PATH`."""
    if os.sep in program:
        path = os.path.join(cwd, program)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise table.error(f"{path!r} is not an executable file", *key)
    elif shutil.which(program, path=env.get("PATH", os.environ.get("PATH"))) is None:
        raise table.error(f"{program!r} is not on $PATH", *key)


def _ready(service: _Table) -> Readiness | None:
    table = service.table("ready")
    if table is None:
        return None
    table.check_keys(("port", "host", "line", "notify"))
    port = table.integer("port", positive=True)
    fields = {
        "port": port,
        "host": table.string("host"),
        "line": table.string("line"),
        "notify": table.boolean("notify"),
    }
    if not any(fields[key] is not None for key in ("port", "line", "notify")):
        raise table.error("give one of port, line or notify (without: as soon as it runs)")
    if fields["host"] is not None and port is None:
        raise table.error("a host is where a port is tried: give port too", "host")
    if port is not None and port > 65535:
        raise table.error(f"{port} is not a TCP port (1 to 65535)", "port")
    return table.build(Readiness, **_present(fields))


def _health(service: _Table) -> HealthCheck | None:
    table = service.table("health")
    if table is None:
        return None
    table.check_keys(("command", "port", "host", "interval", "timeout", "retries"))
    fields = {
        "command": _args(table, "command") if "command" in table.data else None,
        "port": table.integer("port", positive=True),
        "host": table.string("host"),
        "interval": table.number("interval", positive=True),
        "timeout": table.number("timeout", positive=True),
        "retries": table.integer("retries", positive=True),
    }
    return table.build(HealthCheck, **_present(fields))


def _remote(table: _Table, name: str) -> ServiceSpec:
    """A `remote = true` service: only its dependencies, restart policy and limit apply."""
    if "health" in table.data:
        raise table.error("a remote service runs on another host: check it there", "health")
    table.check_keys(_REMOTE_KEYS)
    depends_on = _depends_on(table, name)
    fields = {
        "depends_on": depends_on,
        "restart": _restart(table),
        "limit": table.number("limit", positive=True),
    }
    return table.build(ServiceSpec, name=name, remote=True, **_present(fields))


def _depends_on(table: _Table, name: str) -> list[str]:
    depends_on = table.strings("depends_on") or []
    for dependency in depends_on:
        try:
            check_name(dependency)
        except ServiceDefinitionError as exc:
            raise table.error(str(exc), "depends_on") from exc
    if name in depends_on:
        raise table.error("a service cannot depend on itself", "depends_on")
    if len(set(depends_on)) != len(depends_on):
        raise table.error(f"a dependency is listed twice in {depends_on}", "depends_on")
    return depends_on


def _listen(table: _Table) -> list[ListenAddress] | None:
    """`listen = ["HOST:PORT", ...]`: each address checked, none twice."""
    texts = table.strings("listen")
    if texts is None:
        return None
    if len(texts) > MAX_LISTEN:
        raise table.error(f"a service may listen on {MAX_LISTEN} addresses at most", "listen")
    addresses = []
    for text in texts:
        try:
            addresses.append(ListenAddress.parse(text))
        except ValueError as exc:
            raise table.error(str(exc), "listen") from exc
    if len({str(a) for a in addresses}) != len(addresses):
        raise table.error(f"an address is listed twice in {texts}", "listen")
    return addresses


def _check_here(
    table: _Table,
    entry: str,
    code: str | None,
    env: Mapping[str, str],
    cwd: str,
    python: str | None,
) -> None:
    """Check that what a service names is there: its cwd, its python, its entry."""
    if not os.path.isdir(cwd):
        raise table.error(f"{cwd!r} is not a directory", "cwd")
    if python is not None:  # (a path is absolute by now)
        _check_program(table, python, env, cwd, "python")
    if code is not None:
        return
    file = entry_file(entry)
    if file is not None:
        if not os.path.isfile(file):
            raise table.error(f"{file!r}: no such file", "entry")
        return
    if python is not None:  # another interpreter, another sys.path: found when it starts
        return
    module = entry.rpartition(":")[0]
    if not _findable(module, _child_path(cwd, env)):
        raise table.error(
            f"cannot find the module {module!r} (looked in the service's cwd, its "
            "PYTHONPATH and this Python's sys.path)",
            "entry",
        )


def _child_path(cwd: str, env: Mapping[str, str]) -> list[str]:
    """The `sys.path` a service's process will have (`python -m` in `cwd`), near enough."""
    given = [os.path.join(cwd, p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    # Ours came from our PYTHONPATH (which the service does not get) and from
    # how we were started (sys.path[0]); the rest (stdlib, site) is shared.
    ours = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    shared = [p for p in sys.path[1:] if p and os.path.abspath(p) not in ours]
    return [cwd, *given, *shared]


def _findable(module: str, path: list[str]) -> bool:
    """Whether `module` can be imported from `path`; imports nothing (not even its packages)."""
    top = module.partition(".")[0]
    if top in sys.builtin_module_names or importlib.machinery.FrozenImporter.find_spec(top):
        return "." not in module
    return _find(module, path) is not None


def _find(module: str, path: list[str]) -> importlib.machinery.ModuleSpec | None:
    """Where `module` would be imported from on `path` (it imports nothing)."""
    top, *rest = module.split(".")
    spec = importlib.machinery.PathFinder.find_spec(top, path)
    name = top
    for part in rest:
        if spec is None or spec.submodule_search_locations is None:
            return None
        name += "." + part
        spec = importlib.machinery.PathFinder.find_spec(name, list(spec.submodule_search_locations))
    return spec


def source_directory(spec: ServiceSpec) -> str | None:
    """The directory that holds the code of a service's entry, found without importing it.

    For `package.module:Attr`, the top-level package's directory (the module
    may import its siblings); for a top-level module or a `path.py:Attr`
    entry, the file's directory. None when there is none to watch: the
    entry's `code` is given as text, the module is not found from the
    service's `cwd` and `PYTHONPATH`, or it is installed (under this
    Python's prefix).
    """
    if spec.entry is None or spec.code is not None:
        return None
    cwd = spec.cwd or os.getcwd()
    file = entry_file(spec.entry)
    if file is not None:
        return os.path.dirname(os.path.abspath(os.path.join(cwd, file)))
    module = spec.entry.rpartition(":")[0]
    found = _find(module.partition(".")[0], _child_path(cwd, spec.env))
    if found is None:
        return None
    if found.origin is not None and found.has_location:  # a package's __init__.py, or a module
        directory = os.path.dirname(os.path.abspath(found.origin))
    elif found.submodule_search_locations:  # a namespace package
        directory = os.path.abspath(next(iter(found.submodule_search_locations)))
    else:
        return None
    prefixes = {os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    if any(os.path.commonpath([directory, prefix]) == prefix for prefix in prefixes):
        return None  # installed (a virtual environment's prefix is this one)
    return directory


def _env(service: _Table, *, python: bool = True) -> dict[str, str]:
    """`env`; for a Python service, the file's directory first on its PYTHONPATH."""
    env: dict[str, str] = {}
    table = service.table("env")
    if table is not None:
        for name in table.data:
            if not name or "=" in name or "\0" in name:
                raise table.error(f"{name!r} is not an environment variable name", name)
            value = table.string(name, empty=True) or ""
            if "\0" in value:
                raise table.error("an environment variable cannot hold a NUL character", name)
            env[name] = value
    if not python:
        return env
    given = env.get("PYTHONPATH")
    env["PYTHONPATH"] = service.directory + (os.pathsep + given if given else "")
    return env


def _restart(service: _Table) -> RestartPolicy | None:
    table = service.table("restart")
    if table is None:
        return None
    table.check_keys(("mode", "intensity", "period", "backoff", "max_backoff"))
    mode = table.string("mode")
    if mode is not None and mode not in _MODES:
        choices = ", ".join(repr(m) for m in _MODES)
        raise table.error(f"expected one of {choices}, found {_describe(mode)}", "mode")
    fields = {
        "mode": mode,
        "intensity": table.integer("intensity", positive=False),
        "period": table.number("period", positive=True),
        "backoff": table.number("backoff", positive=False),
        "max_backoff": table.number("max_backoff", positive=False),
    }
    return table.build(RestartPolicy, **_present(fields))


def _permissions(service: _Table) -> Permissions | None:
    table = service.table("permissions")
    if table is None:
        return None
    table.check_keys(
        ("read", "write", "network", "subprocesses", "memory", "cpu_time", "open_files")
    )
    limits = {
        "memory": _memory(table),
        "cpu_time": table.integer("cpu_time", positive=True),
        "open_files": table.integer("open_files", positive=True),
    }
    for key, value in limits.items():
        _check_limit(table, key, value)
    fields = {
        "read": [table.existing(p, "read") for p in table.strings("read") or ()],
        "write": [table.existing(p, "write") for p in table.strings("write") or ()],
        "network": table.boolean("network"),
        "subprocesses": table.boolean("subprocesses"),
        **limits,
    }
    return table.build(Permissions, **_present(fields))


def _check_limit(permissions: _Table, key: str, value: int | None) -> None:
    """A resource limit must fit setrlimit, and (if checked) the system's hard limit."""
    if value is None:
        return
    if value >= _LIMIT_BOUND:
        raise permissions.error(f"must be less than 2**63, not {value}", key)
    if permissions.check_environment:
        import resource  # POSIX only, like the limits

        name = _LIMITS[key]
        hard = resource.getrlimit(getattr(resource, name))[1]
        if hard != resource.RLIM_INFINITY and value > hard:
            raise permissions.error(
                f"{value} is above this system's hard limit ({name} {hard})", key
            )


def _memory(permissions: _Table) -> int | None:
    return _size(permissions, "memory")


def _size(table: _Table, key: str) -> int | None:
    """A size in bytes: an integer, or a string such as `'256MiB'`."""
    value = table.get(key, (int, str), "an integer (bytes) or a string such as '256MiB'")
    if not isinstance(value, str):
        return table.integer(key, positive=True)
    match = _MEMORY.fullmatch(value)
    if match is None or match[2] not in _UNITS:
        units = ", ".join(unit for unit in _UNITS if unit)
        raise table.error(
            f"expected a size such as '256MiB' (units: {units}), found {_describe(value)}",
            key,
        )
    figure = float(match[1]) * _UNITS[match[2]]
    if figure >= _LIMIT_BOUND:  # inf among them
        raise table.error(f"must be less than 2**63 bytes, not {_describe(value)}", key)
    size = round(figure)
    if size <= 0:
        raise table.error(f"must be positive, not {_describe(value)}", key)
    return size


def _present(fields: Mapping[str, object]) -> dict[str, Any]:
    """The fields that were given (the file said nothing of those that are None)."""
    return {name: value for name, value in fields.items() if value is not None}


@attrs.frozen
class _Table:
    """A TOML table being read, with what an error about it must say."""

    file: str
    directory: str
    key: tuple[str, ...]
    data: Mapping[str, object]
    service: str | None = None
    check_environment: bool = True

    def error(self, problem: str, *names: str, service: str | None = None) -> ClusterFileError:
        key = _dotted((*self.key, *names)) or None
        return ClusterFileError(self.file, problem, key, service or self.service)

    def check_keys(self, known: Collection[str]) -> None:
        for name in self.data:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join(known)
                raise self.error(f"unknown key {name!r} ({hint})")

    def get(self, name: str, kinds: tuple[type[Any], ...], expected: str) -> object:
        """The value of `name`, None if absent; an error unless one of `kinds`."""
        value = self.data.get(name)
        if value is not None and (
            not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
        ):
            raise self.error(f"expected {expected}, found {_describe(value)}", name)
        return value

    def table(self, name: str, service: str | None = None) -> _Table | None:
        value = self.get(name, (dict,), "a table")
        if not isinstance(value, dict):
            return None
        return attrs.evolve(
            self, key=(*self.key, name), data=value, service=service or self.service
        )

    def empty(self, name: str) -> _Table:
        """The table `name`, absent from the file."""
        return attrs.evolve(self, key=(*self.key, name), data={})

    def string(self, name: str, *, empty: bool = False) -> str | None:
        value = self.get(name, (str,), "a string" if empty else "a non-empty string")
        if value == "" and not empty:
            raise self.error("expected a non-empty string, found an empty one", name)
        return value if isinstance(value, str) else None

    def boolean(self, name: str) -> bool | None:
        value = self.get(name, (bool,), "a boolean (true or false)")
        return value if isinstance(value, bool) else None

    def integer(self, name: str, *, positive: bool) -> int | None:
        value = self.get(name, (int,), "an integer")
        if not isinstance(value, int):
            return None
        self._check_sign(name, value, positive)
        return value

    def number(self, name: str, *, positive: bool) -> float | None:
        value = self.get(name, (int, float), "a number")
        if not isinstance(value, int | float):
            return None
        self._check_sign(name, value, positive)
        return float(value)

    def _check_sign(self, name: str, value: float, positive: bool) -> None:
        if not (value > 0 if positive else value >= 0):  # NaN fails both
            rule = "must be positive" if positive else "must be zero or more"
            raise self.error(f"{rule}, not {value}", name)
        if value == math.inf:  # every figure here bounds something
            raise self.error("must be finite, not inf", name)

    def strings(self, name: str) -> list[str] | None:
        value = self.get(name, (list,), "an array of strings")
        if not isinstance(value, list):
            return None
        for item in value:
            if not isinstance(item, str) or not item:
                found = "an empty string" if item == "" else _describe(item)
                raise self.error(f"expected an array of non-empty strings, found {found}", name)
        return value

    def path(self, name: str) -> str | None:
        value = self.string(name)
        return None if value is None else self.resolve(value, name)

    def resolve(self, path: str, name: str) -> str:
        """`path` made absolute: relative paths are relative to the file's directory."""
        if path.startswith("~"):
            raise self.error(
                f"{path!r}: '~' is not expanded; give an absolute path or one "
                "relative to the cluster file's directory",
                name,
            )
        if "\0" in path:
            raise self.error("a path cannot hold a NUL character", name)
        return os.path.normpath(os.path.join(self.directory, path))

    def existing(self, path: str, name: str) -> str:
        """`path` resolved; if the environment is checked, it must exist."""
        resolved = self.resolve(path, name)
        if self.check_environment and not os.path.exists(resolved):
            raise self.error(f"{resolved!r}: no such file or directory", name)
        return resolved

    def build(self, cls: Callable[..., _T], **fields: Any) -> _T:
        """`cls(**fields)`, its refusal reported at this table."""
        try:
            return cls(**fields)
        except (ServiceDefinitionError, ValueError, TypeError) as exc:
            raise self.error(str(exc)) from exc


def _dotted(key: tuple[str, ...]) -> str:
    """`key` written as TOML writes a dotted key (quoting where needed)."""
    return ".".join(part if _BARE_KEY.fullmatch(part) else _quoted(part) for part in key)


def _quoted(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else _escape(c) for c in escaped) + '"'


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _describe(value: object) -> str:
    """A TOML value in words, for an error message."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the float {value}"
    if isinstance(value, str):
        shown = repr(value) if len(value) <= 40 else repr(value[:37]) + "..."
        return f"the string {shown}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.datetime):
        return "a date-time"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, datetime.time):
        return "a time"
    return repr(value)
