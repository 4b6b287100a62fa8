"""Dropping the child's Linux capabilities, for good.

A process running as root holds every capability: it may chown any file,
ignore file modes, load kernel modules, mount, trace... Landlock limits file
access and seccomp some system calls, but neither takes these away. Here the
child gives up all of them but those it is allowed to keep, from each set:

* the bounding set (`PR_CAPBSET_DROP`), so that no program it runs can get
  them back (this needs `CAP_SETPCAP`, which a process without capabilities
  lacks; it has nothing to give up then, and `no_new_privs`, set just after,
  stops set-user-ID programs and file capabilities from granting any);
* the ambient set (programs it runs would inherit those);
* the effective, permitted and inheritable sets (`capset`).

The user does not change: a service run as root still owns what root owns
(it may chmod those files, and signal root's processes, unless Landlock or
seccomp stop it), but it acts with the file permissions of that user only.
"""

from __future__ import annotations

import ctypes
from collections.abc import Set
from typing import Final

CAP_SETPCAP: Final = 8
CAP_NET_BIND_SERVICE: Final = 10
_NAMES: Final = {CAP_NET_BIND_SERVICE: "net_bind_service"}

_PR_CAPBSET_READ: Final = 23
_PR_CAPBSET_DROP: Final = 24
_PR_CAP_AMBIENT: Final = 47
_PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
_VERSION_3: Final = 0x2008_0522  # 64-bit sets, as two 32-bit halves


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _get() -> tuple[int, int]:
    """This process's effective and permitted sets, as bit masks."""
    header, data = _Header(_VERSION_3, 0), (_Data * 2)()
    if _libc().capget(ctypes.byref(header), data):
        raise OSError(ctypes.get_errno(), "capget failed")
    return (
        data[0].effective | data[1].effective << 32,
        data[0].permitted | data[1].permitted << 32,
    )


def drop(keep: Set[int] = frozenset()) -> str:
    """Give up every capability not in `keep`; say what is left, in words.

    Raises:
        OSError: if the kernel refuses (it should not: only giving up).
    """
    libc = _libc()
    effective, permitted = _get()
    bounded = effective >> CAP_SETPCAP & 1
    if bounded:
        cap = 0
        while (present := libc.prctl(_PR_CAPBSET_READ, cap, 0, 0, 0)) >= 0:  # -1 past the last
            if present and cap not in keep and libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0):
                raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap}) failed")
            cap += 1
    # Fails only on kernels older than 4.3, which have no ambient set to clear.
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    kept = permitted & sum(1 << cap for cap in keep)
    low, high = kept & 0xFFFF_FFFF, kept >> 32
    data = (_Data * 2)(_Data(low, low, 0), _Data(high, high, 0))
    if libc.capset(ctypes.byref(_Header(_VERSION_3, 0)), data):
        raise OSError(ctypes.get_errno(), "capset failed")
    if not permitted:
        return "capabilities: none held"
    left = [_NAMES.get(cap, str(cap)) for cap in sorted(keep) if kept >> cap & 1]
    words = "all dropped" + (f" but {', '.join(left)}" if left else "")
    return f"capabilities: {words}" + ("" if bounded else " (bounding set kept)")
