"""The guard rail: a PEP 578 audit hook that refuses what Python code asks for.

It sees only what the interpreter reports (calls made from Python through
`os`, `socket`, `shutil`, `subprocess`, `fcntl`...), not system calls that
C extensions or ctypes make themselves, and it is not inherited by programs
the service starts. Where a kernel mechanism also covers a call, the hook
refuses it first, with a message that names what was refused, and always as
`PermissionError` with errno `EACCES`: otherwise a rename or link that
Landlock refuses fails with `EXDEV`, and `socket.create_server`, which
rewraps a bind error by its errno, turned an errno-less one into
`OSError: [Errno None] None`.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Callable
from typing import Any, Final, Literal

from .._ipc.messages import PermissionSpec

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
    {
        "socket.connect",
        "socket.bind",
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.gethostbyname",  # and gethostbyname_ex
        "socket.gethostbyaddr",
        "socket.getnameinfo",
    }
)
_UNIX_TYPES: Final = frozenset({socket.SOCK_STREAM, socket.SOCK_SEQPACKET})

# Calls that change files, and where their paths are among the event's
# arguments: (path, dir_fd or None, kind). The kind says what the call does
# with the path, and so which path must be writable and when the kernel
# answers first:
# * "object": changes what the path names, through a symlink too (both the
#   link and its target must be writable); the path may be a descriptor;
# * "entry": changes the directory entry itself (removing a symlink removes
#   the link);
# * "new": creates the entry;
# * "target": where something goes, which may exist (rename, move, copy).
# Where the kernel would refuse the call anyway (ENOENT for an object or
# entry that is not there, EEXIST for a new one that is), the hook lets it
# through, so that `except FileExistsError` works as without it.
_Kind = Literal["object", "entry", "new", "target"]
_Where = tuple[int, int | None, _Kind]
_WRITES: Final[dict[str, tuple[_Where, ...]]] = {
    "os.chmod": ((0, 2, "object"),),  # (path, mode, dir_fd)
    "os.chown": ((0, 3, "object"),),
    "os.utime": ((0, 3, "object"),),
    "os.setxattr": ((0, None, "object"),),
    "os.removexattr": ((0, None, "object"),),
    "os.chflags": ((0, None, "object"),),
    "os.lchflags": ((0, None, "entry"),),
    "os.mkdir": ((0, 2, "new"),),
    "os.rmdir": ((0, 1, "entry"),),
    "os.remove": ((0, 1, "entry"),),  # and os.unlink
    "os.rename": ((0, 2, "entry"), (1, 3, "target")),  # and os.replace
    "os.link": ((0, 2, "object"), (1, 3, "new")),
    "os.symlink": ((1, 2, "new"),),  # what the link names is not touched
    "shutil.copyfile": ((1, None, "target"),),
    "shutil.copymode": ((1, None, "target"),),
    "shutil.copystat": ((1, None, "target"),),
    "shutil.copytree": ((1, None, "target"),),
    "shutil.move": ((0, None, "entry"), (1, None, "target")),
    "shutil.rmtree": ((0, 1, "entry"),),
}
#: ioctl requests that change a file's flags (chattr): FS_IOC_SETFLAGS,
#: FS_IOC32_SETFLAGS, FS_IOC_FSSETXATTR.
_SET_FLAGS_IOCTLS: Final = frozenset({0x4008_6602, 0x4004_6602, 0x401C_5820})


def _refuse(what: str) -> PermissionError:
    # With an errno, so that code that rewraps OSErrors by errno (as
    # socket.create_server does) still raises a PermissionError.
    return PermissionError(errno.EACCES, f"this service may not {what}")


def _local(family: int, kind: int) -> bool:
    """Whether a new socket is one seccomp lets through without `network` (-1: unknown)."""
    if family == -1:  # socket(fileno=...): one this process holds already
        return True
    return family == socket.AF_UNIX and (kind == -1 or kind & 0xF in _UNIX_TYPES)


def _adopted() -> bool:
    """Whether the socket being made is for a descriptor this process holds already
    (`accept`, `socket(fileno=...)`): no new socket, as seccomp sees it."""
    try:
        caller = sys._getframe(2)  # (the hook's caller: the Python socket.__init__)
    except ValueError:  # made from C, with no Python frame above
        return False
    return caller.f_code is _SOCKET_INIT and caller.f_locals.get("fileno") is not None


_SOCKET_INIT: Final = socket.socket.__init__.__code__


def _unix_send(event: str, args: tuple[Any, ...]) -> bool:
    """Whether `event` sends on a unix socket (local, as seccomp lets it be)."""
    if event not in ("socket.sendmsg", "socket.sendto") or not args:
        return False
    return isinstance(args[0], socket.socket) and args[0].family == socket.AF_UNIX


def _where(path: object, dir_fd: object, kind: _Kind) -> tuple[str, ...]:
    """The absolute paths a call on `path` (relative to `dir_fd`) would change."""
    if isinstance(path, int):  # a descriptor: what it has open
        try:
            target = os.readlink(f"/proc/self/fd/{path}")
        except OSError:
            return ()  # not open: the call fails by itself
        return (target,) if os.path.isabs(target) else ()  # pipes, sockets: no file
    if path is None:
        path = "."
    if not isinstance(path, (str, bytes, os.PathLike)):
        return ()
    name = os.fsdecode(path)
    if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(name):
        try:
            name = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)
        except OSError:
            return ()
    there = os.path.lexists(name)
    if (kind == "new" and there) or (kind in ("object", "entry") and not there):
        return ()  # EEXIST or ENOENT, from the kernel
    head, tail = os.path.split(os.path.abspath(name))
    entry = os.path.join(os.path.realpath(head), tail)
    return (entry, os.path.realpath(name)) if kind == "object" else (entry,)


#: The one process that may fork whatever the grants: a pool's zygote, once it
#: has preloaded (what it forks are replicas, held to the same restrictions).
_FORKERS: set[int] = set()


def allow_forks_here() -> None:
    """Let this process (not those it starts) call `os.fork` despite the hook.

    Once per interpreter, and so never in what it forks: a replica, which
    runs the service's code, cannot grant itself forks by calling it again.

    Raises:
        PermissionError: it was called before, here or in a process this one
            was forked from.
    """
    if _FORKERS:
        raise _refuse("grant itself forks: they were granted to its zygote only")
    _FORKERS.add(os.getpid())


def audit_hook(
    spec: PermissionSpec, check_opens: bool, readable: tuple[str, ...]
) -> Callable[[str, tuple[Any, ...]], None]:
    """The hook for `sys.addaudithook`; `check_opens` where Landlock is missing."""
    writable = tuple(os.path.join(os.path.realpath(p), "") for p in spec.write)
    everything = tuple(os.path.join(os.path.realpath(p), "") for p in readable) + writable

    def check_writes(event: str, args: tuple[Any, ...], where: tuple[_Where, ...]) -> None:
        for index, dir_fd_index, kind in where:
            if index >= len(args):
                continue  # an interpreter that reports fewer arguments
            dir_fd = None
            if dir_fd_index is not None and dir_fd_index < len(args):
                dir_fd = args[dir_fd_index]
            for path in _where(args[index], dir_fd, kind):
                if not os.path.join(path, "").startswith(writable):
                    raise _refuse(f"change {path!r} ({event}): it is outside its write grants")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if (where := _WRITES.get(event)) is not None:
            check_writes(event, args, where)
        elif event == "os.truncate" and not isinstance(args[0], int):
            # By path only: truncating a descriptor needs it open for writing,
            # and that open was checked (as Landlock does).
            check_writes(event, args, ((0, None, "object"),))
        elif event == "fcntl.ioctl" and args[1] in _SET_FLAGS_IOCTLS:
            check_writes(event, args, ((0, None, "object"),))
        elif event in _PROCESS_EVENTS:
            if not spec.subprocesses and not (event == "os.fork" and os.getpid() in _FORKERS):
                raise _refuse(f"start processes ({event})")
        elif event in _NETWORK_EVENTS:
            if not spec.network and not _unix_send(event, args):
                raise _refuse(f"use the network ({event})")
        elif event == "socket.__new__":  # (socket, family, type, proto); -1 for a descriptor
            family, kind = args[1], args[2]
            if not spec.network and not _local(family, kind) and not _adopted():
                raise _refuse(f"use the network (a socket of family {family}, type {kind})")
        elif check_opens and event == "open" and isinstance(args[0], (str, bytes)):
            path = os.path.join(os.path.realpath(os.fsdecode(args[0])), "")
            mode, flags = args[1], args[2]  # os.open gives no mode, only flags
            if mode is None:
                writes = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
                mode = f"flags {flags:#x}" if writes else "r"
            allowed = writable if mode[0] == "f" or any(c in mode for c in "wax+") else everything
            if not path.startswith(allowed):
                raise _refuse(f"open {args[0]!r} ({mode})")

    return hook
