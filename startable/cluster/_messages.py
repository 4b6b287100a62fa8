"""The typed messages of the control plane (controller <-> remote).

Each message is a frozen `msgspec.Struct` with a `type` tag; a port decodes
a frame into exactly one of the types of its schema, or refuses it. Messages
carry plain data only: errors travel as `ErrorInfo` (type name, message,
formatted traceback), never as pickled objects.
"""

from __future__ import annotations

import traceback
from typing import Literal, TypeAlias

import msgspec


class ErrorInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An exception from another process, as text.

    Attributes:
        type: the qualified name of the exception's class.
        message: `str()` of the exception.
        traceback: the formatted traceback, as the remote printed it.
    """

    type: str
    message: str
    traceback: str

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        kind = type(exc)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        text = "".join(traceback.format_exception(exc))
        return cls(type=name, message=str(exc), traceback=text)


class Message(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    """Base of every control message."""


# -- from the remote ----------------------------------------------------------


class RemoteReady(Message, tag="remoteReady", frozen=True):
    """The remote process is up and its port is connected."""

    pid: int
    python: str


class Protected(Message, tag="protected", frozen=True):
    """Which permission mechanisms the remote applied, before any user code.

    Attributes:
        mechanisms: e.g. `("landlock abi 7: files, tcp", "audit hook: subprocesses")`.
    """

    mechanisms: tuple[str, ...]


class StateChanged(Message, tag="state", frozen=True):
    """The service's lifecycle moved."""

    state: Literal["READY", "STARTING", "STARTED", "STOPPING", "STOPPED"]
    cycle: int
    reason: ErrorInfo | None = None


class Uncaught(Message, tag="uncaught", frozen=True):
    """An exception nobody caught in the remote (raw start, raw stop, a task...)."""

    error: ErrorInfo
    where: str


class Resources(Message, tag="resources", frozen=True):
    """A sample of the remote process's resource use."""

    time: float
    cpu_percent: float
    rss: int
    threads: int
    open_files: int


class Pong(Message, tag="pong", frozen=True):
    payload: bytes


# -- from the controller ------------------------------------------------------


class PermissionSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the service may do; see `startable.cluster.Permissions`."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    network: bool = False
    subprocesses: bool = False
    memory: int | None = None
    cpu_time: int | None = None
    open_files: int | None = None


class RunEntry(Message, tag="run", frozen=True):
    """Run this entry as the service: an import path, or a code string.

    Attributes:
        entry: `"pkg.module:attr"`; or, with `code`, the name in `code`'s
            namespace to run.
        code: source text to execute first (the spec's "code string").
        permissions: restrictions to apply before any user code, or None.
        resources_interval: seconds between `Resources` samples (0: none).
    """

    entry: str
    code: str | None = None
    permissions: PermissionSpec | None = None
    resources_interval: float = 1.0


class CloseRequest(Message, tag="close", frozen=True):
    """Stop the service gracefully, then exit.

    Attributes:
        reason: why; the service's raw stop receives it as a `RemoteError`.
    """

    reason: ErrorInfo | None = None


class Ping(Message, tag="ping", frozen=True):
    payload: bytes


FromRemote: TypeAlias = RemoteReady | Protected | StateChanged | Uncaught | Resources | Pong
ToRemote: TypeAlias = RunEntry | CloseRequest | Ping
