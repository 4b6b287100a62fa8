"""Every process a service starts, found and ended, wherever it went.

A service's process leads its own process group, so the stop ladder's
signals reach what it starts; but a program that starts a session of its
own (a daemon, `start_new_session=True`) leaves the group. Two mechanisms
catch those, the strongest the system allows:

* a cgroup (v2) per service process, made by the manager beside its own
  cgroup where it may write there (root, or a delegated subtree such as a
  systemd user service): whatever the service starts stays in it, even past
  a double fork or the service's own death, and `cgroup.kill` ends them all;
* otherwise the remote is a child subreaper (`PR_SET_CHILD_SUBREAPER`):
  orphaned descendants become its children instead of init's, so they stay
  in its process tree; the ladder signals the tree, and the remote ends
  what is left of it when it exits. What escapes then: descendants of a
  remote that is itself killed (SIGKILL, the OOM killer) before it can.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Final

_PR_SET_CHILD_SUBREAPER: Final = 36
_names = itertools.count(1)
_swept = False  # the cgroups of managers that died were cleaned up
#: Set to False to use the subreaper alone (tests of the fallback).
USE_CGROUPS = True


def become_subreaper() -> None:
    """Adopt this process's orphaned descendants (Linux 3.4+; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def children(pid: int) -> list[int]:
    """The children of `pid`, from /proc (empty if it cannot be read)."""
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as file:
                found.extend(int(child) for child in file.read().split())
        except (OSError, ValueError):
            continue
    return found


def tree(pid: int) -> list[int]:
    """Every descendant of `pid` that /proc shows, parents before their children."""
    found: list[int] = []
    pending = children(pid)
    while pending:
        child = pending.pop(0)
        if child not in found:
            found.append(child)
            pending.extend(children(child))
    return found


def end_own_descendants(deadline: float = 2.0) -> None:
    """Kill whatever this process still has below it, and reap it (at its exit).

    As a subreaper, it is the parent of every orphan among them: killing and
    reaping its children, round after round, reaches the whole tree, with
    /proc/self alone (a sandboxed process may read no other process's).
    """
    me = os.getpid()
    until = time.monotonic() + deadline
    while (left := children(me)) and time.monotonic() < until:
        for child in left:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
        for child in left:  # reaped, so that the orphans they leave come to this process
            with contextlib.suppress(ChildProcessError, OSError):
                while os.waitpid(child, os.WNOHANG) == (0, 0) and time.monotonic() < until:
                    time.sleep(0.001)


class Cgroup:
    """The cgroup (v2) that holds one service process and all it starts."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def make(cls, label: str) -> Cgroup | None:
        """A new cgroup beside this process's own, or None if it cannot be made here."""
        if not USE_CGROUPS:
            return None
        global _swept
        parent = _own_cgroup()
        if parent is None:
            return None
        if not _swept:
            _swept = True
            _sweep_stale(parent)
        path = os.path.join(parent, f"startable-{os.getpid()}-{next(_names)}-{label}")
        try:
            os.mkdir(path)
        except OSError:
            return None
        if not os.path.exists(os.path.join(path, "cgroup.procs")):  # pragma: no cover
            with contextlib.suppress(OSError):
                os.rmdir(path)
            return None
        return cls(path)

    def add(self, pid: int) -> bool:
        """Move `pid` in; False if the kernel refuses (the cgroup is removed then)."""
        try:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as file:
                file.write(str(pid))
        except OSError:
            self.remove()
            return False
        return True

    def members(self) -> list[int]:
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as file:
                return [int(pid) for pid in file.read().split()]
        except (OSError, ValueError):
            return []

    def signal(self, signum: int) -> None:
        """Send `signum` to every process in it."""
        for pid in self.members():
            with contextlib.suppress(OSError):
                os.kill(pid, signum)

    def kill(self) -> None:
        """SIGKILL everything in it (with `cgroup.kill` where the kernel has it: 5.14+)."""
        try:
            with open(os.path.join(self.path, "cgroup.kill"), "w") as file:
                file.write("1")
        except OSError:
            self.signal(signal.SIGKILL)

    def populated(self) -> bool:
        try:
            with open(os.path.join(self.path, "cgroup.events")) as file:
                return "populated 1" in file.read()
        except OSError:
            return False

    def remove(self) -> bool:
        """Remove it, once empty; whether it is gone."""
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True


def _sweep_stale(parent: str) -> None:
    """End and remove the cgroups left by managers that died (killed before their clean-up).

    Their service processes died with them (a parent-death signal), but what
    those started in sessions of their own lives on in their cgroups.
    """
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        parts = name.split("-", 3)
        if len(parts) < 3 or parts[0] != "startable" or not parts[1].isdigit():
            continue
        if _alive(int(parts[1])):
            continue
        stale = Cgroup(os.path.join(parent, name))
        stale.kill()
        until = time.monotonic() + 1.0
        while not stale.remove() and time.monotonic() < until:
            time.sleep(0.005)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's: leave it alone
    return True


def _own_cgroup() -> str | None:
    """The directory of this process's cgroup in the v2 hierarchy, if it is mounted."""
    try:
        with open("/proc/self/cgroup") as file:
            relative = next(
                (line.split(":", 2)[2].strip() for line in file if line.startswith("0::")), None
            )
    except OSError:
        return None
    if relative is None:
        return None
    for root in _cgroup2_mounts():
        path = os.path.normpath(os.path.join(root, relative.lstrip("/")))
        if os.path.isdir(path):
            return path
    return None


def _cgroup2_mounts() -> Iterator[str]:
    try:
        with open("/proc/self/mountinfo") as file:
            for line in file:
                fields = line.split()
                if " - cgroup2 " in line and len(fields) > 4:
                    yield fields[4]
    except OSError:
        return
