"""Supervision: what happens to a member that stopped on its own.

A `Supervisor` hears every stop that was not asked for (`report`) and
decides, by the member's `RestartPolicy`: restart it after a backoff, leave
it stopped (and remember it as failed), stop the owner because of it, or
escalate (stop the owner with an `EscalationError`) when it failed more
often than its policy allows. It also keeps the cascade's bookkeeping:
which members stopped because another did (`cascaded`), to be started
again once that one is back (`take_cascaded`).

The `ServicesManager` supervises its nodes with one; a pool of replicas
supervises its replicas with another. A supervisor decides; its owner acts
(it is handed `restart`, and it is the lifecycle that is stopped on
escalation).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, Literal, Protocol, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ... import State, of
from .._errors import DependencyStopped, EscalationError, ServiceExited
from .services import RestartPolicy

STARTING, STARTED, STOPPED = State.STARTING, State.STARTED, State.STOPPED
#: What a supervisor tells its owner, besides acting: `"restarting"` (after
#: the delay given) or `"escalated"`.
Decision = Literal["restarting", "escalated"]


def uptime(member: object, started_at: float | None) -> float | None:
    """Seconds since `member` (a lifecycle) was last STARTED at `started_at`
    (`time.monotonic()`); None when it is not STARTED."""
    if started_at is None or of(member).state is not STARTED:
        return None
    return time.monotonic() - started_at


class Member(Protocol):
    """What a supervisor needs of a member (a `ServiceNode`, a replica): it
    is a lifecycle, with these."""

    name: str
    #: Stopped on purpose: never restarted.
    held: bool
    #: How many times it was restarted.
    restarts: int
    #: Why it last stopped on its own (what its supervisor last heard).
    last_error: BaseException | None
    #: When it failed within its policy's window, monotonic, oldest first.
    failures: deque[float]

    @property
    def restart_policy(self) -> RestartPolicy: ...


M = TypeVar("M", bound=Member)


class Supervisor(Generic[M]):
    """Restart decisions for the members of one owner.

    Args:
        owner: the lifecycle whose tasks run the decisions and restarts,
            and which is stopped on escalation (the manager, a pool).
        restart: starts a member again (and what its cascade stopped).
        is_member: whether a member still belongs to the owner (a
            destroyed one is never restarted).
        notify: told of each decision: the member's name, the decision, and
            for `"restarting"` the delay.
        on_exit: what a member that stopped for good means: `"continue"`
            (kept in `failed` when it failed) or `"stop"` (the owner stops).

    Attributes:
        failed: the members that failed and that nothing restarts, by name,
            with why; the owner removes one when it is STARTED again.
    """

    def __init__(
        self,
        owner: object,
        *,
        restart: Callable[[M], Awaitable[None]],
        is_member: Callable[[M], bool],
        notify: Callable[[str, Decision, float | None], None],
        on_exit: Literal["continue", "stop"] = "continue",
    ) -> None:
        self.owner = owner
        self.on_exit = on_exit
        self.failed: dict[str, ServiceExited] = {}
        self._restart_member = restart
        self._is_member = is_member
        self._notify = notify
        self._cascaded: dict[str, set[M]] = {}
        self._reports: MemoryObjectSendStream[tuple[M, BaseException | None]] | None = None

    # -- opening and closing (from the owner's raw start and raw stop) ------------

    def open(self) -> None:
        """Begin hearing reports, in a task of the owner's lifecycle."""
        self._cascaded.clear()
        send, receive = anyio.create_memory_object_stream[tuple[M, BaseException | None]](math.inf)
        self._reports = send
        of(self.owner).start_soon(self._decide_each, receive)

    def close(self) -> None:
        """Hear nothing more: the owner stops, so stops are not failures."""
        if self._reports is not None:
            self._reports.close()
            self._reports = None

    # -- hearing --------------------------------------------------------------------

    def report(self, member: M, reason: BaseException | None) -> None:
        """`member` stopped, or failed to start, with `reason`; it never waits."""
        if not member.held and self._reports is not None:
            self._reports.send_nowait((member, reason))

    def hook(self, member: M) -> _Report[M]:
        """The stop hook to start `member` with: it calls `report` for it."""
        return _Report(self, member)

    def cascaded(self, origin: str, members: set[M]) -> None:
        """`members` stopped (or could not start) because `origin` did: they come
        back when it does."""
        self._cascaded.setdefault(origin, set()).update(members)

    def take_cascaded(self, origin: str) -> set[M]:
        """The members waiting for `origin` to come back, forgotten here."""
        return self._cascaded.pop(origin, set())

    # -- deciding -------------------------------------------------------------------

    async def _decide_each(
        self, reports: MemoryObjectReceiveStream[tuple[M, BaseException | None]]
    ) -> None:
        with reports:
            async for member, reason in reports:
                self._decide(member, reason)

    def _decide(self, member: M, reason: BaseException | None) -> None:
        """Restart, wait for a cascade's origin, leave stopped, or escalate."""
        owner = of(self.owner)
        if owner.state not in (STARTING, STARTED) or member.held or not self._is_member(member):
            return
        if isinstance(reason, DependencyStopped):  # back when its origin is
            self.cascaded(reason.origin, {member})
            return
        member.last_error = reason
        policy = member.restart_policy
        if policy.mode == "never" or (policy.mode == "on-failure" and reason is None):
            self._exited(member, reason)
            return
        now = time.monotonic()
        window = member.failures
        while window and now - window[0] > policy.period:
            window.popleft()
        if len(window) >= policy.intensity:
            self._notify(member.name, "escalated", None)
            owner.stop_nowait(EscalationError(member.name, len(window) + 1, policy.period, reason))
            return
        delay = policy.delay(len(window))
        window.append(now)
        self._notify(member.name, "restarting", delay)
        owner.start_soon(self._restart, member, delay)

    def _exited(self, member: M, reason: BaseException | None) -> None:
        """`member` stopped on its own for good: keep it, or stop the owner."""
        exited = ServiceExited(member.name, reason)
        if reason is not None:
            self.failed[member.name] = exited
        if self.on_exit == "stop":
            of(self.owner).stop_nowait(exited if reason is not None else None)

    async def _restart(self, member: M, delay: float) -> None:
        await of(member).wait_state(STOPPED)
        await anyio.sleep(delay)
        if member.held or not self._is_member(member):
            return
        member.restarts += 1
        await self._restart_member(member)


class _Report(Generic[M]):
    """A member's stop hook: one slotted object, not a partial of a bound method
    (with its args tuple): a manager of many services holds one per service,
    and each is an object the cyclic garbage collector scans."""

    __slots__ = ("member", "supervisor")

    def __init__(self, supervisor: Supervisor[M], member: M) -> None:
        self.supervisor = supervisor
        self.member = member

    def __call__(self, reason: BaseException | None) -> None:
        self.supervisor.report(self.member, reason)
