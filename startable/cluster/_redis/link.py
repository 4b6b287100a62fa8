"""The link between hosts: one host's router reaching the others through Redis.

A `RedisLink` belongs to one manager (one *host*: its id is the link's
`host_id`). It is one more transport behind the router, as a container's
data socket is:

- **Out.** Each live instance of a service that runs elsewhere is a
  `RemoteEndpoint`, attached to the router under the service's name, so the
  router picks among them (least outstanding first) as it does among a
  pool's replicas. What the router gives one is sealed in an envelope and
  published to that host's inbox. `PUBLISH` says how many got it: 0 means the
  host is gone, and the request goes to another instance at once
  (`Router.redirect`), as it does when that host answers that it does not
  serve the service (now).
- **In.** Calls and replies come on the host's inbox channel, events on the
  cluster's event channel. Every envelope is opened (its tag, then every
  field), checked against replays, and its body decoded into the data
  plane's own messages; a sender must have declared the service it sends as
  (`Registry.declare`). A call is handed to the router from a *foreign*
  endpoint standing for its caller; the router checks it as any other.
- **The registry.** Each service of this host is registered once STARTED and
  leaves it when it begins stopping; beats every `ttl / 3` carry its load;
  the instances of watched services are read again on each beat, and at
  once after an undelivered call.

The link never waits on the router's behalf: `put` queues, one task
publishes (a batch of what is queued in one pipeline), one task reads.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import secrets
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import anyio
import attrs
import msgspec
from msgspec.structs import replace

from ... import State, as_raw_start, as_raw_stop, of
from .._data.contract import (
    AnyMessage,
    Call,
    ConfigChange,
    Event,
    Reply,
    change_decoder,
    config_change_problem,
)
from .._data.router import GRACE, Router
from .._errors import ClusterError
from .._ipc.messages import ErrorInfo
from .._names import now_and_then
from .envelope import EnvelopeRefused, Replays, envelope_key, open_envelope, seal
from .registry import Instance, Keys, Registry
from .subscription import Subscription

if TYPE_CHECKING:
    import coredis

logger = logging.getLogger("startable.cluster")

#: The value of an `"unavailable"` reply that means "nobody here ran it": the
#: caller's host may send the call to another instance.
UNSERVED: Final = "unserved"
#: Envelopes published in one pipeline at most.
MAX_BATCH: Final = 256
#: Envelopes waiting to be read at most; past that, new ones are dropped (and counted).
MAX_INCOMING: Final = 16_384
#: The number of the first instance of a service on another host, among its
#: instances here (replicas are numbered below `MAX_REPLICAS`, 256).
FIRST_REMOTE: Final = 256
#: Foreign callers (a service on a host) remembered at once.
MAX_PEERS: Final = 4096
_decoder: Final = msgspec.msgpack.Decoder(AnyMessage)


def new_host_id(hostname: str | None = None) -> str:
    """A host id nobody else has: `<hostname>.<pid>.<random>` (a valid instance id)."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", hostname or socket.gethostname())[:40].strip("-")
    return f"{name or 'host'}.{os.getpid()}.{secrets.token_hex(4)}"


@attrs.define
class LinkStatistics:
    """What a link has seen since it was made."""

    #: Envelopes published.
    sent: int = 0
    #: Envelopes read (before any check).
    received: int = 0
    #: Envelopes refused, by the check they failed (`EnvelopeRefused.reason`).
    refused: dict[str, int] = attrs.field(factory=dict)
    #: Calls that `PUBLISH` gave to nobody (each sent to another instance, or failed).
    undelivered: int = 0
    #: Calls a host answered it does not serve (each sent to another instance, or failed).
    unserved: int = 0
    #: Calls sent again to another instance (after an undelivered or unserved one).
    failovers: int = 0
    #: Envelopes dropped because MAX_INCOMING waited to be read already.
    dropped: int = 0
    #: Calls that came past their deadline, and replies that came after theirs.
    late: int = 0
    #: Times the subscription was lost (calls in flight then fail).
    lost: int = 0


class RemoteEndpoint:
    """One live instance of a service on another host, as this host's router sees it."""

    __slots__ = ("expires_ms", "host_id", "instance", "link", "number", "service")

    def __init__(self, link: RedisLink, instance: Instance, number: int) -> None:
        self.link = link
        self.instance = instance.id
        self.expires_ms = instance.expires_ms
        #: Its number among the service's instances here (a request to all is
        #: answered by that number): `FIRST_REMOTE` and up, past any replica's.
        self.number = number
        self.service = instance.service
        self.host_id = instance.id.rpartition(":")[0]

    def __repr__(self) -> str:
        return f"<RemoteEndpoint {self.instance}>"

    def put(self, message: AnyMessage) -> bool:
        if isinstance(message, Call):  # (nothing else comes: it subscribes to nothing)
            return self.link._call_out(self, message)
        return True


class _Peer:
    """Callers of this host: one service (or the operator) of another host,
    attached to the router as a foreign endpoint."""

    __slots__ = ("host_id", "ids", "link", "next_id", "service")

    def __init__(self, link: RedisLink, host_id: str, service: str) -> None:
        self.link = link
        self.host_id = host_id
        self.service = service
        self.next_id = itertools.count(1)
        #: Our id of each call in flight -> (the caller's id, the callee, when to forget it).
        self.ids: dict[int, tuple[int, str, float]] = {}

    def put(self, message: AnyMessage) -> bool:
        if isinstance(message, Reply):
            self.link._reply_out(self, message)
        return True


@attrs.define
class _Sent:
    endpoint: RemoteEndpoint
    call: Call
    expires: float


class _View:
    """The live instances of one service that runs elsewhere, and who watches them."""

    def __init__(self) -> None:
        self.endpoints: dict[str, RemoteEndpoint] = {}
        self.watchers: list[Callable[[], object]] = []


class RedisLink:
    """One host's link to the other hosts of a cluster, through Redis.

    Args:
        url: the Redis URL (`redis://`, `rediss://` for TLS, with a password
            if the server wants one).
        cluster: the cluster's name (the key prefix, and sealed in every envelope).
        key: the cluster key (32 bytes or more); every host of the cluster has it.
        router: this host's router.
        host_id: this host's id (`new_host_id()` when None).
        ttl: seconds an instance stays live without a beat.
        probe_interval: seconds between the subscription's probes of itself.

    While STARTED: `serve(name)` registers a local service, `withdraw(name)`
    takes it out; `watch(name, callback)` keeps the live instances of a
    service elsewhere attached to the router (`instances(name)`), calling
    `callback` when they change.
    """

    def __init__(
        self,
        url: str,
        *,
        cluster: str,
        key: bytes,
        router: Router,
        host_id: str | None = None,
        ttl: float = 3.0,
        probe_interval: float = 1.0,
    ) -> None:
        self.url = url
        self.keys = Keys(cluster)
        self.cluster = cluster
        self.router = router
        self.host_id = host_id or new_host_id()
        self.ttl = ttl
        self.probe_interval = probe_interval
        self.statistics = LinkStatistics()
        #: The services this host runs or may start (what it declares).
        self.runs: set[str] = set()
        #: The names that foreign callers are attached under now.
        self.callers: set[str] = set()
        self.client: coredis.Redis[bytes] | None = None
        self.registry: Registry | None = None
        self._cluster_key = key
        self._key = envelope_key(key)  # (refuses a short key before anything starts)
        self.inbox = self.keys.inbox(self.host_id)
        self._served: set[str] = set()
        self._views: dict[str, _View] = {}
        #: Instances dropped from the views (no host got a call, or it did not
        #: serve it), with the expiry the registry gave them then: one stays
        #: out until the registry shows a later one (it beat: it is alive).
        self._unreachable: dict[str, int] = {}
        self._calls: dict[int, _Sent] = {}
        self._peers: OrderedDict[tuple[str, str], _Peer] = OrderedDict()
        self._declared: dict[str, tuple[float, frozenset[str] | None]] = {}
        self._replays = Replays()
        self._seq = itertools.count()
        self._outgoing: deque[tuple[str, bytes, int]] = deque()
        self._failures: deque[tuple[int, str]] = deque()
        self._wake = anyio.Event()
        self._incoming: deque[tuple[str, bytes]] = deque()
        self._arrived = anyio.Event()
        self._registrations: deque[tuple[str, bool]] = deque()
        self._registered = anyio.Event()
        self._subscription: Subscription | None = None
        self._beat_now = anyio.Event()
        self._warned: dict[str, int] = {}
        self._said: frozenset[str] | None = None  # what was last declared
        #: Called with each configuration change announced in the cluster
        #: (this host's too), checked, in the order Redis stored them.
        self.on_config: Callable[[ConfigChange], object] | None = None
        #: Called when changes may have been missed: the subscription is back
        #: after a loss, or a change was dropped (too much waiting to be read).
        self.on_config_missed: Callable[[], object] | None = None

    def __repr__(self) -> str:
        return f"<RedisLink {self.host_id} of {self.cluster}: {of(self).state.name}>"

    # -- lifecycle ------------------------------------------------------------------

    @as_raw_start
    async def _start(self) -> None:
        import coredis

        client: coredis.Redis[bytes] = coredis.Redis.from_url(self.url)
        self.client = await of(self).start_task(self._hold, client)
        self.registry = registry = Registry(client, self.cluster, self._cluster_key, ttl=self.ttl)
        try:
            with anyio.fail_after(5):
                await client.ping()
                await registry.declare(self.host_id, sorted(self.runs))
                self._said = frozenset(self.runs)
        except (TimeoutError, OSError, coredis.exceptions.RedisError) as exc:
            raise ClusterError(f"cannot reach Redis at {_safe(self.url)}: {exc}") from None
        channels = [self.inbox, self.keys.events, self.keys.config_changes]
        self._subscription = Subscription(
            client,
            channels,
            self._arrive,
            on_loss=self._lost,
            on_back=self._config_missed,
            probe_interval=self.probe_interval,
        )
        await of(self._subscription).start()
        of(self).start_soon(self._pump)
        of(self).start_soon(self._read)
        of(self).start_soon(self._register)
        of(self).start_soon(self._beat)
        self.router.relay = self._relay

    @as_raw_stop
    async def _stop(self) -> None:
        if self.router.relay == self._relay:
            self.router.relay = None
        registry = self.registry
        served, self._served = self._served, set()
        if registry is not None and served:
            with anyio.move_on_after(1.0):  # leave first; a host that cannot is swept later
                for name in served:
                    try:
                        await registry.leave(self._instance(name), name)
                    except Exception as exc:
                        logger.warning("%s could not leave the registry: %s", name, exc)
                        break
        for sent in list(self._calls.values()):
            self.router.fail(sent.call.id, "unavailable", "this host's Redis link stopped")
        self._calls.clear()
        for peer in self._peers.values():
            self.router.detach(peer)
        self._peers.clear()
        self.callers.clear()
        for view in self._views.values():
            for endpoint in view.endpoints.values():
                self.router.detach(endpoint)
            view.endpoints.clear()
        subscription, self._subscription = self._subscription, None
        if subscription is not None and of(subscription).state not in (State.READY, State.STOPPED):
            await of(subscription).stop()

    async def _hold(
        self, client: coredis.Redis[bytes], *, task_status: anyio.abc.TaskStatus[Any]
    ) -> None:
        """Keep the client open while the link runs (entered and left in one task)."""
        async with client:
            task_status.started(client)
            await anyio.sleep_forever()

    def _instance(self, name: str) -> str:
        return f"{self.host_id}:{name}"

    # -- this host's services -------------------------------------------------------

    def serve(self, name: str) -> None:
        """Local service `name` is STARTED: register it (in the background)."""
        self.runs.add(name)
        self._served.add(name)
        self._registrations.append((name, True))
        self._registered.set()

    def withdraw(self, name: str) -> None:
        """Local service `name` begins stopping: take it out of the registry first."""
        if name in self._served:
            self._served.discard(name)
            self._registrations.append((name, False))
            self._registered.set()

    def serves(self, name: str) -> bool:
        """Whether local service `name` is registered (takes calls from other hosts)."""
        return name in self._served

    async def _register(self) -> None:
        """Registrations and leaves, in the order they were asked for."""
        while True:
            while not self._registrations:
                self._registered = anyio.Event()
                await self._registered.wait()
            name, join = self._registrations.popleft()
            try:
                await self._join(name) if join else await self._leave(name)
            except Exception as exc:  # Redis is down: the beats register it again
                self._warn("register", f"registering {name!r} failed: {exc}")

    async def declare(self) -> None:
        """Say which services this host runs now, if it has not said so since they
        changed (before it sends as one that is new)."""
        assert self.registry is not None
        runs = frozenset(self.runs)
        if runs != self._said:
            await self.registry.declare(self.host_id, sorted(runs))
            self._said = runs

    async def _join(self, name: str) -> None:
        assert self.registry is not None
        if name in self._served:
            await self.declare()
            await self.registry.register(
                self._instance(name),
                name,
                host=socket.gethostname()[:255] or "host",
                pid=os.getpid(),
            )

    async def _leave(self, name: str) -> None:
        assert self.registry is not None
        if name not in self._served:
            await self.registry.leave(self._instance(name), name)

    def _load(self, name: str) -> int:
        router = self.router
        return sum(router.outstanding(e) for e in router.directory.endpoints(name))

    async def _beat(self) -> None:
        """Every ttl / 3: declare, beat (or register again), read the watched views,
        sweep one service, forget what is past its time."""
        assert self.registry is not None
        registry = self.registry
        names: list[str] = []
        while True:
            with anyio.move_on_after(self.ttl / 3):
                await self._beat_now.wait()
            self._beat_now = anyio.Event()
            try:
                await registry.declare(self.host_id, sorted(self.runs))
                self._said = frozenset(self.runs)
                for name in list(self._served):
                    alive = await registry.beat(self._instance(name), name, self._load(name))
                    if not alive and name in self._served:  # swept, or Redis lost it: again
                        await self._join(name)
                for name in list(self._views):
                    await self.refresh(name)
                if not names:
                    names = await registry.services()
                if names:
                    await registry.sweep(names.pop())
            except Exception as exc:
                if isinstance(exc, anyio.get_cancelled_exc_class()):
                    raise
                self._warn("beat", f"a beat failed: {exc}")
            self._expire()

    def _expire(self) -> None:
        now = time.monotonic()
        for rid in [rid for rid, sent in self._calls.items() if sent.expires < now]:
            del self._calls[rid]
        for peer in self._peers.values():
            for ours in [i for i, (_, _, expires) in peer.ids.items() if expires < now]:
                del peer.ids[ours]
        for host in [h for h, (until, _) in self._declared.items() if until < now]:
            del self._declared[host]

    # -- services elsewhere ---------------------------------------------------------

    def watch(self, name: str, on_change: Callable[[], object]) -> None:
        """Keep the live instances of `name` on other hosts attached to the router;
        call `on_change()` whenever they change."""
        view = self._views.setdefault(name, _View())
        view.watchers.append(on_change)
        self._beat_now.set()

    def unwatch(self, name: str, on_change: Callable[[], object]) -> None:
        view = self._views.get(name)
        if view is not None and on_change in view.watchers:
            view.watchers.remove(on_change)
            if not view.watchers:
                for endpoint in view.endpoints.values():
                    self.router.detach(endpoint)
                del self._views[name]

    def instances(self, name: str) -> list[str]:
        """The ids of the live instances of `name` elsewhere, as last read."""
        view = self._views.get(name)
        return list(view.endpoints) if view is not None else []

    async def refresh(self, name: str) -> None:
        """Read the live instances of watched service `name` again."""
        view = self._views.get(name)
        if view is None or self.registry is None:
            return
        live = {i.id: i for i in await self.registry.live(name) if not self._ours(i.id)}
        view = self._views.get(name)  # (it may have been unwatched meanwhile)
        if view is None:
            return
        for dropped in [i for i in self._unreachable if _service_of(i) == name and i not in live]:
            del self._unreachable[dropped]
        for instance in list(live.values()):  # dropped, and has not beaten since: still out
            if instance.expires_ms <= self._unreachable.get(instance.id, -1):
                del live[instance.id]
        changed = False
        for gone in [i for i in view.endpoints if i not in live]:
            endpoint = view.endpoints.pop(gone)
            why = (
                f"host {endpoint.host_id} left the registry of {name!r} (it stopped, or "
                "Redis lost its entry) before it answered"
            )
            for rid in [r for r, sent in self._calls.items() if sent.endpoint is endpoint]:
                del self._calls[rid]
                self.router.fail(rid, "unavailable", why)
            self.router.detach(endpoint)
            changed = True
        for instance in live.values():
            known = view.endpoints.get(instance.id)
            if known is not None:
                known.expires_ms = instance.expires_ms
                continue
            taken = {e.number for e in view.endpoints.values()}
            number = next(n for n in itertools.count(FIRST_REMOTE) if n not in taken)
            endpoint = view.endpoints[instance.id] = RemoteEndpoint(self, instance, number)
            self.router.attach(name, endpoint, number)
            changed = True
        if changed:
            self._changed(view)

    def _ours(self, instance: str) -> bool:
        return instance.rpartition(":")[0] == self.host_id

    def _changed(self, view: _View) -> None:
        for watcher in list(view.watchers):
            try:
                watcher()
            except Exception:
                logger.exception("a watcher of the registry failed")

    def _drop(self, endpoint: RemoteEndpoint) -> None:
        """`endpoint` does not take calls: out of this host's view until the registry
        says it beat again (or lists it anew)."""
        view = self._views.get(endpoint.service)
        if view is not None and view.endpoints.get(endpoint.instance) is endpoint:
            del view.endpoints[endpoint.instance]
            if len(self._unreachable) >= MAX_PEERS:
                self._unreachable.clear()
            self._unreachable[endpoint.instance] = endpoint.expires_ms
            self.router.detach(endpoint)
            self._changed(view)
            self._beat_now.set()

    # -- sending --------------------------------------------------------------------

    def _seal(self, channel: str, service: str, body: bytes) -> bytes:
        """`body` in an envelope for `channel`, from `service` of this host.

        Raises:
            ClusterError: it does not fit in an envelope.
        """
        return seal(
            self._key,
            cluster=self.cluster,
            channel=channel,
            sender=self.host_id,
            service=service,
            seq=next(self._seq),
            sent_ms=time.time_ns() // 1_000_000,
            body=body,
        )

    def _send(self, channel: str, service: str, message: AnyMessage, rid: int = 0) -> None:
        """Seal `message` for `channel` and queue it (`rid`: the call it is, if one)."""
        data = self._seal(channel, service, msgspec.msgpack.encode(message))
        self._outgoing.append((channel, data, rid))
        self._wake.set()

    def announcement(self, writer: str, change: ConfigChange) -> tuple[str, bytes]:
        """The channel and the envelope that announce `change`, made by service
        `writer` of this host (empty: its operator); `RedisConfig` publishes it."""
        channel = self.keys.config_changes
        return channel, self._seal(channel, writer, msgspec.msgpack.encode(change))

    def _call_out(self, endpoint: RemoteEndpoint, call: Call) -> bool:
        if of(self).state is not State.STARTED:
            return False
        rid = call.id
        self._calls[rid] = _Sent(endpoint, call, time.monotonic() + call.timeout + GRACE)
        try:
            self._send(self.keys.inbox(endpoint.host_id), call.caller, call, rid)
        except (ClusterError, TypeError, ValueError) as exc:
            del self._calls[rid]
            self._failures.append((rid, str(exc)))
            self._wake.set()
        return True

    def _reply_out(self, peer: _Peer, reply: Reply) -> None:
        noted = peer.ids.pop(reply.id, None)
        if noted is None or of(self).state is not State.STARTED:
            return  # past its time: the caller has given up already
        caller_id, callee, _ = noted
        channel = self.keys.inbox(peer.host_id)
        try:
            self._send(channel, callee, replace(reply, id=caller_id))
        except (ClusterError, TypeError, ValueError) as exc:
            self._send(channel, callee, Reply(caller_id, kind="error", error=ErrorInfo.of(exc)))

    def _relay(self, event: Event) -> None:
        """An event emitted on this host: to every other host."""
        if of(self).state is State.STARTED:
            try:
                self._send(self.keys.events, event.source, event)
            except (ClusterError, TypeError, ValueError) as exc:
                self._warn("event", f"an event on {event.topic!r} was not sent: {exc}")

    async def _pump(self) -> None:
        """Publish what is queued, a batch per round trip."""
        assert self.client is not None
        client = self.client
        while True:
            while self._failures:
                rid, why = self._failures.popleft()
                self.router.fail(rid, "error", "", ErrorInfo.of(ClusterError(why)))
            if not self._outgoing:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            batch = [self._outgoing.popleft() for _ in range(min(MAX_BATCH, len(self._outgoing)))]
            try:
                if len(batch) == 1:
                    counts: Iterable[object] = [await client.publish(batch[0][0], batch[0][1])]
                else:
                    async with client.pipeline(transaction=False) as pipe:
                        for channel, data, _ in batch:
                            pipe.publish(channel, data)
                    counts = pipe.results or ()
            except Exception as exc:
                if isinstance(exc, anyio.get_cancelled_exc_class()):
                    raise
                self._warn("publish", f"publishing to Redis failed: {exc}")
                for _, _, rid in batch:
                    if rid and self._calls.pop(rid, None) is not None:
                        self.router.fail(rid, "unavailable", f"the Redis link failed: {exc}")
                continue
            self.statistics.sent += len(batch)
            missed: dict[RemoteEndpoint, list[int]] = {}
            for (_, _, rid), count in zip(batch, counts, strict=False):
                if rid and count == 0 and rid in self._calls:
                    self.statistics.undelivered += 1
                    missed.setdefault(self._calls[rid].endpoint, []).append(rid)
            for endpoint, rids in missed.items():
                self._fail_over(endpoint, rids)

    def _fail_over(self, endpoint: RemoteEndpoint, rids: list[int]) -> None:
        """Nobody ran these calls at `endpoint`: send them to another instance."""
        calls = [self._calls.pop(rid).call for rid in rids if rid in self._calls]
        for call in calls:  # (before the endpoint is detached, which would fail them)
            self.statistics.failovers += 1
            self.router.redirect(call.id, call)
        self._drop(endpoint)

    # -- receiving ------------------------------------------------------------------

    def _arrive(self, channel: str, data: bytes) -> None:
        self.statistics.received += 1
        if len(self._incoming) >= MAX_INCOMING:
            self.statistics.dropped += 1
            if channel == self.keys.config_changes:
                self._config_missed()
            return
        self._incoming.append((channel, data))
        self._arrived.set()

    def _lost(self, why: str) -> None:
        """The subscription was lost: answers to calls in flight may never come."""
        self.statistics.lost += 1
        for sent in list(self._calls.values()):
            message = f"the Redis link was lost ({why}): the answer may never come"
            self.router.fail(sent.call.id, "unavailable", message)
        self._calls.clear()
        self._beat_now.set()

    async def _read(self) -> None:
        while True:
            while not self._incoming:
                self._arrived = anyio.Event()
                await self._arrived.wait()
            channel, data = self._incoming.popleft()
            try:
                await self._take(channel, data)
            except EnvelopeRefused as exc:
                refused = self.statistics.refused
                refused[exc.reason] = refused.get(exc.reason, 0) + 1
                self._warn(f"refused {exc.reason}", str(exc))
            except Exception as exc:  # a fault of ours: the next envelope is read
                if isinstance(exc, anyio.get_cancelled_exc_class()):
                    raise
                logger.exception("taking an envelope from %s failed", channel)

    async def _take(self, channel: str, data: bytes) -> None:
        now_ms = time.time_ns() // 1_000_000
        envelope = open_envelope(
            self._key, data, cluster=self.cluster, channel=channel, now_ms=now_ms
        )
        if channel == self.keys.config_changes:  # (this host's own too: in Redis's order)
            self._replays.check(envelope, now_ms)
            await self._configured(envelope.sender, envelope.service, envelope.body)
            return
        if envelope.sender == self.host_id:
            return  # an event of ours, back from the event channel
        self._replays.check(envelope, now_ms)
        try:
            message = _decoder.decode(envelope.body)
        except msgspec.DecodeError as exc:
            raise EnvelopeRefused(
                "malformed", f"its body is no data-plane message: {exc}"
            ) from None
        if channel == self.keys.events:
            if not isinstance(message, Event):
                raise EnvelopeRefused("malformed", "only events come on the event channel")
            await self._check_sender(envelope.sender, envelope.service)
            self.router.handle(self._peer(envelope.sender, envelope.service), message)
        elif isinstance(message, Call):
            await self._call_in(
                envelope.sender, envelope.service, envelope.sent_ms, message, now_ms
            )
        elif isinstance(message, Reply):
            self._reply_in(envelope.sender, envelope.service, message)
        else:
            raise EnvelopeRefused("malformed", "only calls and replies come to an inbox")

    def _config_missed(self) -> None:
        """Configuration changes may have been missed (the subscription is back
        after a loss, or one was dropped): tell whoever watches."""
        if self.on_config_missed is not None:
            self.on_config_missed()

    async def _configured(self, host: str, writer: str, body: bytes) -> None:
        try:
            change = change_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise EnvelopeRefused(
                "malformed", f"its body is no configuration change: {exc}"
            ) from None
        why = config_change_problem(change)
        if why is not None or change.resync:
            raise EnvelopeRefused("malformed", why or "a host announces no resync")
        if writer and writer != change.service:
            raise EnvelopeRefused(
                "identity", f"service {writer!r} announced a change of {change.service!r}"
            )
        if host != self.host_id:
            await self._check_sender(host, writer)
        if self.on_config is not None:
            self.on_config(change)

    async def _check_sender(self, host: str, service: str) -> None:
        """Refuse a message from `service` unless host `host` declared it runs it."""
        if service == "":  # that host's operator: it may call any service, as here
            return
        now = time.monotonic()
        cached = self._declared.get(host)
        if (
            cached is None
            or cached[0] < now
            or (cached[1] is not None and service not in cached[1])
        ):
            assert self.registry is not None
            if len(self._declared) >= MAX_PEERS:
                self._declared.clear()
            runs = await self.registry.declared(host)
            cached = self._declared[host] = (now + self.ttl / 3, runs)
        if cached[1] is None or service not in cached[1]:
            raise EnvelopeRefused("identity", f"host {host} does not run service {service!r}")

    async def _call_in(
        self, host: str, service: str, sent_ms: int, call: Call, now_ms: int
    ) -> None:
        if call.caller != service:
            raise EnvelopeRefused(
                "identity", f"a call sealed by {service!r} says it comes from {call.caller!r}"
            )
        await self._check_sender(host, service)
        if call.service not in self._served:
            why = f"service {call.service!r} is not served by host {self.host_id} now"
            reply = Reply(call.id, UNSERVED, kind="unavailable", message=why)
            self._send(self.keys.inbox(host), call.service, reply)
            return
        timeout = call.timeout
        if isinstance(timeout, float | int) and math.isfinite(timeout):
            timeout -= max(0, now_ms - sent_ms) / 1000
            if timeout <= 0:
                self.statistics.late += 1
                return  # its caller has given up
        peer = self._peer(host, service)
        ours = next(peer.next_id)
        expires = time.monotonic() + (timeout if math.isfinite(timeout) else 0) + GRACE
        peer.ids[ours] = (call.id, call.service, expires)
        pick = "" if call.pick == "all" else call.pick  # (a host is one instance to its callers)
        self.router.handle(peer, replace(call, id=ours, timeout=timeout, pick=pick))

    def _reply_in(self, host: str, service: str, reply: Reply) -> None:
        sent = self._calls.get(reply.id)
        if sent is None:
            self.statistics.late += 1
            return
        endpoint = sent.endpoint
        if host != endpoint.host_id or service != endpoint.service:
            raise EnvelopeRefused("identity", f"a reply from {host}, which the call did not go to")
        if reply.kind == "unavailable" and reply.value == UNSERVED:
            self.statistics.unserved += 1
            self._fail_over(endpoint, [reply.id])
            return
        del self._calls[reply.id]
        self.router.handle(endpoint, reply)

    def _peer(self, host: str, service: str) -> _Peer:
        key = (host, service)
        peer = self._peers.get(key)
        if peer is not None:
            self._peers.move_to_end(key)
            return peer
        if len(self._peers) >= MAX_PEERS:  # the one heard from least recently goes
            _, old = self._peers.popitem(last=False)
            self.router.detach(old)
        peer = self._peers[key] = _Peer(self, host, service)
        self.router.attach(service or None, peer, foreign=True)
        if service:
            self.callers.add(service)
        return peer

    def _warn(self, what: str, message: str) -> None:
        """Log `message` the 1st, 2nd, 4th, 8th... time for `what` (no flood fills the log)."""
        count = self._warned[what] = self._warned.get(what, 0) + 1
        if now_and_then(count):
            logger.warning("%s (%s: %d so far)", message, what, count)


def _service_of(instance: str) -> str:
    """The service of an instance id (`<host>:<service>`)."""
    return instance.rpartition(":")[2]


def _safe(url: str) -> str:
    """`url` without its password."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
