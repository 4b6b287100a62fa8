"""The router of the data plane: the manager passes requests and events between services.

Each running client has an *endpoint* here (a container's outbox, or a
client in this process). The router asks its `Directory` whether a request
may go where it asks, picks one of the callee's endpoints (the one with the
fewest requests waiting for it), forwards the request under an id of its
own, and sends the answer back to the endpoint that asked; events go to
every endpoint subscribed to their topic. It never waits: not for a handler
(a slow callee holds up only its caller), and not for a container's socket
(each container has an `Outbox`, written by a task of its own, so one that
stops reading holds up nobody else).
"""

from __future__ import annotations

import enum
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable

import anyio
import anyio.lowlevel
import msgspec
from msgspec.structs import replace

from .._errors import ServiceUnavailable
from .._ipc.messages import ErrorInfo
from .._names import now_and_then
from .contract import (
    MAX_CONFIGURING,
    RESERVED_TOPICS,
    AnyMessage,
    Call,
    Configure,
    Create,
    Event,
    Reply,
    Subscribe,
    Unsubscribe,
    config_topic,
    copy,
    invalid,
    problem,
)
from .directory import Directory, Endpoint, Pick, pick
from .link import PortLink, Receiver

logger = logging.getLogger("startable.cluster")
#: How long the router keeps a forwarded request after its deadline, in
#: case the callee answers late (the answer is then dropped).
GRACE = 1.0
#: Forwarded requests past their time are forgotten every this many requests.
SWEEP_EVERY = 1024
#: Messages an `Outbox` holds for its container before it refuses more.
OUTBOX_CAPACITY = 1024
#: Requests one service may have waiting for answers at once; past that its
#: new requests are refused at once (`ServiceUnavailable`).
MAX_IN_FLIGHT = 4096
#: Topics one client may be subscribed to at once; past that a new
#: subscription is refused (`RequestRefused`).
MAX_TOPICS = 1024


class _Detached(enum.Enum):
    """The name of an endpoint that is not attached (distinct from None, the operator's)."""

    DETACHED = enum.auto()


_DETACHED = _Detached.DETACHED


class _Forwarded:
    __slots__ = ("callee", "callee_name", "caller", "caller_id", "caller_name", "expires", "part")

    def __init__(
        self,
        caller: Endpoint,
        caller_name: str | None,
        caller_id: int,
        callee: Endpoint,
        callee_name: str,
        expires: float,
        part: int,
    ) -> None:
        self.caller = caller
        self.caller_name = caller_name
        self.caller_id = caller_id
        self.callee = callee
        self.callee_name = callee_name
        self.expires = expires
        self.part = part  # -1, or the callee's instance in a fan-out


class Router:
    """Routes the data plane of one cluster, in its process, as its `Directory` allows.

    Every message is checked against the contract (`contract.problem`)
    before anything is done with it; one that breaks it is answered with an
    `"invalid"` reply when it has an id, and dropped (and logged) otherwise.
    What one client can make the router hold is bounded: `MAX_IN_FLIGHT`
    requests per service, `MAX_TOPICS` subscriptions per endpoint,
    `MAX_CONFIGURING` configuration requests per service.

    A client is known by its endpoint: `attach` it under its service's name
    (None: the operator's, which no one calls), `handle` what it sends, and
    `detach` it when it is gone.
    """

    def __init__(self, directory: Directory, policy: Pick = Pick.LEAST_OUTSTANDING) -> None:
        if policy is Pick.ALL:
            raise ValueError("a request gets one answer: its endpoint is picked by one policy")
        self.directory = directory
        #: How a request's endpoint is chosen among its callee's.
        self.policy = policy
        #: Every endpoint subscribed to a topic, by topic.
        self.topics: dict[str, set[Endpoint]] = {}
        #: Messages refused as malformed, by the service that sent them.
        self.malformed: dict[str | None, int] = {}
        self._names: dict[Endpoint, str | None] = {}
        self._instances: dict[Endpoint, int] = {}
        self._subscribed: dict[Endpoint, set[str]] = {}
        self._in_flight: dict[str | None, int] = {}
        self._outstanding: dict[Endpoint, int] = {}
        self._drained: dict[Endpoint, anyio.Event] = {}  # withdrawn, with requests still owed
        self._forwarded: dict[int, _Forwarded] = {}
        self._foreign: set[Endpoint] = set()
        self._configuring: dict[str | None, int] = {}  # configuration requests not answered
        self._ids = itertools.count(1)
        #: Called with every event a client of this router emits (not those
        #: that came from another host): the link to other hosts, if any.
        self.relay: Callable[[Event], object] | None = None

    def attach(
        self, name: str | None, endpoint: Endpoint, instance: int = 0, *, foreign: bool = False
    ) -> None:
        """`endpoint` reaches a client of `name` (None: the operator's) from now on.

        `instance` numbers it among the endpoints of `name` (a pool's replica
        index); a request to all of them is answered in parts by that number.
        A `foreign` endpoint stands for callers on another host: it sends
        requests and events as `name` but is not one of its endpoints (no
        request is routed to it), and its events are not relayed.
        """
        self._names[endpoint] = name
        self._instances[endpoint] = instance
        if foreign:
            self._foreign.add(endpoint)
        elif name is not None:
            self.directory.register(name, endpoint)

    def attached(self, endpoint: Endpoint) -> bool:
        """Whether `endpoint` is attached (and so its messages are handled)."""
        return endpoint in self._names

    def withdraw(self, endpoint: Endpoint) -> anyio.Event:
        """Give `endpoint` no new request: it stays attached to answer those it has.

        Returns:
            An event set once it owes no answer (at once if it owes none), or
            once it is detached.
        """
        drained = anyio.Event()
        name = self._names.get(endpoint)
        if name is not None:
            self.directory.unregister(name, endpoint)
        if self._outstanding.get(endpoint, 0) > 0:
            self._drained[endpoint] = drained
        else:
            drained.set()
        return drained

    def outstanding(self, endpoint: Endpoint) -> int:
        """How many requests `endpoint` was given and has not answered yet."""
        return self._outstanding.get(endpoint, 0)

    def topics_of(self, name: str | None) -> set[str]:
        """The topics the clients of `name` are subscribed to."""
        return {
            topic
            for endpoint, topics in self._subscribed.items()
            if self._names.get(endpoint, ...) == name
            for topic in topics
        }

    def detach(self, endpoint: Endpoint) -> None:
        """`endpoint` is gone: requests waiting for it fail, its subscriptions end.

        Detaching one that is not attached does nothing.
        """
        if endpoint not in self._names:
            return
        name = self._names.pop(endpoint)
        self._instances.pop(endpoint, None)
        if endpoint in self._foreign:
            self._foreign.discard(endpoint)
        elif name is not None:
            self.directory.unregister(name, endpoint)
        for topic in self._subscribed.pop(endpoint, ()):
            self._unsubscribe(topic, endpoint)
        lost = [r for r, f in self._forwarded.items() if endpoint in (f.callee, f.caller)]
        for rid in lost:
            if self._forwarded[rid].callee is endpoint:
                self.fail(rid, "unavailable", f"service {name!r} stopped before it answered")
            else:
                self._forget(rid)
        self._outstanding.pop(endpoint, None)
        drained = self._drained.pop(endpoint, None)
        if drained is not None:
            drained.set()

    def _unsubscribe(self, topic: str, endpoint: Endpoint) -> None:
        subscribers = self.topics.get(topic)
        if subscribers is not None:
            subscribers.discard(endpoint)
            if not subscribers:  # topics nobody listens to are forgotten
                del self.topics[topic]
        mine = self._subscribed.get(endpoint)
        if mine is not None:
            mine.discard(topic)

    def _forget(self, rid: int) -> _Forwarded | None:
        forwarded = self._forwarded.pop(rid, None)
        if forwarded is not None:
            self._in_flight[forwarded.caller_name] -= 1
            self._owed_less(forwarded.callee)
        return forwarded

    def _owed_less(self, callee: Endpoint) -> None:
        """`callee` owes one answer less (and is drained if it was withdrawn and owes none)."""
        if callee in self._outstanding:
            left = self._outstanding[callee] = self._outstanding[callee] - 1
            if not left and self._drained:
                drained = self._drained.pop(callee, None)
                if drained is not None:
                    drained.set()

    def fail(self, rid: int, kind: str, message: str, error: ErrorInfo | None = None) -> None:
        """The request the router forwarded as `rid` will get no answer: tell its caller."""
        forwarded = self._forget(rid)
        if forwarded is not None:
            reply = Reply(
                forwarded.caller_id, kind=kind, message=message, error=error, part=forwarded.part
            )
            forwarded.caller.put(reply)

    def redirect(self, rid: int, call: Call) -> None:
        """The request forwarded as `rid` (`call`, as it was forwarded) reached nobody:
        give it to another endpoint of its callee, or fail it if there is none.

        Only for a request that no instance ran (the link knows that: no host
        got it, or the one that did does not serve its callee now), so that
        sending it again runs it at most once.
        """
        forwarded = self._forwarded.get(rid)
        if forwarded is None:
            return
        endpoints = self.directory.endpoints(forwarded.callee_name)
        others = [e for e in endpoints if e is not forwarded.callee]
        if not others:
            name = forwarded.callee_name
            self.fail(rid, "unavailable", f"service {name!r} has no instance left to take it")
            return
        chosen = others[0] if len(others) == 1 else pick(others, self.policy, self._outstanding)[0]
        self._owed_less(forwarded.callee)
        forwarded.callee = chosen
        self._outstanding[chosen] = self._outstanding.get(chosen, 0) + 1
        if not chosen.put(call):
            self.fail(rid, "unavailable", f"service {forwarded.callee_name!r} is not keeping up")

    def handle(self, origin: Endpoint, message: AnyMessage) -> None:
        """A message from the client `origin` reaches; it never waits.

        Messages from an endpoint that is not attached (any more) are dropped:
        nothing could reach it with an answer.
        """
        source = self._names.get(origin, _DETACHED)
        if source is _DETACHED:
            return
        if isinstance(message, Create):
            refusal = self._create_refusal(source)
            if refusal is not None:  # (the permission first: one without it learns nothing else)
                origin.put(Reply(message.id, kind="refused", message=refusal))
                return
        why = problem(message)
        if why is not None:
            self._malformed(origin, source, message, why)
        elif isinstance(message, Call):
            self._call(origin, source, message)
        elif isinstance(message, Reply) and message.kind == "fan-out":
            self._malformed(origin, source, message, "only the router announces a fan-out")
        elif isinstance(message, Reply):
            forwarded = self._forwarded.get(message.id)
            if forwarded is not None and forwarded.callee is origin:  # only the callee answers
                self._forget(message.id)
                forwarded.caller.put(replace(message, id=forwarded.caller_id, part=forwarded.part))
        elif isinstance(message, Event) and message.topic.startswith(RESERVED_TOPICS):
            why = f"topics that begin {RESERVED_TOPICS!r} are the cluster's own: {message.topic!r}"
            self._malformed(origin, source, message, why)
        elif isinstance(message, Event):
            event = replace(message, source=source or "")
            for endpoint in self.topics.get(message.topic, ()):  # `put` subscribes no one
                endpoint.put(event)  # a full outbox drops it, and counts it
            if self.relay is not None and origin not in self._foreign:
                self.relay(event)
        elif isinstance(message, Subscribe):
            self._subscribe(origin, message)
        elif isinstance(message, Unsubscribe):
            self._unsubscribe(message.topic, origin)
        elif isinstance(message, Configure):
            self._configure(origin, source, message)
        else:
            assert source is not None  # (`_create_refusal` refuses the operator)
            self.directory.create(source, message, self._answer(origin))

    def _answer(self, origin: Endpoint) -> Callable[[Reply], None]:
        def answer(reply: Reply) -> None:
            if origin in self._names:
                origin.put(reply)

        return answer

    def _create_refusal(self, source: str | None) -> str | None:
        if source is None:
            return "only a service can create a child service"
        return self.directory.create_refusal(source)

    def _malformed(
        self, origin: Endpoint, source: str | None, message: AnyMessage, why: str
    ) -> None:
        count = self.malformed[source] = self.malformed.get(source, 0) + 1
        answer = invalid(message, f"refused by {self.directory.name}: {why}")
        if answer is not None:
            origin.put(answer)
        if now_and_then(count):
            who = f"service {source!r}" if source is not None else "the manager's client"
            logger.warning("%s sent a malformed message (%d so far): %s", who, count, why)

    def announce(self, topic: str, payload: object) -> None:
        """Deliver an event of the cluster's own (`source` empty) on `topic` to its
        subscribers here (it is not relayed to other hosts)."""
        event = Event(topic, payload)
        for endpoint in self.topics.get(topic, ()):
            endpoint.put(event)

    def _configure(self, origin: Endpoint, source: str | None, message: Configure) -> None:
        whose = message.service or source
        refusal = None
        if whose is None:
            refusal = "the manager's client names the service whose configuration it asks for"
        elif source is not None and whose != source:
            refusal = f"service {source!r} may read and change its own configuration only"
        elif origin in self._foreign:
            refusal = "a configuration request does not cross hosts"
        if refusal is not None:
            origin.put(Reply(message.id, kind="refused", message=refusal))
            return
        busy = self._configuring.get(source, 0)
        if busy >= MAX_CONFIGURING:
            why = f"{MAX_CONFIGURING} configuration requests of this client wait already"
            origin.put(Reply(message.id, kind="unavailable", message=why))
            return
        self._configuring[source] = busy + 1
        answer = self._answer(origin)

        def done(reply: Reply) -> None:
            self._configuring[source] -= 1
            answer(reply)

        assert whose is not None
        self.directory.configure(source, whose, message, done)

    def _subscribe(self, origin: Endpoint, message: Subscribe) -> None:
        if message.topic.startswith(RESERVED_TOPICS):
            source = self._names.get(origin)
            if source is not None and message.topic != config_topic(source):
                refusal = f"service {source!r} may not subscribe to {message.topic!r}"
                origin.put(Reply(message.id, kind="refused", message=refusal))
                return
        mine = self._subscribed.setdefault(origin, set())
        if message.topic not in mine and len(mine) >= MAX_TOPICS:
            refusal = f"a service may subscribe to {MAX_TOPICS} topics at most"
            origin.put(Reply(message.id, kind="refused", message=refusal))
            return
        mine.add(message.topic)
        self.topics.setdefault(message.topic, set()).add(origin)
        origin.put(Reply(message.id))

    def _call(self, origin: Endpoint, source: str | None, call: Call) -> None:
        callee = call.service
        refusal = self.directory.call_refusal(source, callee)
        if refusal is None:
            endpoints = self.directory.endpoints(callee)
            if call.pick == "all":  # one endpoint per instance: the oldest (a reload's
                seen: set[int] = set()  # new replica is attached before it is STARTED)
                chosen = []
                for endpoint in endpoints:
                    instance = self._instances.get(endpoint, 0)
                    if instance not in seen:
                        seen.add(instance)
                        chosen.append(endpoint)
            elif len(endpoints) == 1:  # (the common case needs no pick)
                chosen = [endpoints[0]]
            else:
                policy = Pick.RANDOM if call.pick == "random" else self.policy
                chosen = pick(endpoints, policy, self._outstanding)
            if not chosen:
                refusal = (
                    "unavailable",
                    f"service {callee!r} cannot be reached: its data socket is closed",
                )
        if refusal is not None:
            origin.put(Reply(call.id, kind=refusal[0], message=refusal[1]))
            return
        in_flight = self._in_flight.get(source, 0)
        if in_flight + len(chosen) > MAX_IN_FLIGHT:
            message = f"{MAX_IN_FLIGHT} requests of this service wait for answers already"
            origin.put(Reply(call.id, kind="unavailable", message=message))
            return
        now = time.monotonic()
        if call.pick == "all":  # the parts to expect, then a part from each
            instances = [self._instances.get(endpoint, 0) for endpoint in chosen]
            origin.put(Reply(call.id, instances, kind="fan-out"))
            for endpoint, instance in zip(chosen, instances, strict=True):
                self._forward(origin, source, call, endpoint, now, instance)
        else:
            self._forward(origin, source, call, chosen[0], now, -1)

    def _forward(
        self,
        origin: Endpoint,
        source: str | None,
        call: Call,
        endpoint: Endpoint,
        now: float,
        part: int,
    ) -> None:
        rid = next(self._ids)
        if rid % SWEEP_EVERY == 0:  # callees that never answered, long after their callers left
            for late in [r for r, f in self._forwarded.items() if f.expires < now]:
                self._forget(late)
        expires = now + call.timeout + GRACE
        callee = call.service
        self._forwarded[rid] = _Forwarded(origin, source, call.id, endpoint, callee, expires, part)
        self._in_flight[source] = self._in_flight.get(source, 0) + 1
        self._outstanding[endpoint] = self._outstanding.get(endpoint, 0) + 1
        if not endpoint.put(replace(call, id=rid, caller=source or "", pick="")):
            message = (
                f"service {callee!r} is not keeping up: {OUTBOX_CAPACITY} messages "
                "wait for it already"
            )
            self.fail(rid, "unavailable", message)


class Outbox:
    """What the router sends to one container, written to its data port at once
    when the port is idle, else by a task of its own (`pump`, run by the
    container's node) as the container reads.

    Up to `capacity` messages wait here while the container's socket is
    full. Past that a request for the container is refused (its caller
    gets `ServiceUnavailable` at once) and an event for it is dropped and
    counted in `events_dropped`. Replies, the answers to the container's own
    requests, get in up to twice `capacity`; past that the container is not
    reading its answers either, and its requests end at their deadlines.
    """

    def __init__(self, router: Router, link: PortLink, capacity: int = OUTBOX_CAPACITY) -> None:
        self.router = router
        self.link = link
        self.capacity = capacity
        #: Events for the container dropped because this outbox was full.
        self.events_dropped = 0
        self._queue: deque[AnyMessage] = deque()
        self._filled = anyio.Event()
        self._sending = False  # the pump holds a message it took from the queue

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, message: AnyMessage) -> bool:
        waiting = len(self._queue)
        if waiting >= self.capacity and (
            not isinstance(message, Reply) or waiting >= 2 * self.capacity
        ):
            if isinstance(message, Event):
                self.events_dropped += 1
            return False
        if not waiting and not self._sending:  # straight to the socket if it takes it now
            # (in order: nothing waits here, and the pump holds no message it took)
            try:
                if self.link.post(message):
                    return True
            except (ValueError, TypeError, msgspec.EncodeError, ServiceUnavailable):
                pass  # queued: the pump meets it again, and deals with it
        self._queue.append(message)
        self._filled.set()
        return True

    def clear(self) -> None:
        """Forget what waits: it will never be written."""
        self._queue.clear()

    async def pump(self) -> None:
        """Write the messages in order, until the port closes.

        If the port closes under it (the process died, or read nothing for
        the port's `send_timeout`), the outbox is detached from the router:
        requests waiting for it, and new ones, fail at once.
        """
        queue = self._queue
        try:
            while True:
                while not queue:  # (`clear` may have emptied it since it was filled)
                    self._filled = anyio.Event()
                    await self._filled.wait()
                message = queue.popleft()
                self._sending = True
                try:
                    await self.link.send(message)
                except ValueError as exc:  # too large for the port (which is fine): not sent
                    if isinstance(message, Call):
                        self.router.fail(message.id, "error", "", ErrorInfo.of(exc))
                    elif isinstance(message, Reply) and message.kind != "fan-out":
                        # The container waits for this answer: it gets why it has none.
                        error = ErrorInfo.of(ValueError(f"the answer was not sent: {exc}"))
                        queue.appendleft(replace(message, value=None, kind="error", error=error))
                    else:
                        logger.warning("%s: a message was dropped: %s", self.link.port.name, exc)
                finally:
                    self._sending = False
        except ServiceUnavailable:
            self.router.detach(self)
            self.clear()


class LocalLink:
    """The link of a client in the manager's process: straight into the router,
    whose endpoint for the client it is too.

    Messages are copied both ways as a wire would copy them, so that a
    service sees the same values whether it runs here or in a container.
    """

    own_task = False  # (a message is delivered by the task of whoever sent it)

    def __init__(self, router: Router, name: str | None) -> None:
        self.router = router
        self.name = name
        self._client: Receiver | None = None

    async def open(self, client: Receiver) -> None:
        self._client = client
        self.router.attach(self.name, self)

    async def send(self, message: AnyMessage) -> None:
        await anyio.lowlevel.checkpoint()  # a loop of sends lets others run
        self.post(message)

    def post(self, message: AnyMessage) -> bool:
        if self._client is None or not self.router.attached(self):
            raise ServiceUnavailable("the cluster is out of reach: the link is closed")
        self.router.handle(self, copy(message))
        return True

    async def close(self) -> None:
        if self._client is not None:  # (its runner may have detached it already: that is fine)
            self._client = None
            self.router.detach(self)

    def put(self, message: AnyMessage) -> bool:
        """A message from the router, for the client (the endpoint's side)."""
        client = self._client
        if client is None:
            return False
        # What reaches the router is a copy already; an event may go to several services.
        if isinstance(message, Event):
            try:
                message = copy(message)
            except ValueError as exc:  # its source's name made it too large
                logger.warning("%s: an event was dropped: %s", self.name or "the manager", exc)
                return False
        client.deliver(message)
        return True
