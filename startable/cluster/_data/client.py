"""The data plane: requests and events between services, and the client that sends them.

A service reaches the rest of the cluster through its `ServiceClient`
(`this_service()` inside it). The client speaks the messages of
`contract` to a router over a `Link`; the router (today the `ServicesManager`, in the
manager's process) checks each request and passes it on to the callee's own
client, which runs the handler and answers. The control plane never sees any
of it: in a container the data plane has a socket of its own.

The messages and `ServiceClient`'s methods are the contract: another router
(over Redis, across machines) serves the same client unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import inspect
import logging
import math
import secrets
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Literal

import anyio
import attrs
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from msgspec.structs import replace

from ... import State, as_raw_start, as_raw_stop, assert_state, of
from .._errors import (
    ClusterError,
    RemoteError,
    RequestError,
    RequestRefused,
    RequestTimeout,
    ServiceUnavailable,
)
from .._ipc.messages import ErrorInfo
from .._names import NAME_RULE
from .config import Config
from .contract import (
    DEFAULT_DEADLINE,
    FAILURES,
    MAX_NAME_LENGTH,
    MAX_RETRIES,
    RESERVED_TOPICS,
    AnyMessage,
    Call,
    Configure,
    Create,
    Event,
    Reply,
    Subscribe,
    Unsubscribe,
    deadline_problem,
    invalid,
    problem,
)
from .handlers import IDEMPOTENT, MARK, handlers
from .link import Link

logger = logging.getLogger("startable.cluster")
STARTED = State.STARTED
#: Replies a client keeps for the retries of calls it answered, at most.
MAX_ANSWERS = 4096
#: How long past its deadline a call's reply is kept for its retries, in seconds.
ANSWER_GRACE = 1.0

#: How many undelivered events a subscription holds before it drops new ones.
DEFAULT_EVENT_BUFFER = 1000


# -- the client --------------------------------------------------------------------

_current: contextvars.ContextVar[ServiceClient] = contextvars.ContextVar("startable_service")
_process_client: ServiceClient | None = None  # in a container's process: its one service


def this_service() -> ServiceClient:
    """The `ServiceClient` of the service running this code.

    Call it in the service (its raw start, or anything that runs from it);
    keep the client rather than looking it up on every call.

    Raises:
        ClusterError: this code is not running as a service of a cluster.
    """
    client = _current.get(None) or _process_client
    if client is None:
        raise ClusterError("this code does not run as a service of a ServicesManager")
    return client


@contextlib.contextmanager
def serving_as(client: ServiceClient) -> Iterator[ServiceClient]:
    """Make `client` what `this_service()` returns in this context (and tasks started in it)."""
    token = _current.set(client)
    try:
        yield client
    finally:
        _current.reset(token)


def set_process_client(client: ServiceClient | None) -> None:
    global _process_client
    _process_client = client


class _Waiter:
    """What one request waits for: a reply; or for a request to all, its parts."""

    __slots__ = ("done", "expired", "instances", "parts", "reply")

    def __init__(self, gathering: bool = False) -> None:
        self.done = anyio.Event()
        self.expired = False  # whether the client's timer ended the wait (the deadline passed)
        self.reply: Reply | None = None
        self.instances: list[int] | None = None  # from the fan-out, for a request to all
        self.parts: dict[int, Reply] | None = {} if gathering else None

    def take(self, reply: Reply) -> None:
        if self.expired:  # the deadline passed: what comes after it is too late
            return
        parts = self.parts
        if parts is None or (reply.part < 0 and reply.kind != "fan-out"):
            self.reply = reply  # the answer (or why there is none)
            self.done.set()
            return
        if reply.kind == "fan-out":
            if reply.part == -1 and self.instances is None:  # the router's, once
                self.instances = list(reply.value)
        elif self.instances is None or reply.part in self.instances:
            parts[reply.part] = reply
        if self.instances is not None and all(i in parts for i in self.instances):
            self.done.set()


@attrs.frozen
class Answer:
    """One instance's answer to a request sent to all (`ServiceClient.request_all`).

    Attributes:
        replica: which instance answered: a pool's replica index, or, for an
            instance on another host (which answers as one, whatever replica
            of its own took the call), `FIRST_REMOTE` (256) and up.
        value: what its handler returned (None if it failed).
        error: why it did not (a `RemoteError` if the handler raised, a
            `RequestError` otherwise: `RequestTimeout` if it did not answer
            within the deadline); None if it answered.
    """

    replica: int
    value: Any = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        """Whether it answered (`error` is None)."""
        return self.error is None

    def result(self) -> Any:
        """Its value, or raise its error."""
        if self.error is not None:
            raise self.error
        return self.value


class ServiceClient:
    """A service's handle on its cluster: requests, events, child services.

    Get it with `this_service()` inside a service. It is a lifecycle of its
    own, started before its service and stopped after it: a service may call
    its dependencies from its raw start and its raw stop.

    Requests it receives run the service's `handler` methods: an async one
    in a task of its own, cancelled when the caller's deadline passes; a
    plain function, in a container, as soon as its request is read (it runs
    to its end once called, so a task would add only its cost: keep it as
    short as anything else that runs in the event loop). They are refused
    (the caller gets `ServiceUnavailable`) unless the service is STARTED.

    Attributes:
        name: the service's name (empty for the manager's own client).
        replica: which replica of its pool this process is (0 to
            `replicas` - 1; 0 for a service that is not a pool).
        replicas: how many replicas its pool had when this one started (1:
            not a pool).
        events_dropped: events not delivered because a subscription's buffer
            was full.
    """

    def __init__(
        self,
        name: str,
        link: Link,
        *,
        replica: int = 0,
        replicas: int = 1,
        singleton: bool = True,
    ) -> None:
        if not 0 <= replica < replicas:
            raise ValueError(f"replica {replica} of a pool of {replicas}")
        self.name = name
        self.replica = replica
        self.replicas = replicas
        self._singleton = singleton
        self._singleton_given: anyio.Event | None = None
        self.events_dropped = 0
        self._link = link
        self._target: object | None = None
        self._last_id = 0  # (an int, not an itertools.count: one object less for the collector)
        self._waiting: dict[int, _Waiter] = {}
        self._subscriptions: dict[str, list[MemoryObjectSendStream[Event]]] = {}
        self._registered: dict[str, None] = {}  # topics the router delivers here (an empty
        # dict of strings is not tracked by the collector; a set always is)
        self._token = secrets.token_hex(8)  # names this client's calls across their retries
        #: (when, id) of the requests the timer (`_expire`) may have to end (a heap,
        #: made with the first request).
        self._expiries: list[tuple[float, int]] | None = None
        self._timer: anyio.CancelScope | None = None
        #: Calls with a key: until when each is kept, and its reply (or its run, in progress).
        self._answers: dict[str, tuple[float, Reply | anyio.Event]] = {}  # (oldest first)

    def __repr__(self) -> str:
        return f"<ServiceClient {self.name or '(manager)'}: {of(self).state.name}>"

    def serve(self, target: object) -> None:
        """Answer requests with `target`'s handlers (the service object)."""
        self._target = target

    # -- the singleton role ------------------------------------------------------------

    @property
    def singleton(self) -> bool:
        """Whether this process holds its pool's singleton role now.

        A pool gives the role to one live replica at a time, for the work that
        only one process should do (a scheduler, a cache warmer). The holder
        keeps it until its process exits; only then does the pool give it to
        another (the lowest index that is STARTED), so no two processes ever
        hold it. A service that is not a pool always holds it.
        """
        return self._singleton

    async def wait_singleton(self) -> None:
        """Return once this process holds its pool's singleton role (see `singleton`).

        Bound it as any wait; the role, once held, is held until the process ends.
        """
        if self._singleton:
            return
        if self._singleton_given is None:
            self._singleton_given = anyio.Event()
        await self._singleton_given.wait()

    def hold_singleton(self) -> None:
        """This process holds the singleton role from now on: called by its
        remote, when the pool says so."""
        self._singleton = True
        if self._singleton_given is not None:
            self._singleton_given.set()

    # -- lifecycle ----------------------------------------------------------------

    @as_raw_start
    async def _open(self) -> None:
        self._timer = self._expiries = None  # (the last cycle's timer task is gone)
        await self._link.open(self)

    @as_raw_stop
    async def _close(self) -> None:
        self._link_lost()
        for streams in self._subscriptions.values():
            for stream in streams:
                stream.close()
        self._subscriptions.clear()
        self._registered.clear()
        await self._link.close()

    def _link_lost(self) -> None:
        """Wake every request still waiting: no answer can come any more."""
        for waiter in self._waiting.values():
            waiter.done.set()

    def link_closed(self, reason: BaseException | None) -> None:
        """The link ended under a running client: it stops, so its service is seen to fail.

        Called by the client's `Link` (see `startable.cluster.Link`).

        A client that lived on without a link would answer nothing and reach
        nobody while its service looked healthy.
        """
        self._link_lost()
        if of(self).state is STARTED:
            error = ClusterError(f"{self.name or 'the manager'} lost its link to the cluster")
            error.__cause__ = reason
            of(self).stop_nowait(error)

    # -- calling -------------------------------------------------------------------

    @assert_state()
    async def request(
        self,
        service: str,
        method: str,
        *args: Any,
        deadline: float = DEFAULT_DEADLINE,
        pick: Literal["least-outstanding", "random"] = "least-outstanding",
        retries: int = 0,
        **kwargs: Any,
    ) -> Any:
        """Call `method(*args, **kwargs)` on `service`; its result.

        Only the services this one declared in `depends_on` can be called
        (the manager's client may call any). The callee must be STARTED: a
        request to a service that is not fails at once.

        Args:
            deadline: seconds to wait for the answer: 10 by default, more
                than 0 and at most `MAX_DEADLINE` (a day). The callee's
                handler is cancelled when it passes.
            pick: which replica of a pool gets it: the one with the fewest
                requests waiting for it (the oldest on a tie), or one at
                `"random"`. (`request_all` asks every one.)
            retries: how many times to send it again (0 to `MAX_RETRIES`)
                when it fails with `ServiceUnavailable` (the callee stopped
                before it answered, the link to its host was lost, it was
                not STARTED), within the one `deadline`, after a backoff
                from 50 ms. A retry runs the handler again only if it is
                marked `@handler(idempotent=True)`; one that is not refuses
                the retry (the first failure is raised), and a callee that
                answered the request already gives that answer again, so a
                handler never runs twice for one request in one process.
                (A call that reached no instance at all is sent to another
                one in any case: nobody ran it.)

        Raises:
            RemoteError: the handler raised; it carries the remote traceback.
            RequestRefused: `service` is not a declared dependency.
            ServiceUnavailable: `service` is not STARTED, or stopped before
                answering.
            HandlerNotFound: `service` has no handler named `method`.
            RequestTimeout: the deadline passed.
            TypeError: an argument cannot be sent (see `handler`).
            ValueError: the request is larger than a port carries (1 MiB
                by default), or the deadline is out of bounds.
            MalformedRequest: the router refused the request as breaking
                the data plane's contract (another version's client, or a
                peer that bypasses this one).
        """
        if pick not in _PICKS:
            raise ValueError(f"pick is 'least-outstanding' or 'random', not {pick!r}")
        if (
            isinstance(retries, bool)
            or not isinstance(retries, int)
            or not 0 <= retries <= MAX_RETRIES
        ):
            raise ValueError(f"retries is an integer from 0 to {MAX_RETRIES}, not {retries!r}")
        rid = self._new_id()
        key = f"{self._token}.{rid}" if retries else ""
        call = Call(rid, service, method, args, kwargs, deadline, pick=_PICKS[pick], key=key)
        if not retries:
            return (await self._ask(call, deadline, service, method)).value
        return await self._retrying(call, deadline, retries)

    async def _retrying(self, call: Call, deadline: float, retries: int) -> Any:
        """`call`, sent again after each `ServiceUnavailable`, `retries` times at most."""
        started = anyio.current_time()
        first: ServiceUnavailable | None = None
        while True:
            try:
                return (await self._ask(call, call.timeout, call.service, call.method)).value
            except ServiceUnavailable as exc:
                first = first or exc
                left = deadline - (anyio.current_time() - started)
                pause = 0.05 * 2**call.attempt
                if call.attempt >= retries or left <= pause:
                    raise
                await anyio.sleep(pause)
                left -= pause
            except RequestRefused as exc:
                if call.attempt == 0 or first is None:
                    raise
                first.add_note(f"not sent again: {exc}")
                raise first from None
            attempt = call.attempt + 1
            call = replace(call, id=self._new_id(), timeout=left, attempt=attempt)

    @assert_state()
    async def request_all(
        self,
        service: str,
        method: str,
        *args: Any,
        deadline: float = DEFAULT_DEADLINE,
        **kwargs: Any,
    ) -> list[Answer]:
        """Call `method(*args, **kwargs)` on every replica of `service` at once.

        Each replica attached now gets the request (STARTED, or starting
        again after a refork; during a reload, the replica that is being
        replaced, not the one replacing it). The call returns when all
        have answered, or when `deadline` passes: a replica that has not
        answered by then is an `Answer` whose error is `RequestTimeout`. One
        replica's failure is its own `Answer`, never an exception for the
        whole call. A service that is not a pool answers as one replica, and
        so does each other host that runs the service.

        Returns:
            One `Answer` per replica, by replica index.

        Raises:
            RequestRefused, ServiceUnavailable, MalformedRequest: the
                request reached no replica (as for `request`).
            RequestTimeout: not even the list of replicas came back in time.
            TypeError, ValueError: as for `request`.
        """
        call = Call(self._new_id(), service, method, args, kwargs, deadline, pick="all")
        waiter = await self._wait(call, deadline, service, method, gathering=True)
        if waiter.instances is None:
            raise self._failure(waiter, service, method, deadline)
        parts = waiter.parts or {}
        answers = []
        for instance in sorted(waiter.instances):
            part = parts.get(instance)
            if part is None:
                late = RequestTimeout(
                    f"{service}.{method}: replica {instance} did not answer within the "
                    f"deadline of {deadline:g}s",
                    service,
                    method,
                )
                answers.append(Answer(instance, error=late))
                continue
            error = _error_of(part, service, method)
            answers.append(Answer(instance, None if error else part.value, error))
        return answers

    async def _ask(
        self,
        message: Call | Subscribe | Create | Configure,
        deadline: float,
        service: str,
        method: str,
    ) -> Reply:
        waiter = await self._wait(message, deadline, service, method)
        reply = waiter.reply
        if reply is None:
            raise self._failure(waiter, service, method, deadline)
        error = _error_of(reply, service, method)
        if error is not None:
            raise error
        return reply

    async def _wait(
        self,
        message: Call | Subscribe | Create | Configure,
        deadline: float,
        service: str,
        method: str,
        *,
        gathering: bool = False,
    ) -> _Waiter:
        """Send `message`; wait for its answer, or its parts, at most `deadline` seconds."""
        if (why := deadline_problem(deadline)) is not None:
            raise ValueError(f"{service}.{method}: {why}" if service else why)
        waiter = self._waiting[message.id] = _Waiter(gathering)
        try:
            # The deadline runs from before the send, as the callee's runs from after it.
            expires = anyio.current_time() + deadline
            try:
                if self._link.post(message):  # the client's timer ends the wait at the deadline
                    self._expire_at(expires, message.id)
                    await waiter.done.wait()
                    return waiter
            except (TypeError, ValueError, msgspec.EncodeError) as exc:  # ValueError: too large
                raise _unsendable(exc, service, method) from None
            with anyio.move_on_after(deadline):  # (a send that waits is bounded too)
                try:
                    await self._link.send(message)
                except (TypeError, ValueError, msgspec.EncodeError) as exc:
                    raise _unsendable(exc, service, method) from None
                await waiter.done.wait()
        finally:
            del self._waiting[message.id]
        return waiter

    def _new_id(self) -> int:
        self._last_id += 1
        return self._last_id

    def _expire_at(self, when: float, rid: int) -> None:
        """Have the timer end the wait of request `rid` at `when`, if it still waits then."""
        heap = self._expiries
        if heap is None:
            heap = self._expiries = []
        elif len(heap) >= 2 * len(self._waiting) + 1024:  # mostly answered ones: forget them
            heap[:] = [entry for entry in heap if entry[1] in self._waiting]
            heapq.heapify(heap)
        heapq.heappush(heap, (when, rid))
        timer = self._timer
        if timer is None:  # its first request: the timer starts (most clients never ask)
            timer = anyio.CancelScope(deadline=when)
            of(self).start_soon(self._expire)
            self._timer = timer  # (once the task is sure to run)
        elif when < timer.deadline:
            timer.deadline = when

    async def _expire(self) -> None:
        """The client's timer: wakes each waiting request whose deadline has passed.

        One task for all of them: a cancel scope per request would cost more
        than the rest of its way through the client.
        """
        heap, waiting = self._expiries, self._waiting
        assert heap is not None  # (made before this task is started)
        while True:
            assert self._timer is not None
            with self._timer:
                await anyio.sleep_forever()
            now = anyio.current_time()
            while heap and heap[0][0] <= now:
                waiter = waiting.get(heapq.heappop(heap)[1])
                if waiter is not None and not waiter.done.is_set():
                    waiter.expired = True
                    waiter.done.set()
            self._timer = anyio.CancelScope(deadline=heap[0][0] if heap else math.inf)

    def _failure(self, waiter: _Waiter, service: str, method: str, deadline: float) -> Exception:
        """Why a request that ended without its answer has none."""
        if waiter.reply is not None:  # (a request to all that reached no replica)
            error = _error_of(waiter.reply, service, method)
            assert error is not None
            return error
        if waiter.done.is_set() and not waiter.expired:
            return ServiceUnavailable(
                f"{self.name or 'the manager'} lost its link to the cluster before "
                f"{service} answered",
                service,
                method,
            )
        return RequestTimeout(
            f"{service}.{method}: no answer within the deadline of {deadline:g}s",
            service,
            method,
        )

    # -- events ------------------------------------------------------------------------

    @assert_state()
    async def emit(self, topic: str, payload: Any = None) -> None:
        """Publish `payload` on `topic`, to every subscribed service (this one too).

        It does not wait for delivery. Payloads travel as arguments do (see
        `handler`).
        """
        _check_topic(topic)
        try:
            await self._link.send(Event(topic, payload))
        except (TypeError, ValueError, msgspec.EncodeError) as exc:  # ValueError: too large
            kind = ValueError if isinstance(exc, ValueError) else TypeError
            raise kind(f"cannot send an event on {topic!r}: {exc}") from None

    @contextlib.asynccontextmanager
    async def subscribe(
        self, topic: str, *, buffer: int = DEFAULT_EVENT_BUFFER, deadline: float = DEFAULT_DEADLINE
    ) -> AsyncIterator[MemoryObjectReceiveStream[Event]]:
        """Receive the events published on `topic` while the context is open.

        Every event the router handles after this has entered is delivered,
        unless more than `buffer` are waiting: then new ones are dropped
        (and counted in `events_dropped`), so that a slow subscriber never
        slows the publisher.

        Example:
            ```python
            async with this_service().subscribe("orders") as events:
                async for event in events:
                    print(event.source, event.payload)
            ```
        """
        _check_topic(topic)
        async with self._subscription(topic, buffer, deadline) as events:
            yield events

    @contextlib.asynccontextmanager
    async def _subscription(
        self, topic: str, buffer: int, deadline: float
    ) -> AsyncIterator[MemoryObjectReceiveStream[Event]]:
        send, receive = anyio.create_memory_object_stream[Event](buffer)
        streams = self._subscriptions.setdefault(topic, [])
        streams.append(send)
        try:
            if topic not in self._registered:  # each early subscriber waits for the router
                await self._ask(Subscribe(self._new_id(), topic), deadline, "", "subscribe")
                self._registered[topic] = None
            with receive:
                yield receive
        finally:
            send.close()
            streams.remove(send)
            if not streams and self._subscriptions.get(topic) is streams:
                del self._subscriptions[topic]
                if topic in self._registered and of(self).state is STARTED:
                    del self._registered[topic]
                    with (
                        anyio.move_on_after(deadline, shield=True),
                        contextlib.suppress(ClusterError),
                    ):
                        await self._link.send(Unsubscribe(topic))

    # -- configuration ------------------------------------------------------------------

    def config(self, service: str | None = None) -> Config:
        """The configuration of this service (or, for the manager's client, of `service`).

        A small key-value store per service, kept by the manager (in Redis,
        shared by every host, when the cluster has `redis`), whose changes
        are announced to every watcher (`Config.watch`). A service reads and
        changes its own only; the manager's client names the service.

        Example:
            ```python
            config = this_service().config()
            await config.set("greeting", "hello")
            assert await config.get("greeting") == "hello"
            ```
        """
        if service is None:
            if not self.name:
                raise ValueError("the manager's client names the service: config('name')")
            service = ""
        elif self.name and service != self.name:
            raise ValueError(f"service {self.name!r} reaches its own configuration only")
        elif not NAME_RULE.fullmatch(service):
            raise ValueError(f"{service!r} is not a service name")
        return Config(self, service)

    # -- children ------------------------------------------------------------------------

    @assert_state()
    async def create(
        self,
        name: str,
        entry: str,
        *,
        code: str | None = None,
        depends_on: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        deadline: float = 60.0,
    ) -> None:
        """Create and start a child service, in a process of its own.

        The child depends on this service (it starts after it and stops
        before it), runs with this service's permissions, and is destroyed
        with it. This service's spec must allow it (`may_create_services`).
        Call it once this service is STARTED (from a background task, not
        from the raw start, which the child would wait for).

        Raises:
            RequestRefused: this service may not create services, or the
                description is refused (a bad name, a name in use...).
            RemoteError: the child failed to start.
            RequestTimeout: it was not STARTED within `deadline` seconds.
        """
        message = Create(
            self._new_id(), name, entry, code, tuple(depends_on), dict(env or {}), deadline
        )
        await self._ask(message, deadline, name, "create")

    # -- from the link -----------------------------------------------------------------------

    def deliver(self, message: AnyMessage) -> None:
        """Take one message from the router: called by the client's `Link`.

        It never waits and never raises (but for what a plain handler run
        here raises that is not an `Exception`, as from a task of the
        client): a message that breaks the contract is answered as invalid
        (when it has an id) and dropped; a reply wakes its request; a request
        runs its handler, a plain function here when the link has a task of
        its own (`Link.own_task`), anything else in a task of the client; an
        event goes to every subscription on its topic.
        """
        why = problem(message)
        if why is not None:  # from a router that breaks the contract: never acted on
            answer = invalid(message, f"{self.name or 'the manager'} refused a message: {why}")
            if answer is not None:
                of(self).start_soon(self._send, answer)
            logger.warning("%s dropped a malformed message: %s", self.name or "the manager", why)
            return
        if isinstance(message, Reply):
            waiter = self._waiting.get(message.id)
            if waiter is not None:  # else: the caller gave up already
                waiter.take(message)
        elif isinstance(message, Call):
            if message.key or not self._link.own_task or not self._answer_now(message):
                of(self).start_soon(self._answer, message)
        elif isinstance(message, Event):
            for stream in self._subscriptions.get(message.topic, ()):
                try:
                    stream.send_nowait(message)
                except anyio.WouldBlock:
                    self.events_dropped += 1

    def _answer_now(self, call: Call) -> bool:
        """Run the handler of `call` here, if it is a plain function of a STARTED
        service, and send its reply: whether it did (if not, a task answers).

        A plain function runs to its end once called (no deadline can cut it
        short), so a task of its own would add nothing but its cost. It runs
        only from the link's own task (`Link.own_task`), never a sender's.
        """
        target = self._target
        if target is None or of(target).state is not STARTED:
            return False
        found = _handler_of(target, call.method)
        if not getattr(found, MARK, False) or inspect.iscoroutinefunction(found):
            return False
        context = contextvars.copy_context()  # (what it sets stays its own)
        context.run(_current.set, self)  # the handler runs as this service
        try:
            result = context.run(getattr(target, call.method), *call.args, **call.kwargs)
        except Exception as exc:
            reply = Reply(call.id, kind="error", error=ErrorInfo.of(exc))
        else:
            if inspect.isawaitable(result):  # (a plain function that hands back a coroutine)
                of(self).start_soon(self._answer_awaitable, call, result)
                return True
            reply = Reply(call.id, result)
        try:
            if self._link.post(reply):
                return True
        except ClusterError:  # the router is gone: nobody is waiting
            return True
        except Exception:
            pass
        of(self).start_soon(self._send_reply, call, reply)
        return True

    async def _answer(self, call: Call) -> None:
        with serving_as(self):  # the handler runs as this service, whoever called it
            reply = await (self._run_once(call) if call.key else self._run_handler(call))
        await self._send_reply(call, reply)

    async def _answer_awaitable(self, call: Call, awaitable: Any) -> None:
        with serving_as(self):
            reply = await self._awaited(call, awaitable)
        await self._send_reply(call, reply)

    async def _send_reply(self, call: Call, reply: Reply) -> None:
        try:
            await self._send(reply)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            error = TypeError(f"the result of {self.name}.{call.method} cannot be sent: {exc}")
            await self._send(Reply(call.id, kind="error", error=ErrorInfo.of(error)))

    async def _send(self, reply: Reply) -> None:
        try:
            await self._link.send(reply)
        except ClusterError:
            pass  # the router is gone: nobody is waiting

    async def _run_once(self, call: Call) -> Reply:
        """Answer a call that may come more than once (it has a key): the handler runs
        for its first attempt, or for a later one only if it is idempotent; an
        attempt after a run gets that run's reply."""
        answers = self._answers
        known = answers.get(call.key)
        if known is not None:
            running = known[1]
            if isinstance(running, anyio.Event):  # an attempt is running: its reply is ours
                with anyio.move_on_after(call.timeout):
                    await running.wait()
                known = answers.get(call.key)
            if known is None or not isinstance(known[1], Reply):
                return _failed(call, "timeout", f"{self.name}.{call.method} ran past the deadline")
            return replace(known[1], id=call.id)
        if call.attempt > 0 and self._target is not None:
            found = (
                getattr(type(self._target), call.method, None) if call.method[:1] != "_" else None
            )
            if getattr(found, MARK, False) and not getattr(found, IDEMPOTENT, False):
                return _failed(
                    call,
                    "refused",
                    f"{self.name}.{call.method} is not idempotent: a retry could run it twice "
                    "(mark it @handler(idempotent=True) if that does no harm)",
                )
        now = anyio.current_time()
        if len(answers) >= MAX_ANSWERS:  # the past ones first, then the oldest
            for key in [k for k, (until, _) in answers.items() if until < now] or [
                next(iter(answers))
            ]:
                del answers[key]
        running = anyio.Event()
        answers[call.key] = (now + call.timeout + ANSWER_GRACE, running)
        try:
            reply = await self._run_handler(call)
        finally:
            running.set()
            answers.pop(call.key, None)
        if reply.kind in ("", "error"):  # the handler ran: a later attempt gets this
            answers[call.key] = (now + call.timeout + ANSWER_GRACE, reply)
        return reply

    async def _run_handler(self, call: Call) -> Reply:
        target = self._target
        if target is None or of(target).state is not STARTED:
            state = of(target).state.name if target is not None else "not running"
            return _failed(call, "unavailable", f"service {self.name!r} is not STARTED ({state})")
        found = _handler_of(target, call.method)
        if not getattr(found, MARK, False):
            known = ", ".join(handlers(target)) or "none"
            return _failed(
                call,
                "no-handler",
                f"service {self.name!r} has no handler {call.method!r} (its handlers: {known})",
            )
        try:
            result = getattr(target, call.method)(*call.args, **call.kwargs)
        except Exception as exc:
            return Reply(call.id, kind="error", error=ErrorInfo.of(exc))
        if inspect.isawaitable(result):
            return await self._awaited(call, result)
        return Reply(call.id, result)

    async def _awaited(self, call: Call, awaitable: Any) -> Reply:
        """The reply to `call` once its handler's `awaitable` is done, within its deadline."""
        with anyio.move_on_after(call.timeout):
            try:
                return Reply(call.id, await awaitable)
            except Exception as exc:
                return Reply(call.id, kind="error", error=ErrorInfo.of(exc))
        return _failed(call, "timeout", f"{self.name}.{call.method} ran past the caller's deadline")


#: `request(pick=...)`, as a `Call` says it.
_PICKS: Mapping[str, str] = {"least-outstanding": "", "random": "random"}


def _handler_of(target: object, method: str) -> object:
    """What `method` names on `target`'s class (None for a private name).

    Looked up on the class: a name from elsewhere never runs a property."""
    return getattr(type(target), method, None) if method[:1] != "_" else None


def _error_of(reply: Reply, service: str, method: str) -> Exception | None:
    """What a failed `reply` means to the caller (None: it did not fail)."""
    if reply.kind == "":
        return None
    if reply.kind == "error" and reply.error is not None:
        return RemoteError(reply.error, f"in {service}.{method}")
    failure = FAILURES.get(reply.kind, RequestError)
    return failure(reply.message, service, method)


def _unsendable(error: Exception, service: str, method: str) -> Exception:
    """Why a request could not be sent: too large (ValueError), or not encodable."""
    kind = ValueError if isinstance(error, ValueError) else TypeError
    return kind(f"cannot send a request to {service}.{method}: {error}")


def _failed(call: Call, kind: str, message: str) -> Reply:
    return Reply(call.id, kind=kind, message=message)


def _check_topic(topic: object) -> None:
    if not isinstance(topic, str) or not 0 < len(topic) <= MAX_NAME_LENGTH:
        raise ValueError(f"a topic is a string of 1 to {MAX_NAME_LENGTH} characters, not {topic!r}")
    if topic.startswith(RESERVED_TOPICS):
        raise ValueError(f"topics that begin {RESERVED_TOPICS!r} are the cluster's own: {topic!r}")
