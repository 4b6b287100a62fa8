"""Links: how a client reaches its router, whatever carries the messages.

The contract has two sides. A `Link` is what a `ServiceClient` sends
through; a `Receiver` is what a link delivers to: the client's public
`deliver` (one message from the router) and `link_closed` (the link ended
under it). A transport is a new `Link`; it never reaches into the client.
"""

from __future__ import annotations

from typing import Any, Protocol

from ... import StateError, of
from .._errors import FrameError, PortError, ServiceUnavailable
from .._ipc.port import ConnectionPort
from .contract import AnyMessage


class Receiver(Protocol):
    """What a link delivers to: a `ServiceClient`."""

    def deliver(self, message: AnyMessage) -> None:
        """Take one message from the router; it never waits and never raises."""
        ...

    def link_closed(self, reason: BaseException | None) -> None:
        """The link ended while the client ran (`reason`: why, if known)."""
        ...


class Link(Protocol):
    """How a client reaches its router.

    `open` is awaited in the client's raw start and may start background
    work in the client's lifecycle (`startable.of(receiver).start_soon`);
    `close` is awaited in its raw stop. `send` raises `ServiceUnavailable`
    when the router cannot be reached, `ValueError` when the message is too
    large for the link, and `TypeError` when it cannot be encoded.
    """

    #: Whether the link calls `deliver` from a task of its own (never from a
    #: sender's task): the client may then run a plain handler right there.
    own_task: bool

    async def open(self, receiver: Receiver) -> None: ...

    async def send(self, message: AnyMessage) -> None: ...

    def post(self, message: AnyMessage) -> bool:
        """Send `message` now if that needs no waiting: whether it did (if not,
        nothing is sent: `send` it). It raises as `send` does."""
        ...

    async def close(self) -> None: ...


class PortLink:
    """A link over a `ConnectionPort` (a container's data socket); the router
    reaches the container's client through one too."""

    own_task = True  # (`_deliver`)

    def __init__(self, port: ConnectionPort[Any]) -> None:
        self.port = port

    async def open(self, receiver: Receiver) -> None:
        await of(self.port).start()
        of(receiver).start_soon(self._deliver, receiver)

    async def _deliver(self, receiver: Receiver) -> None:
        async for message in self.port:  # (a broken frame raises: the client stops with it)
            receiver.deliver(message)
        receiver.link_closed(of(self.port).statistics().stop_reason)

    async def send(self, message: AnyMessage) -> None:
        """Send `message`; `ServiceUnavailable` if the port is closed or closing."""
        try:
            await self.port.send(message)
        except (FrameError, PortError, StateError) as exc:
            raise self._translated(exc) from None

    def post(self, message: AnyMessage) -> bool:
        """Send `message` if the port can without waiting (`ConnectionPort.send_nowait`)."""
        try:
            return self.port.send_nowait(message)
        except (FrameError, PortError, StateError) as exc:
            raise self._translated(exc) from None

    def _translated(self, error: Exception) -> Exception:
        """What a send's failure means to the client."""
        if isinstance(error, FrameError):  # too large: not sent, the port is fine
            return ValueError(str(error))
        return ServiceUnavailable(f"{self.port.name} is closed: {error}")

    async def close(self) -> None:
        await of(self.port).stop()
