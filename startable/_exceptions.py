"""Every error the library raises derives from `StartableError`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._lifecycle import State


class StartableError(Exception):
    """Root of every error raised by `startable` itself.

    Errors raised by your own raw start, raw stop or background tasks are
    passed through unchanged; they are not wrapped in a `StartableError`.
    """


class StateError(StartableError, RuntimeError):
    """An operation was asked for in a state that does not allow it.

    Raised by a method decorated with `startable.assert_state` when it is
    called in another state (its body does not run), by
    `startable.Startable.start` while the object is STOPPING, and by
    calls that would wait for themselves (for example awaiting
    `startable.of(self).stop()` from inside the object's own raw stop).

    Attributes:
        actual: the state the object was in.
        expected: the states in which the operation is allowed.
    """

    actual: State
    expected: frozenset[State]

    def __init__(self, message: str, *, actual: State, expected: Iterable[State]) -> None:
        super().__init__(message)
        self.actual = actual
        self.expected = frozenset(expected)


class DefinitionError(StartableError, TypeError):
    """A decorator was misused; raised while the class is being defined.

    Examples: two raw starts in one class, a method marked both raw start and
    raw stop, a guard on a raw start, a decorator on a module-level function.
    The message names `Class.method`.

    On Python 3.11 the interpreter wraps errors raised while a class body is
    being finalised in a `RuntimeError`; this error is then its `__cause__`.
    """


class NoOwnerError(StartableError, RuntimeError):
    """A lifecycle was started with no owner to hold its tasks.

    Every cycle belongs to an owner: the service whose raw start (or
    background task) started it, or an `async with` block of
    `startable.running` or `startable.open_owner`. Raised by
    `startable.Startable.start` when none is active.
    """


class AbortedError(StartableError):
    """The start or stop a caller was waiting for was interrupted.

    Raised to callers that *joined* a start or stop when the task running it
    was cancelled. The service still ends STOPPED. It is also the reason given
    to raw stop when a start is abandoned by cancellation, and what a method
    guarded with `assert_state(drain=...)` raises when a stop cut it short
    (its drain timeout passed, or the stop was forced).

    Attributes:
        why: why it was interrupted, as the cancellation said it: the reason
            given to `CancelScope.cancel(reason)` (`startable run` gives
            `"SIGINT received"`, `"the start timeout of 5s passed"`...), `"a
            deadline passed"` for a scope's deadline, else `"cancelled"`.
    """

    why: str

    def __init__(self, message: str, why: str = "cancelled") -> None:
        super().__init__(message)
        self.why = why


class StoppedError(StartableError):
    """A service stopped on its own, without a reason, while it was in use.

    Raised by `startable.running` when the service stops while the body
    runs and no error was given to `stop()`; with a reason, that reason is
    raised instead.

    It is also the reason of the stop of a lifecycle that several owners hold
    when one of them stops it (from its own stop, or by ending) while another
    still holds it: the others, stopping through their hooks, hear who
    stopped it. Its `__cause__` is the first holder's own stop reason, if any.
    """
