"""The typed messages of the control plane (controller <-> remote).

Each message is a frozen `msgspec.Struct` with a `type` tag; a port decodes
a frame into exactly one of the types of its schema, or refuses it. Messages
carry plain data only: errors travel as `ErrorInfo` (type name, message,
formatted traceback), never as pickled objects.
"""

from __future__ import annotations

import math
import time
import traceback
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

import msgspec

if TYPE_CHECKING:
    import psutil

#: The version of the control plane's messages. A remote speaking another
#: (another release of startable, under `python =`) is refused at once.
PROTOCOL: Final = 1
#: The longest message and traceback kept of an `ErrorInfo` from a remote,
#: in characters; the rest is cut (and the cut said).
MAX_ERROR_MESSAGE: Final = 4096
MAX_TRACEBACK: Final = 65536


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

    def bounded(self) -> ErrorInfo:
        """This error with its message and traceback cut to what is kept of them.

        The message keeps its beginning, the traceback its end (where the
        error was raised); each says how much was cut.
        """
        message, trace = self.message, self.traceback
        if len(message) <= MAX_ERROR_MESSAGE and len(trace) <= MAX_TRACEBACK:
            return self
        if len(message) > MAX_ERROR_MESSAGE:
            cut = len(message) - MAX_ERROR_MESSAGE
            message = f"{message[:MAX_ERROR_MESSAGE]}... ({cut} characters cut)"
        if len(trace) > MAX_TRACEBACK:
            cut = len(trace) - MAX_TRACEBACK
            trace = f"({cut} characters cut) ...{trace[-MAX_TRACEBACK:]}"
        return ErrorInfo(type=self.type[:MAX_ERROR_MESSAGE], message=message, traceback=trace)


class Message(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    """Base of every control message."""


# -- from the remote ----------------------------------------------------------


class RemoteReady(Message, tag="remoteReady", frozen=True):
    """The remote process is up and its port is connected.

    Attributes:
        pid: its process id.
        python: its interpreter's version.
        protocol: the `PROTOCOL` it speaks (0: a release before it was sent).
        version: its startable's version.
    """

    pid: int
    python: str
    protocol: int = 0
    version: str = ""


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

    @classmethod
    def of(cls, process: psutil.Process) -> Resources:
        """A sample of `process` now (its CPU since the last `cpu_percent` call).

        Raises:
            psutil.Error: it has ended, or is not this user's to read.
        """
        with process.oneshot():
            return cls(
                time=time.time(),
                cpu_percent=process.cpu_percent(None),
                rss=process.memory_info().rss,
                threads=process.num_threads(),
                open_files=process.num_fds(),
            )


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


class Role(Message, tag="role", frozen=True):
    """The process now holds its pool's singleton role, until it exits."""


FromRemote: TypeAlias = RemoteReady | Protected | StateChanged | Uncaught | Resources | Pong
ToRemote: TypeAlias = RunEntry | CloseRequest | Ping | Role


def problem(message: FromRemote) -> str | None:
    """What is wrong with the values of a message from a remote (None if nothing).

    The decoder checked the types; this checks what they hold: resource
    figures are finite and not negative, cycles and pids are positive.
    """
    if isinstance(message, Resources):
        figures = (message.time, message.cpu_percent, message.rss, message.threads)
        if not all(math.isfinite(f) and f >= 0 for f in (*figures, message.open_files)):
            return f"resource figures must be finite and not negative: {message!r}"
    elif isinstance(message, StateChanged):
        if message.cycle < 1:
            return f"a cycle is numbered from 1, not {message.cycle}"
    elif isinstance(message, RemoteReady) and message.pid < 1:
        return f"a pid is positive, not {message.pid}"
    return None
