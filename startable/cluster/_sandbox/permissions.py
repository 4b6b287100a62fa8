"""What a service in a container may do, and how the child process enforces it.

Applied in the child before any of the service's code runs, in this order:

* resource limits (`setrlimit`): address space, CPU time, open files;
* capabilities (`_caps`): all dropped, for good (CAP_NET_BIND_SERVICE kept
  with `network`), so that root in a container cannot chown files away,
  ignore file modes, mount, trace or load modules; then `no_new_privs`, so
  that no program it runs gains any back (set-user-ID, file capabilities);
* Landlock (`_landlock`; Linux 5.13+, TCP from 6.7, scopes from 6.12): the
  kernel refuses file access outside the granted paths; without
  `subprocesses`, running any program; without `network`, TCP connect and
  bind; signals to processes outside the service (and what it started);
* seccomp (`_seccomp`; x86-64 and arm64): without `network`, creating any
  socket but a Unix stream one, and connect, bind, listen on any; without
  `write` grants, any change of a file's mode, owner, times, extended
  attributes or flags; io_uring always;
* an audit hook (`_audit`, PEP 578), always, as a guard rail for Python
  code: file changes outside the `write` grants (which Landlock does not
  cover for metadata), starting processes, sockets and every name lookup;
  where Landlock is missing, file opens too. It is what turns a refusal into
  a clear `PermissionError` before the kernel says `EXDEV`.

Every mechanism but the audit hook is kept by the programs the service
starts. What is left uncovered, per mechanism, is in the docs' table
(*Running a service in a container*); the main gaps: with `write` grants, C
code and programs it starts may still change the metadata of files its user
owns anywhere (seccomp cannot tell paths apart, and Landlock has no right
for it); Unix stream sockets it holds, or socket pairs, keep working; the
audit hook does not see ctypes or C extensions. The `Protected` message the
remote sends lists what was applied.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterable
from typing import Any, Final

import attrs

from .._ipc.messages import PermissionSpec
from .._names import number
from . import caps as _caps
from . import landlock as _landlock
from . import seccomp as _seccomp
from .audit import audit_hook
from .landlock import landlock_abi as landlock_abi

_PR_SET_NO_NEW_PRIVS: Final = 38


def _absolute_paths(
    instance: object, attribute: attrs.Attribute[Any], paths: tuple[str, ...]
) -> None:
    for path in paths:
        if not isinstance(path, str) or not os.path.isabs(path):
            raise ValueError(f"Permissions.{attribute.name}: {path!r} is not an absolute path")


@attrs.frozen(kw_only=True)
class Permissions:
    """What a service in a `ServiceContainer` may do.

    Everything not granted is refused: by default a service may read only
    Python's own files and its code, write nowhere (not even a file's mode,
    owner or times), open no network connection, look no name up, start no
    process, and it holds no capability, even as root. A refusal raises
    `PermissionError` in the service; see *Running a service in a container*
    for exactly what each mechanism stops, what it does not, and the few
    other errors a refusal can take.

    Attributes:
        read: absolute paths (files or directories) it may read.
        write: absolute paths it may read, write, create and delete under,
            and whose mode, times and extended attributes it may change.
        network: whether it may connect, listen, and look names up (the
            resolver's files in /etc become readable); it keeps
            CAP_NET_BIND_SERVICE, so root may listen below port 1024.
        subprocesses: whether it may start processes. They inherit the
            limits, the capabilities dropped, Landlock and seccomp, but not
            the audit hook: what only the hook refuses (metadata changes
            under directories it may not write, where it has `write` grants;
            see the docs' table) is not refused to them. The directories on
            `$PATH` become readable (the kernel reads a program to run it);
            grant anything else they need.
        memory: a limit on its address space, in bytes.
        cpu_time: a limit on its CPU time, in seconds (then SIGXCPU).
        open_files: a limit on its open file descriptors.

    Raises:
        ValueError: on a relative path or a limit that is not positive.
    """

    read: tuple[str, ...] = attrs.field(default=(), converter=tuple, validator=_absolute_paths)
    write: tuple[str, ...] = attrs.field(default=(), converter=tuple, validator=_absolute_paths)
    network: bool = False
    subprocesses: bool = False
    memory: int | None = attrs.field(default=None, validator=number(above=0, integer=True))
    cpu_time: int | None = attrs.field(default=None, validator=number(above=0, integer=True))
    open_files: int | None = attrs.field(default=None, validator=number(above=0, integer=True))

    def to_spec(self) -> PermissionSpec:
        return PermissionSpec(**attrs.asdict(self, recurse=False))


def python_paths() -> list[str]:
    """Where the interpreter and installed packages read code from."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.update(p for p in sys.path if p and os.path.isdir(p))
    for lib in ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib"):
        if os.path.isdir(lib):
            paths.add(lib)  # shared libraries that extension modules load
    return sorted(paths)


def program_paths() -> tuple[str, ...]:
    """Where programs live: the directories on $PATH and the usual ones."""
    found = {p for p in os.environ.get("PATH", "").split(os.pathsep) if os.path.isabs(p)}
    found.update(("/bin", "/usr/bin", "/usr/local/bin", "/sbin", "/usr/sbin"))
    return tuple(sorted(p for p in found if os.path.isdir(p)))


#: What the C library reads to look a name up (`getaddrinfo`, `getservbyname`...).
_RESOLVER_FILES: Final = (
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
)


def resolver_paths() -> tuple[str, ...]:
    """The resolver's configuration files that exist here (a rule follows a symlink)."""
    return tuple(path for path in _RESOLVER_FILES if os.path.exists(path))


def apply(
    spec: PermissionSpec, code_paths: Iterable[str] = (), *, forks: bool = False
) -> tuple[str, ...]:
    """Restrict this process as `spec` says; returns what was applied, in words.

    Must run before any thread is started: Landlock and seccomp restrict the
    calling thread and those it starts later. The order matters: limits
    first (lowering them needs no privilege, raising a hard one would), then
    capabilities (dropping the bounding set needs `CAP_SETPCAP`), then
    `no_new_privs`, which Landlock and seccomp require of a process without
    `CAP_SYS_ADMIN`; the audit hook last.

    With `forks` (a pool's zygote), Landlock lets it read all of `/proc`,
    so that the processes it forks can read their own `/proc/<pid>`; each
    of them narrows that again with `narrow_to_this_process`.

    Raises:
        OSError: if the kernel refuses a mechanism it says it has.
    """
    import resource

    applied: list[str] = []
    limits = []
    for limit, value, label in (
        (resource.RLIMIT_AS, spec.memory, "memory {} bytes"),
        (resource.RLIMIT_CPU, spec.cpu_time, "cpu {}s"),
        (resource.RLIMIT_NOFILE, spec.open_files, "open files {}"),
    ):
        if value is not None:
            resource.setrlimit(limit, (value, value))
            limits.append(label.format(value))
    if limits:
        applied.append("rlimits: " + ", ".join(limits))
    linux = sys.platform.startswith("linux")  # elsewhere: the limits and the hook only
    if linux:
        applied.append(_caps.drop(_kept_capabilities(spec)))
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        applied.append("no_new_privs")
    code_paths = tuple(code_paths)
    readable = _readable(spec, code_paths, "/proc" if forks else f"/proc/{os.getpid()}")
    abi = landlock_abi()
    if abi:
        applied.append(
            _landlock.restrict(abi, readable, spec.write, spec.network, spec.subprocesses)
        )
    filtered = _seccomp.install(network=spec.network, write=bool(spec.write)) if linux else None
    if filtered is not None:
        applied.append(filtered)
    guarded = ["file changes outside the write grants"]
    if not spec.subprocesses:
        guarded.append("processes")
    if not spec.network:
        guarded.append("all sockets and name lookups")
    if not abi:
        guarded.append("file opens")
    sys.addaudithook(audit_hook(spec, check_opens=not abi, readable=readable))
    applied.append("audit hook: " + ", ".join(guarded))
    return tuple(applied)


def _readable(spec: PermissionSpec, code_paths: Iterable[str], proc: str) -> tuple[str, ...]:
    readable = (*python_paths(), *code_paths, *spec.read, proc, "/dev/null")
    if spec.subprocesses:
        readable += program_paths()  # the kernel reads a program to run it
    if spec.network:
        readable += resolver_paths()  # a name lookup reads them
    return readable


def narrow_to_this_process(spec: PermissionSpec, code_paths: Iterable[str] = ()) -> str | None:
    """In a process forked by a zygote (`apply(..., forks=True)`): a second
    Landlock domain, the same as the zygote's but for `/proc`, of which it
    may read only its own `/proc/<pid>`. Domains stack: each access must be
    allowed by both. Returns what it applied (None: no Landlock here)."""
    abi = landlock_abi()
    if not abi:
        return None
    readable = _readable(spec, code_paths, f"/proc/{os.getpid()}")
    return _landlock.restrict(abi, readable, spec.write, spec.network, spec.subprocesses)


def _kept_capabilities(spec: PermissionSpec) -> frozenset[int]:
    """What a service keeps: binding a port below 1024, if it may use the network."""
    return frozenset({_caps.CAP_NET_BIND_SERVICE}) if spec.network else frozenset()
