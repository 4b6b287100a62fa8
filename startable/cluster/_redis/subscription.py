"""A pub/sub subscription that comes back by itself: `Subscription`.

coredis's subscription iterator was measured *ending without an error* on
trio when Redis restarts (on asyncio it reconnected by itself), and a
subscription can also be dropped on the server's side while the client
sees nothing. So this one is supervised, by two rules:

- whenever the iterator ends or raises, it subscribes again, after a
  backoff (50 ms, doubling to 1 s) that a success resets;
- every `probe_interval` it publishes a probe to its own first channel; a
  probe that is not back within `probe_timeout` means the subscription is
  deaf, and it subscribes again.

So it is back within about `probe_interval + probe_timeout` of Redis being
back, whatever failed. Probes never reach `on_message`: they are told apart
by a random prefix of this subscription's, which no other sender knows.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

import anyio
import attrs

from ... import State, as_raw_start, as_raw_stop, of
from .._errors import ClusterError

if TYPE_CHECKING:
    import coredis

_FIRST_BACKOFF: Final = 0.05
_LAST_BACKOFF: Final = 1.0


@attrs.define
class SubscriptionStatistics:
    """What a subscription has seen."""

    #: Messages handed to `on_message`.
    messages: int = 0
    #: How many times it subscribed again (after the first).
    resubscribed: int = 0
    #: Probes that did not come back in time.
    deaf: int = 0
    #: The last reason it subscribed again.
    last_loss: str | None = None


class Subscription:
    """Subscribed to `channels` while STARTED, whatever happens to the connection.

    Args:
        client: a coredis client (bytes responses).
        channels: the channels (one at least; the first carries the probes).
        on_message: called with (channel, data) for each message, in order.
            It must not block; what it raises stops the subscription.
        probe_interval, probe_timeout: seconds between probes, and how long
            one may take to come back.
        subscribe_timeout: seconds the first subscription may take (the
            start fails past it).
        on_loss: called with why, each time a subscription that worked is
            lost (before it subscribes again): what was sent through it
            may be lost. It must not block.
        on_back: called each time it is subscribed again after a loss (what
            was published meanwhile did not come). It must not block.

    Its start returns once subscribed; `subscribed` is set while it is (and
    cleared while it subscribes again).
    """

    def __init__(
        self,
        client: coredis.Redis[bytes],
        channels: Sequence[str],
        on_message: Callable[[str, bytes], object],
        *,
        probe_interval: float = 1.0,
        probe_timeout: float = 1.0,
        subscribe_timeout: float = 5.0,
        on_loss: Callable[[str], object] | None = None,
        on_back: Callable[[], object] | None = None,
    ) -> None:
        if not channels:
            raise ValueError("a subscription has one channel at least")
        for name, value in (("probe_interval", probe_interval), ("probe_timeout", probe_timeout)):
            if not (math.isfinite(value) and 0.01 <= value <= 3600):
                raise ValueError(f"{name} is from 0.01 to 3600 seconds, not {value!r}")
        self.client = client
        self.channels = tuple(channels)
        self.on_message = on_message
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.subscribe_timeout = subscribe_timeout
        self.on_loss = on_loss
        self.on_back = on_back
        self.statistics = SubscriptionStatistics()
        self.subscribed = anyio.Event()
        self._probe = b"startable-probe:" + secrets.token_hex(16).encode() + b":"
        self._probes = 0
        self._echoed = -1

    def __repr__(self) -> str:
        return f"<Subscription {', '.join(self.channels)}: {of(self).state.name}>"

    @as_raw_start
    async def _start(self) -> None:
        first = anyio.Event()
        of(self).start_soon(self._supervise, first)
        with anyio.move_on_after(self.subscribe_timeout):
            await first.wait()
        if not first.is_set():
            raise ClusterError(
                f"could not subscribe to {self.channels[0]!r} within {self.subscribe_timeout:g}s"
                + (f": {self.statistics.last_loss}" if self.statistics.last_loss else "")
            )

    @as_raw_stop
    async def _stop(self) -> None:
        self.subscribed = anyio.Event()

    async def _supervise(self, first: anyio.Event) -> None:
        backoff = _FIRST_BACKOFF
        while of(self).state in (State.STARTING, State.STARTED):
            try:
                await self._listen(first)
                loss = "the subscription ended"
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:  # a lost connection, Redis refusing, deaf: subscribe again
                if _ours(exc):
                    raise  # on_message raised: the user's error, not the connection's
                loss = f"{type(exc).__name__}: {exc}"
            if self.subscribed.is_set():
                self.subscribed = anyio.Event()
                backoff = _FIRST_BACKOFF  # it had worked: try again soon
                if self.on_loss is not None:
                    self.on_loss(loss)
            self.statistics.last_loss = loss
            self.statistics.resubscribed += first.is_set()
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, _LAST_BACKOFF)

    async def _listen(self, first: anyio.Event) -> None:
        async with (
            self.client.pubsub(channels=self.channels, ignore_subscribe_messages=True) as pubsub,
            anyio.create_task_group() as group,
        ):
            self._echoed = self._probes  # (what was in flight before is not awaited)
            self.subscribed.set()
            if first.is_set() and self.on_back is not None:
                self.on_back()
            first.set()
            group.start_soon(self._probing)
            async for message in pubsub:
                data = message.get("data")
                channel = message.get("channel")
                if not isinstance(data, bytes) or not isinstance(channel, bytes):
                    continue  # not a message (a subscribe or pong reply)
                if data.startswith(self._probe):
                    self._echoed = max(self._echoed, _number(data[len(self._probe) :]))
                    continue
                self.statistics.messages += 1
                try:
                    self.on_message(channel.decode(errors="replace"), data)
                except Exception as exc:
                    raise _UserError(exc) from exc
            group.cancel_scope.cancel()

    async def _probing(self) -> None:
        while True:
            await anyio.sleep(self.probe_interval)
            self._probes += 1
            number = self._probes
            await self.client.publish(self.channels[0], self._probe + str(number).encode())
            with anyio.move_on_after(self.probe_timeout):
                while self._echoed < number:  # noqa: ASYNC110 - set by the reader, no event per probe
                    await anyio.sleep(self.probe_timeout / 20)
            if self._echoed < number:
                self.statistics.deaf += 1
                raise _Deaf(f"probe {number} did not come back within {self.probe_timeout:g}s")


class _Deaf(ClusterError):
    """The subscription no longer hears its own channel."""


class _UserError(ClusterError):
    """`on_message` raised: the subscription stops with it."""


def _ours(exc: BaseException) -> bool:
    return isinstance(exc, _UserError) or (
        isinstance(exc, BaseExceptionGroup) and any(_ours(e) for e in exc.exceptions)
    )


def _number(text: bytes) -> int:
    try:
        return int(text)
    except ValueError:
        return -1
