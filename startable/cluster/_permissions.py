"""What a service in a container may do, and how the child process enforces it.

Applied in the child before any of the service's code runs, strongest first:

* resource limits (`setrlimit`): address space, CPU time, open files;
* Landlock (Linux 5.13+, TCP from 6.7): the kernel refuses file access
  outside the allowed paths; without `subprocesses`, running any program (no
  path is granted the right to execute; shared libraries still load); and,
  without `network`, TCP connect and bind. Denials surface as
  `PermissionError`. Programs the service may start inherit the same limits;
* an audit hook (PEP 578), always, as a guard rail: without `subprocesses`
  it refuses to fork, spawn or exec; without `network` it refuses socket
  connect, bind, send-to and name lookups for every address family (Landlock
  covers TCP only); where Landlock is missing it also checks file opens.

The audit hook is not a sandbox: code that uses ctypes, or C extensions that
make system calls directly, is not seen by it. Landlock is enforced by the
kernel and sees everything, but covers only what is listed above: it does
not limit UDP or Unix sockets, signals to other processes, or reading
another process's memory through /proc/<pid> of the same user. The
`Protected` message the remote sends lists what was applied.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterable
from typing import Any, Final

import attrs

from ._messages import PermissionSpec


def _absolute_paths(
    instance: object, attribute: attrs.Attribute[Any], paths: tuple[str, ...]
) -> None:
    for path in paths:
        if not isinstance(path, str) or not os.path.isabs(path):
            raise ValueError(f"Permissions.{attribute.name}: {path!r} is not an absolute path")


def _positive(instance: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"Permissions.{attribute.name} must be positive, not {value}")


@attrs.frozen(kw_only=True)
class Permissions:
    """What a service in a `ServiceContainer` may do.

    Everything not granted is refused: by default a service may read only
    Python's own files and its code, write nowhere, open no network
    connection and start no process. See *Running a service in a container*
    for exactly what each mechanism stops.

    Attributes:
        read: absolute paths (files or directories) it may read.
        write: absolute paths it may read, write, create and delete under.
        network: whether it may connect, listen, and look names up.
        subprocesses: whether it may start processes; they inherit the same
            limits. The directories on `$PATH` become readable (the kernel
            reads a program to run it); grant anything else they need.
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
    memory: int | None = attrs.field(default=None, validator=_positive)
    cpu_time: int | None = attrs.field(default=None, validator=_positive)
    open_files: int | None = attrs.field(default=None, validator=_positive)

    def to_spec(self) -> PermissionSpec:
        return PermissionSpec(**attrs.asdict(self, recurse=False))


# -- Landlock, through its three system calls ------------------------------------

_CREATE_RULESET: Final = 444  # the same number on every architecture Linux supports
_ADD_RULE: Final = 445
_RESTRICT_SELF: Final = 446
_PR_SET_NO_NEW_PRIVS: Final = 38
_RULE_PATH_BENEATH: Final = 1

_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FILE_ONLY: Final = _EXECUTE | _WRITE_FILE | _READ_FILE | (1 << 14) | (1 << 15)
_READ: Final = _READ_FILE | _READ_DIR
#: Rights handled at each ABI version (the file ones).
_FS_RIGHTS: Final = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_TCP_BIND, _TCP_CONNECT = 1 << 0, 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 if it has none (or this is not Linux)."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    version = libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(version), 0)


def _landlock(
    abi: int, reads: Iterable[str], writes: Iterable[str], network: bool, subprocesses: bool
) -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    fs_rights = _FS_RIGHTS[max(v for v in _FS_RIGHTS if v <= abi)]
    if subprocesses:
        # Executing is not handled, so allowed; the programs it runs inherit
        # this domain and so stay confined to the same files.
        fs_rights &= ~_EXECUTE
    net_rights = 0 if network or abi < 4 else _TCP_BIND | _TCP_CONNECT
    attr = _RulesetAttr(fs_rights, net_rights, 0)
    size = ctypes.sizeof(attr) if abi >= 4 else 8  # ABI < 4 knows only the first field
    ruleset = libc.syscall(
        _CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)
    )
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    granted = 0
    try:
        for paths, rights in ((reads, _READ), (writes, fs_rights & ~_EXECUTE)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue  # a path that does not exist grants nothing
                try:
                    allowed = rights if os.path.isdir(path) else rights & _FILE_ONLY
                    rule = _PathBeneath(allowed & fs_rights, fd)
                    if libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0):
                        raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
                    granted += 1
                finally:
                    os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(_RESTRICT_SELF, ruleset, 0):
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    covered = (
        "files" + ("" if subprocesses else ", running programs") + (", tcp" if net_rights else "")
    )
    return f"landlock abi {abi}: {covered} ({granted} paths granted)"


# -- the guard rail -----------------------------------------------------------

_PROCESS_EVENTS: Final = frozenset(
    {
        "os.exec",
        "os.fork",
        "os.forkpty",
        "os.posix_spawn",
        "os.spawn",
        "os.system",
        "subprocess.Popen",
    }
)
_NETWORK_EVENTS: Final = frozenset(
    {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo"}
)


def _audit_hook(spec: PermissionSpec, check_files: bool, readable: tuple[str, ...]) -> Any:
    writable = tuple(os.path.join(os.path.realpath(p), "") for p in spec.write)
    everything = tuple(os.path.join(os.path.realpath(p), "") for p in readable) + writable

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if not spec.subprocesses and event in _PROCESS_EVENTS:
            raise PermissionError(f"this service may not start processes ({event})")
        if not spec.network and event in _NETWORK_EVENTS:
            raise PermissionError(f"this service may not use the network ({event})")
        if check_files and event == "open" and isinstance(args[0], (str, bytes)):
            path = os.path.join(os.path.realpath(os.fsdecode(args[0])), "")
            mode, flags = args[1], args[2]  # os.open gives no mode, only flags
            if mode is None:
                writes = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
                mode = f"flags {flags:#x}" if writes else "r"
            allowed = writable if mode[0] == "f" or any(c in mode for c in "wax+") else everything
            if not path.startswith(allowed):
                raise PermissionError(f"this service may not open {args[0]!r} ({mode})")

    return hook


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


def apply(spec: PermissionSpec, code_paths: Iterable[str] = ()) -> tuple[str, ...]:
    """Restrict this process as `spec` says; returns what was applied, in words.

    Must run before any thread is started: Landlock restricts the calling
    thread and those it starts later.
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
    readable = (*python_paths(), *code_paths, *spec.read, f"/proc/{os.getpid()}", "/dev/null")
    if spec.subprocesses:
        readable += program_paths()  # the kernel reads a program to run it
    abi = landlock_abi()
    if abi:
        applied.append(_landlock(abi, readable, spec.write, spec.network, spec.subprocesses))
    guarded = []
    if not spec.subprocesses:
        guarded.append("processes")
    if not spec.network:
        guarded.append("all sockets and name lookups")
    if not abi:
        guarded.append("file opens")
    if guarded:
        sys.addaudithook(_audit_hook(spec, check_files=not abi, readable=readable))
        applied.append("audit hook: " + ", ".join(guarded))
    return tuple(applied)
