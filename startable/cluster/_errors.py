"""The errors of the cluster layer; all derive from `startable.StartableError`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import StartableError

if TYPE_CHECKING:
    from ._ipc.messages import ErrorInfo


class ClusterError(StartableError):
    """Root of the errors raised by `startable.cluster`."""


class PortError(ClusterError, ConnectionError):
    """A port cannot carry messages any more; it has stopped (or is stopping).

    Raised by `ConnectionPort.send`/`receive` and given as the reason of the
    port's stop.
    """


class PortClosed(PortError):
    """The peer closed the connection (end of stream between frames)."""


class FrameError(PortError):
    """The byte stream broke the framing: a frame too large, cut short, or
    not a startable port at all. The port closes: a stream cannot be trusted
    to find the next frame after a bad one."""


class AuthenticationError(FrameError):
    """The peer does not hold the cluster key: the handshake failed, or a
    frame's HMAC did not match. The port closes."""


class MessageError(ClusterError, ValueError):
    """A well-framed (and authenticated) frame held no valid message.

    Raised by `ConnectionPort.receive` for that one frame, which is dropped;
    the port stays open and the next call receives the next frame.
    """


class RemoteError(ClusterError):
    """An exception raised in another process, with its traceback as text.

    Its message is the remote exception's, after its type: `"OSError: the
    disk filled up"`. Where it was raised is an attribute (and a note, shown
    with the traceback), never part of the message, so a service that
    receives it as a stop reason sees the words of the error itself.

    Attributes:
        info: the remote exception's type name, message and traceback.
        where: where it was raised or seen: `"raw start"`, `"raw stop"`,
            `"loading the entry"`, `"stop reason"`, `"thread NAME"`, or
            `"in SERVICE.METHOD"` for a request; empty if not known.
    """

    info: ErrorInfo
    where: str

    def __init__(self, info: ErrorInfo, where: str = "") -> None:
        self.info = info
        self.where = where
        super().__init__(f"{info.type}: {info.message}")
        if where:
            self.add_note(f"where: {where}")

    def __str__(self) -> str:
        head = super().__str__()
        return f"{head}\n\nRemote traceback:\n{self.info.traceback.rstrip()}"


class RemoteExited(ClusterError):
    """The remote process ended; `returncode` as subprocess reports it
    (negative: killed by that signal)."""

    returncode: int

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


class ForcedStop(ClusterError):
    """A service's process did not end when asked: the stop ladder had to signal it.

    Raised by the stop of a `ServiceController` (and so of its container,
    and reported by the stop of a `ServicesManager`) once the process has
    ended all the same: the stop is not a clean one.

    Attributes:
        service: the service's name.
        signal: the last rung used, `"SIGTERM"` or `"SIGKILL"`.
        waited: the seconds given to the rung before it (the close request's
            `close_timeout`, or SIGTERM's `term_timeout`).
        before: what was sent before it, in words (a `command` service's stop
            signal); by default the rung below `signal`.
        state: the service's state, as its process last reported it, when
            the first signal was sent (`"STARTED"`: it never began to stop;
            `"STOPPING"`: its raw stop hung), or None if it never said.
    """

    def __init__(
        self,
        service: str,
        signal: str,
        waited: float,
        state: str | None = None,
        *,
        before: str | None = None,
    ) -> None:
        if before is None:
            before = "the close request" if signal == "SIGTERM" else "SIGTERM"
        then = f" (its service was {state} then)" if state is not None else ""
        super().__init__(f"{service} did not end within {waited:g}s of {before}: {signal}{then}")
        self.service = service
        self.signal = signal
        self.waited = waited
        self.state = state
        self.before = before


class HealthCheckFailed(ClusterError):
    """A service's health check failed `failures` times in a row: the reason it
    is stopped with (a failure: its restart policy and the cascade apply).

    Attributes:
        service: the service's name.
        failures: the checks that failed in a row.
        problem: what the last one found, in words.
    """

    def __init__(self, service: str, failures: int, problem: str) -> None:
        super().__init__(f"{service}: its health check failed {failures} times in a row: {problem}")
        self.service = service
        self.failures = failures
        self.problem = problem

    def __reduce__(self) -> tuple[type[HealthCheckFailed], tuple[str, int, str]]:
        return type(self), (self.service, self.failures, self.problem)


class ServiceExited(ClusterError):
    """A service stopped on its own and its restart policy does not bring it back.

    The reason a `ServicesManager` with `on_service_exit="stop"` stops
    everything with, and what `ServicesManager.failed` records.

    Attributes:
        service: the service that ended.
        reason: why it stopped (None: it stopped cleanly, on its own).
    """

    def __init__(self, service: str, reason: BaseException | None) -> None:
        how = f"failed ({reason!r})" if reason is not None else "stopped on its own"
        super().__init__(f"{service} {how} and is not restarted")
        self.service = service
        self.reason = reason


class ServiceDefinitionError(ClusterError, ValueError):
    """A description of services was refused before anything started: a bad
    name, a duplicate, an unknown dependency, a bad entry or permission.

    Attributes:
        service: the name of the offending service (None if not about one).
    """

    def __init__(self, message: str, service: str | None = None) -> None:
        super().__init__(message)
        self.service = service


class DependencyCycleError(ServiceDefinitionError):
    """The dependencies form a cycle.

    Attributes:
        cycle: the names along the cycle, the first repeated at the end
            (`("a", "b", "a")`: a depends on b, which depends on a).
    """

    def __init__(self, cycle: tuple[str, ...]) -> None:
        super().__init__(f"dependency cycle: {' -> '.join(cycle)}", cycle[0])
        self.cycle = cycle


class DependencyStopped(ClusterError):
    """The reason a service was stopped by the cascade: a service it depends
    on stopped (crashed, exited, or was stopped).

    Attributes:
        service: the service stopped by the cascade.
        dependency: its dependency that stopped.
        origin: where the cascade began (the service that failed first).
        reason: why `origin` stopped (None: it was stopped cleanly).
    """

    def __init__(
        self, service: str, dependency: str, origin: str, reason: BaseException | None
    ) -> None:
        why = f"failed: {reason!r}" if reason is not None else "stopped"
        via = f" (through {dependency})" if dependency != origin else ""
        super().__init__(f"{service} stopped because {origin} {why}{via}")
        self.service = service
        self.dependency = dependency
        self.origin = origin
        self.reason = reason


class EscalationError(ClusterError):
    """A service failed more often than its restart policy allows: the whole
    system stops with this reason.

    Attributes:
        service: the service that kept failing.
        failures: how many times it failed within the policy's period.
        last: its last failure.
    """

    def __init__(self, service: str, failures: int, period: float, last: BaseException | None):
        super().__init__(f"{service} failed {failures} times within {period:g}s; last: {last!r}")
        self.service = service
        self.failures = failures
        self.last = last


class RequestError(ClusterError):
    """A request between services could not be answered; raised to the caller.

    `RemoteError` (the callee raised) is the other way a request fails.

    Attributes:
        service: the service that was called.
        method: the handler that was asked for.
    """

    def __init__(self, message: str, service: str = "", method: str = "") -> None:
        super().__init__(message)
        self.service = service
        self.method = method


class RequestRefused(RequestError, PermissionError):
    """The caller may not do this: the callee is not among its declared
    dependencies, or it may not create services (or a retry was refused: the
    handler is not idempotent)."""


class ServiceUnavailable(RequestError):
    """The callee is not STARTED (it is starting, stopping, stopped, or does not
    run), or it stopped before it answered. Raised at once: it is not waited for."""


class HandlerNotFound(RequestError, LookupError):
    """The callee has no handler of that name (see `startable.cluster.handler`)."""


class MalformedRequest(RequestError, ValueError):
    """The router (or the callee) refused a message that breaks the data
    plane's contract: a deadline that is NaN, infinite, negative or longer
    than `startable.cluster.MAX_DEADLINE`, a bad id, name or topic.

    `ServiceClient` checks what it sends, so only a peer that bypasses it
    (or speaks another version of the contract) meets this."""


class RequestTimeout(RequestError, TimeoutError):
    """The request's deadline passed before an answer came."""


# Errors cross processes by name (`ErrorInfo.type`): each is named by the
# public module that exports it, whether or not anyone has looked it up there.
for _error in list(globals().values()):
    if isinstance(_error, type) and _error.__module__ == __name__:
        _error.__module__ = "startable.cluster"
del _error
