"""What the router asks before it moves a message: the directory, and the endpoints behind a name.

The router (`router.py`) knows how to move messages; a `Directory` knows
the cluster: which services exist, whether one is reachable now, who may
call whom, who may create services, and the endpoints that reach each
name. A name may have several endpoints (the replicas of a pool; later,
instances on other hosts); `pick` chooses among them by a `Pick` policy.

The manager's directory (`startable.cluster._system.directory`) answers
from its nodes; a registry shared between hosts implements the same
protocol. Nothing here imports the layers above the data plane.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Literal, Protocol, TypeVar

from .contract import AnyMessage, Configure, Create, Reply

#: Why a request may not go where it asks: the kind of the reply the caller
#: gets (`"refused"`: it may never; `"unavailable"`: not now) and a message.
Refusal = tuple[Literal["refused", "unavailable"], str]


class Endpoint(Hashable, Protocol):
    """One way to reach one client: the router hands it messages.

    `put` never waits. It returns False when the endpoint cannot take the
    message now (its queue is full, or it is gone); the router then fails a
    request at once and counts a dropped event.
    """

    def put(self, message: AnyMessage) -> bool: ...


class Directory(Protocol):
    """Who exists, who may call whom, and the endpoints behind each name.

    Every method is synchronous and must not block: the router calls them on
    every message. Only `create` and `configure` do work that takes time, in
    a task of the directory's own, and answer through a callback.
    """

    @property
    def name(self) -> str:
        """The cluster's name, as messages to services say it."""
        ...

    def call_refusal(self, caller: str | None, callee: str) -> Refusal | None:
        """Why `caller` (None: the operator) may not call `callee` now; None: it may.

        The endpoints are not its business: a callee that may be called but
        has no endpoint is the router's to refuse.
        """
        ...

    def create_refusal(self, source: str) -> str | None:
        """Why service `source` may not create a service now; None: it may.

        (The operator, which is no service, is refused by the router.)"""
        ...

    def create(self, parent: str, create: Create, answer: Callable[[Reply], None]) -> None:
        """Create and start the child `create` asks for; call `answer` once with the outcome.

        Called only when `create_refusal(parent)` said it may. It returns at
        once: the work is done in a task the directory owns, and `answer` is
        not called if that task is cancelled (its owner is stopping).
        """
        ...

    def configure(
        self, source: str | None, service: str, message: Configure, answer: Callable[[Reply], None]
    ) -> None:
        """Do what `message`, from `source` (None: the operator), asks of `service`'s
        configuration; call `answer` once.

        The router has checked that `source` may (a service asks for its own;
        the operator for any). Like `create`, it returns at once and
        does the work in a task of its own.
        """
        ...

    def register(self, name: str, endpoint: Endpoint) -> None:
        """`endpoint` reaches (one instance of) `name` from now on."""
        ...

    def unregister(self, name: str, endpoint: Endpoint) -> None:
        """`endpoint` no longer reaches `name` (unknown ones are ignored)."""
        ...

    def endpoints(self, name: str) -> Sequence[Endpoint]:
        """The endpoints that reach `name` now, oldest first (empty: none)."""
        ...


class Pick(enum.Enum):
    """How a message for a name is given to its endpoints."""

    #: One endpoint: the one with the fewest requests waiting for its answer
    #: (the oldest among equals), so a slow instance gets less work.
    LEAST_OUTSTANDING = "least outstanding"
    #: One endpoint, chosen at random.
    RANDOM = "random"
    #: Every endpoint (for messages that want no single answer).
    ALL = "all"


E = TypeVar("E", bound=Hashable)


def pick(
    endpoints: Sequence[E],
    policy: Pick,
    outstanding: Mapping[E, int],
    *,
    chance: Callable[[Sequence[E]], E] = random.choice,
) -> list[E]:
    """The endpoints among `endpoints` that `policy` sends a message to.

    `outstanding` counts the requests each endpoint owes an answer to
    (missing: none). Empty `endpoints` give an empty list, whatever the
    policy.
    """
    if not endpoints:
        return []
    if policy is Pick.ALL:
        return list(endpoints)
    if policy is Pick.RANDOM:
        return [chance(endpoints)]
    return [min(endpoints, key=lambda endpoint: outstanding.get(endpoint, 0))]
