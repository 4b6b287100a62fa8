"""Cluster files: a set of services described in TOML (`load_cluster`).

Everything in the file is checked while it is read, before anything starts;
a problem is reported as a `ClusterFileError` naming the file and the dotted
key of the offending value. See *Reference: the cluster file* for the format.
"""

from __future__ import annotations

import datetime
import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Final, TypeVar

import attrs

from ._errors import DependencyCycleError, ServiceDefinitionError
from ._permissions import Permissions
from ._services import RestartPolicy, ServiceSpec, check_entry, check_graph, check_name

_T = TypeVar("_T")

#: The bound on stopping everything when the file does not give one, in seconds.
DEFAULT_STOP_TIMEOUT: Final = 30.0

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
)
_MODES: Final = ("never", "on-failure", "always")
#: The keys of `[services.<name>.timeouts]`, and the container options they set.
_TIMEOUTS: Final = {"ready": "ready_timeout", "close": "close_timeout", "term": "term_timeout"}


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
    """

    name: str
    path: str
    directory: str
    services: tuple[ServiceSpec, ...] = attrs.field(converter=_specs)
    stop_timeout: float = DEFAULT_STOP_TIMEOUT


def load_cluster(path: str | os.PathLike[str]) -> ClusterFile:
    """Read and check the cluster file at `path`.

    Relative paths in the file are resolved against the file's directory,
    which is also put on each service's `PYTHONPATH`, so that entries can
    name modules next to the file.

    Args:
        path: the TOML file (UTF-8).

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
    return _parse(text, shown, absolute, os.path.dirname(absolute))


def parse_cluster(
    text: str, *, path: str = "<cluster>", directory: str | None = None
) -> ClusterFile:
    """Check the text of a cluster file, as `load_cluster` does a file.

    Args:
        text: the TOML text.
        path: names the text in errors; its name (without extension) is the
            cluster's name if the text gives none.
        directory: what relative paths are resolved against, and put on each
            service's `PYTHONPATH`; the current directory by default.

    Raises:
        ClusterFileError: the text is not TOML, or something in it is wrong.
    """
    return _parse(text, path, path, os.path.abspath(directory or os.getcwd()))


def _parse(text: str, shown: str, absolute: str, directory: str) -> ClusterFile:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ClusterFileError(shown, f"invalid TOML: {exc}") from exc
    root = _Table(shown, directory, (), document)
    root.check_keys(("cluster", "services"))
    cluster = root.table("cluster") or _Table(shown, directory, ("cluster",), {})
    cluster.check_keys(("name", "stop_timeout"))
    name = cluster.string("name")
    if name is None:
        name = os.path.splitext(os.path.basename(absolute))[0] or "cluster"
    stop_timeout = cluster.number("stop_timeout", positive=True)
    services = root.table("services")
    if services is None:
        raise root.error("missing required key 'services'")
    if not services.data:
        raise services.error("no services: add at least one [services.<name>] table")
    specs = [_service(services, service) for service in services.data]
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
    )


def _service(services: _Table, name: str) -> ServiceSpec:
    try:
        check_name(name)
    except ServiceDefinitionError as exc:
        raise services.error(str(exc), name, service=name) from exc
    table = services.table(name, service=name)
    assert table is not None  # TOML has no null: the key is there, so is a value
    table.check_keys(_SERVICE_KEYS)
    entry = table.string("entry")
    if entry is None:
        raise table.error("missing required key 'entry' (\"module:attribute\")")
    code = table.string("code", empty=True)
    try:
        check_entry(entry, code is not None)
    except ValueError as exc:
        raise table.error(str(exc), "entry") from exc
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
    env = _env(table)
    cwd = table.path("cwd")
    options: dict[str, Any] = {}
    python = table.string("python")
    if python is not None:
        # A bare name is looked up on $PATH; a path is relative to the file.
        options["python"] = python if os.sep not in python else table.resolve(python, "python")
    timeouts = table.table("timeouts")
    if timeouts is not None:
        timeouts.check_keys(_TIMEOUTS)
        for key, option in _TIMEOUTS.items():
            options[option] = timeouts.number(key, positive=True)
    may_create_services = table.boolean("may_create_services")
    fields = {
        "entry": entry,
        "code": code,
        "depends_on": depends_on,
        "env": env,
        "cwd": cwd or table.directory,
        "restart": _restart(table),
        "permissions": _permissions(table),
        "may_create_services": may_create_services,
        "container_options": _present(options),
    }
    return table.build(ServiceSpec, name=name, **_present(fields))


def _env(service: _Table) -> dict[str, str]:
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
    fields = {
        "read": [table.resolve(p, "read") for p in table.strings("read") or ()],
        "write": [table.resolve(p, "write") for p in table.strings("write") or ()],
        "network": table.boolean("network"),
        "subprocesses": table.boolean("subprocesses"),
        "memory": _memory(table),
        "cpu_time": table.integer("cpu_time", positive=True),
        "open_files": table.integer("open_files", positive=True),
    }
    return table.build(Permissions, **_present(fields))


def _memory(permissions: _Table) -> int | None:
    value = permissions.get("memory", (int, str), "an integer (bytes) or a string such as '256MiB'")
    if not isinstance(value, str):
        return permissions.integer("memory", positive=True)
    match = _MEMORY.fullmatch(value)
    if match is None or match[2] not in _UNITS:
        units = ", ".join(unit for unit in _UNITS if unit)
        raise permissions.error(
            f"expected a size such as '256MiB' (units: {units}), found {_describe(value)}",
            "memory",
        )
    size = round(float(match[1]) * _UNITS[match[2]])
    if size <= 0:
        raise permissions.error(f"must be positive, not {_describe(value)}", "memory")
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
        return _Table(self.file, self.directory, (*self.key, name), value, service or self.service)

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
        return os.path.normpath(os.path.join(self.directory, path))

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
