"""Landlock, through its three system calls (Linux 5.13+; TCP from 6.7, scopes from 6.12).

The kernel refuses, to this process and every program it starts, file access
outside the granted paths, running programs, TCP bind and connect, and (with
scopes) signals and abstract Unix sockets that cross out of the domain. It
needs `no_new_privs` (set before) or `CAP_SYS_ADMIN`.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterable
from typing import Final

_CREATE_RULESET: Final = 444  # the same number on every architecture Linux supports
_ADD_RULE: Final = 445
_RESTRICT_SELF: Final = 446
_RULE_PATH_BENEATH: Final = 1

_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FILE_ONLY: Final = _EXECUTE | _WRITE_FILE | _READ_FILE | (1 << 14) | (1 << 15)
_READ: Final = _READ_FILE | _READ_DIR
#: Rights handled at each ABI version (the file ones).
_FS_RIGHTS: Final = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_TCP_BIND, _TCP_CONNECT = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1


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


def restrict(
    abi: int, reads: Iterable[str], writes: Iterable[str], network: bool, subprocesses: bool
) -> str:
    """Restrict this process (and its future threads and children) for good."""
    libc = ctypes.CDLL(None, use_errno=True)
    fs_rights = _FS_RIGHTS[max(v for v in _FS_RIGHTS if v <= abi)]
    if subprocesses:
        # Executing is not handled, so allowed; the programs it runs inherit
        # this domain and so stay confined to the same files.
        fs_rights &= ~_EXECUTE
    net_rights = 0 if network or abi < 4 else _TCP_BIND | _TCP_CONNECT
    scoped = 0
    if abi >= 6:
        # Signals only to processes of this domain (itself, what it starts);
        # without network, no abstract Unix socket outside it either.
        scoped = _SCOPE_SIGNAL | (0 if network else _SCOPE_ABSTRACT_UNIX)
    attr = _RulesetAttr(fs_rights, net_rights, scoped)
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
        if libc.syscall(_RESTRICT_SELF, ruleset, 0):
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    covered = ["files"]
    if not subprocesses:
        covered.append("running programs")
    if net_rights:
        covered.append("tcp")
    if scoped & _SCOPE_SIGNAL:
        covered.append("signals")
    if scoped & _SCOPE_ABSTRACT_UNIX:
        covered.append("abstract unix sockets")
    return f"landlock abi {abi}: {', '.join(covered)} ({granted} paths granted)"
