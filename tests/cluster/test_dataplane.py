"""Requests and events between services in this process (tests/cluster/test_dataplane_processes.py
runs the same plane between child processes)."""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import startable
from startable.cluster import (
    ClusterError,
    ConnectionPort,
    Event,
    HandlerNotFound,
    RemoteError,
    RequestRefused,
    RequestTimeout,
    ServiceClient,
    ServicesManager,
    ServiceSpec,
    ServiceUnavailable,
    handler,
    port_pair,
    this_service,
)
from startable.cluster._data.client import serving_as
from startable.cluster._data.contract import AnyMessage, Call, Reply
from startable.cluster._data.link import PortLink
from startable.cluster._data.router import Outbox
from startable.cluster._ipc.port import FAIR_TURNS

from .. import plane_services

pytestmark = pytest.mark.anyio


class Store(plane_services.Store):
    """The store of the process tests, with handlers that tell what happened to them."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = anyio.Event()
        self.entered = anyio.Event()

    @handler
    def put(self, key: str, value: object, *, note: str = "") -> str:  # type: ignore[override]
        self.data[key] = value
        return note

    @handler
    async def fail(self) -> None:
        raise KeyError("no such thing")

    @handler
    async def slow(self) -> None:
        self.entered.set()
        try:
            await anyio.sleep_forever()
        finally:
            self.cancelled.set()

    async def hidden(self) -> None:  # not a handler
        pass


Api = plane_services.Api


class Inbox:
    """An endpoint of the router that keeps the replies it is given."""

    def __init__(self) -> None:
        self.got: list[Reply] = []

    def put(self, message: AnyMessage) -> bool:
        if isinstance(message, Reply):
            self.got.append(message)
        return True


def cluster() -> tuple[ServicesManager, dict[str, object]]:
    made: dict[str, object] = {}

    def make(kind: type) -> object:
        made[kind.__name__] = obj = kind()
        return obj

    manager = ServicesManager(
        [
            ServiceSpec(name="store", factory=lambda: make(Store)),
            ServiceSpec(name="api", factory=lambda: make(Api), depends_on=["store"]),
            ServiceSpec(name="other", factory=lambda: make(Api)),
        ]
    )
    return manager, made


async def test_requests_reach_handlers_with_copied_values() -> None:
    manager, made = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            client = manager.client
            note = await client.request("store", "put", "k", (1, "x"), note="ok")
            assert note == "ok"
            assert await client.request("store", "get", "k") == [1, "x"]  # as msgpack gives it
            assert await client.request("api", "lookup", "k") == [1, "x"]  # api -> store
            assert made["Store"].data == {"k": [1, "x"]}  # type: ignore[attr-defined]


async def test_only_declared_dependencies_can_be_called() -> None:
    manager, _ = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            other = manager["other"].client
            assert other is not None
            refused = r"'other' may not call 'store'.*depends_on: none"
            with pytest.raises(RequestRefused, match=refused):
                await other.request("store", "get", "k")
            api = manager["api"].client
            assert api is not None
            with pytest.raises(RequestRefused, match="depends_on: store"):
                await api.request("other", "lookup", "k")


async def test_a_service_that_is_not_started_fails_fast() -> None:
    manager, _ = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            await manager.stop_service("store")
            stopped = r"'store' is not STARTED \(it is STOPPED\)"
            with pytest.raises(ServiceUnavailable, match=stopped):
                await manager.client.request("store", "get", "k", deadline=60)
            with pytest.raises(ServiceUnavailable, match="no service named 'nope'"):
                await manager.client.request("nope", "get", "k")


async def test_a_callee_that_stops_while_answering_releases_its_caller() -> None:
    manager, made = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager), anyio.create_task_group() as group:
            failures: list[BaseException] = []

            async def call() -> None:
                try:
                    await manager.client.request("store", "slow", deadline=60)
                except ServiceUnavailable as exc:
                    failures.append(exc)

            group.start_soon(call)
            store = made["Store"]
            await store.entered.wait()  # type: ignore[attr-defined]
            await manager.stop_service("store")
    assert len(failures) == 1
    assert "stopped before it answered" in str(failures[0])


async def test_the_callee_error_comes_back_with_its_traceback() -> None:
    manager, _ = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            with pytest.raises(RemoteError) as caught:
                await manager.client.request("store", "fail")
    error = caught.value
    assert error.info.type == "KeyError"
    # Where it was raised is an attribute and a note, not words glued to its message.
    assert error.where == "in store.fail"
    assert error.args == ("KeyError: 'no such thing'",)
    assert error.__notes__ == ["where: in store.fail"]
    assert "Remote traceback" in str(error)
    assert 'raise KeyError("no such thing")' in error.info.traceback


@pytest.mark.parametrize("method", ["nope", "hidden", "_start", "__init__"])
async def test_only_handlers_can_be_called(method: str) -> None:
    manager, _ = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            known = r"its handlers: fail, get, large, pid, put, role, seen, slow"
            with pytest.raises(HandlerNotFound, match=known):
                await manager.client.request("store", method)


async def test_the_caller_never_waits_past_its_deadline_and_the_handler_is_cancelled() -> None:
    manager, made = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            with pytest.raises(RequestTimeout, match=r"store\.slow: no answer within"):
                await manager.client.request("store", "slow", deadline=0.2)
            await made["Store"].cancelled.wait()  # type: ignore[attr-defined]
            # The plane is still fine afterwards.
            assert await manager.client.request("store", "put", "a", 1) == ""


class Stubborn:
    """A handler its deadline cannot cut short: only the caller's own timer ends the wait."""

    @startable.as_raw_start
    async def _start(self) -> None:
        pass

    @handler
    async def stubborn(self, seconds: float) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(seconds)


def stubborn_cluster() -> ServicesManager:
    return ServicesManager([ServiceSpec(name="stubborn", factory=Stubborn)])


async def test_a_short_deadline_behind_a_long_one_ends_first() -> None:
    """One timer ends the waits of a client's requests: a request with a short
    deadline, sent while one with a long deadline waits, does not wait for it."""
    manager = stubborn_cluster()
    with anyio.fail_after(10):
        async with startable.running(manager), anyio.create_task_group() as group:
            long_one = anyio.Event()

            async def long() -> None:
                with pytest.raises(RequestTimeout):
                    await manager.client.request("stubborn", "stubborn", 1, deadline=60)
                long_one.set()

            group.start_soon(long)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(RequestTimeout, match=r"no answer within the deadline of 0\.2s"):
                await manager.client.request("stubborn", "stubborn", 0.5, deadline=0.2)
            assert not long_one.is_set()  # (it waits on)
            group.cancel_scope.cancel()


async def test_requests_end_at_their_deadlines_after_the_manager_restarts() -> None:
    """The manager's client is started again with the manager: so is its timer."""
    manager = stubborn_cluster()
    for _ in range(2):
        with anyio.fail_after(5):
            async with startable.running(manager):
                with pytest.raises(RequestTimeout):
                    await manager.client.request("stubborn", "stubborn", 0.5, deadline=0.2)


async def test_answered_requests_do_not_pile_up_in_the_timer() -> None:
    manager, _ = cluster()
    with anyio.fail_after(30):
        async with startable.running(manager):
            client = manager.client
            for n in range(3000):
                await client.request("store", "put", "k", n)
            assert client._expiries is not None
            # (Each holds an id, not its reply; it is compacted once it reaches 1,024
            # more than twice the requests waiting, the one being sent included.)
            assert len(client._expiries) <= 1024 + 2
            assert await client.request("store", "get", "k") == 2999


@pytest.mark.parametrize("deadline", [0, -1, math.inf, math.nan])
async def test_a_deadline_is_finite_and_positive(deadline: float) -> None:
    manager, _ = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            with pytest.raises(ValueError, match="deadline"):
                await manager.client.request("store", "get", "k", deadline=deadline)


async def test_arguments_that_cannot_travel_are_refused_before_sending() -> None:
    manager, _ = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            with pytest.raises(TypeError, match=r"cannot send a request to store.put"):
                await manager.client.request("store", "put", "k", object())
            assert await manager.client.request("store", "get", "k") is None


async def test_events_reach_every_subscriber_with_their_source() -> None:
    manager, made = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            async with manager.client.subscribe("orders") as mine:
                api = manager["api"].client
                assert api is not None
                await api.emit("orders", {"id": 1})
                await manager.client.emit("orders", {"id": 2})
                await api.emit("elsewhere", "not for us")
                got = [await mine.receive(), await mine.receive()]
            store = made["Store"]
            await store.two_events.wait()  # type: ignore[attr-defined]
    assert [(e.source, e.payload) for e in got] == [("api", {"id": 1}), ("", {"id": 2})]
    assert [(e.source, e.payload) for e in store.events] == [  # type: ignore[attr-defined]
        ("api", {"id": 1}),
        ("", {"id": 2}),
    ]


async def test_a_full_subscription_drops_new_events_and_counts_them() -> None:
    manager, _ = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            client = manager.client
            async with client.subscribe("ticks", buffer=2) as ticks:
                for n in range(5):
                    await client.emit("ticks", n)
                await anyio.lowlevel.checkpoint()
                assert [ticks.receive_nowait().payload for _ in range(2)] == [0, 1]
            assert client.events_dropped == 3


async def test_this_service_outside_a_cluster_says_so() -> None:
    with pytest.raises(ClusterError, match="does not run as a service"):
        this_service()


async def test_the_manager_client_works_only_while_the_manager_runs() -> None:
    manager, _ = cluster()
    with anyio.fail_after(10):
        with pytest.raises(startable.StateError):
            await manager.client.request("store", "get", "k")


class Introspective(plane_services.Store):
    @handler
    def whoami(self) -> str:
        return this_service().name


async def test_a_handler_runs_as_its_own_service_whoever_calls() -> None:
    manager = ServicesManager(
        [
            ServiceSpec(name="store", factory=Introspective),
            ServiceSpec(name="api", factory=Api, depends_on=["store"]),
        ]
    )
    with anyio.fail_after(10):
        async with startable.running(manager):
            assert await manager.client.request("store", "whoami") == "store"
            api = manager["api"].client
            assert api is not None
            assert await api.request("store", "whoami") == "store"


async def test_a_message_larger_than_a_port_carries_is_refused_in_process_too() -> None:
    manager, _ = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            with pytest.raises(ValueError, match=r"cannot send a request to store\.put.*exceeds"):
                await manager.client.request("store", "put", "k", b"x" * 2**21)
            assert await manager.client.request("store", "get", "k") is None


@contextlib.asynccontextmanager
async def pumping() -> AsyncIterator[tuple[Outbox, ConnectionPort[AnyMessage]]]:
    """An outbox whose pump writes to a port, and the port at the other end."""
    manager = ServicesManager()
    ours, theirs = port_pair(AnyMessage)
    outbox = Outbox(manager.router, PortLink(ours))
    async with (
        startable.running(ours),
        startable.running(theirs),
        anyio.create_task_group() as group,
    ):
        group.start_soon(outbox.pump)
        yield outbox, theirs
        group.cancel_scope.cancel()


async def test_an_outbox_emptied_before_its_pump_woke_goes_on_pumping() -> None:
    """The node clears its outbox when it stops; its pump must not trip on that."""
    with anyio.fail_after(10):
        async with pumping() as (outbox, theirs):
            await anyio.wait_all_tasks_blocked()  # the pump waits for a message
            big = Event("big", "x" * 2**19, "x")  # more than the socket takes at once:
            outbox.put(big)  # the port writes the rest as the other end reads
            outbox.put(Event("lost", None, "x"))  # so this one waits in the outbox
            assert len(outbox) == 1
            outbox.clear()  # before the pump woke up
            await anyio.wait_all_tasks_blocked()  # it woke to nothing, and waits again
            assert (await theirs.receive()).topic == "big"
            outbox.put(Event("kept", None, "x"))
            assert (await theirs.receive()).topic == "kept"


async def test_an_answer_too_large_for_a_port_is_sent_as_an_error() -> None:
    """A reply the port refuses (from another host, where the limit is the
    envelope's) reaches the container as an error: it would wait out its deadline."""
    with anyio.fail_after(10):
        async with pumping() as (outbox, theirs):
            outbox.put(Reply(7, b"x" * 2**21))
            outbox.put(Reply(8, "small"))
            first, second = await theirs.receive(), await theirs.receive()
            assert isinstance(first, Reply) and first.id == 7 and first.kind == "error"
            assert first.error is not None and "the answer was not sent" in first.error.message
            assert isinstance(second, Reply) and second.value == "small"


class Counter:
    """Counts the runs of its handlers: one may run twice for a request, one may not."""

    def __init__(self) -> None:
        self.runs = 0

    @startable.as_raw_start
    async def _start(self) -> None:
        pass

    @handler
    def bump(self) -> int:
        self.runs += 1
        return self.runs

    @handler(idempotent=True)
    def read(self) -> int:
        self.runs += 1
        return self.runs


async def test_a_call_sent_again_runs_once_and_gets_the_first_answer() -> None:
    counter = Counter()
    manager = ServicesManager([ServiceSpec(name="counter", factory=lambda: counter)])
    with anyio.fail_after(10):
        async with startable.running(manager):
            inbox = Inbox()
            manager.router.attach(None, inbox)

            async def ask(rid: int, method: str, key: str, attempt: int) -> Reply:
                manager.router.handle(inbox, Call(rid, "counter", method, key=key, attempt=attempt))
                while not any(r.id == rid for r in inbox.got):  # noqa: ASYNC110 - a handler's task
                    await anyio.sleep(0.01)
                return next(r for r in inbox.got if r.id == rid)

            assert (await ask(1, "bump", "k1", 0)).value == 1
            again = await ask(2, "bump", "k1", 1)  # the same request: the same answer
            assert again.value == 1 and again.kind == "" and counter.runs == 1
            refused = await ask(3, "bump", "k2", 1)  # a retry it never saw: it may have run
            assert refused.kind == "refused" and "not idempotent" in refused.message
            assert (await ask(4, "read", "k3", 1)).value == 2  # idempotent: it runs
            assert (await ask(5, "bump", "", 0)).value == 3  # no key: an ordinary call
    assert counter.runs == 3


@pytest.mark.parametrize("retries", [-1, 17, 1.5, True])
async def test_retries_are_a_small_count(retries: object) -> None:
    manager, _ = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            with pytest.raises(ValueError, match="retries"):
                await manager.client.request("store", "get", "k", retries=retries)


class Plain:
    """Plain-function handlers, which a client over a port runs as their request is read."""

    def __init__(self) -> None:
        self.cancelled = anyio.Event()

    @startable.as_raw_start
    async def _start(self) -> None:
        pass

    @handler
    def whoami(self) -> str:
        return this_service().name

    @handler
    def fail(self) -> None:
        raise KeyError("plain failure")

    @handler
    def unsendable(self) -> object:
        return object()

    @handler
    def later(self, value: int) -> Any:
        """A plain function that hands back a coroutine: it is awaited all the same."""
        return self._later(value)

    async def _later(self, value: int) -> int:
        if value < 0:
            try:
                await anyio.sleep_forever()
            finally:
                self.cancelled.set()
        await anyio.lowlevel.checkpoint()
        return value * 2


@contextlib.asynccontextmanager
async def joined(target: object) -> AsyncIterator[ServiceClient]:
    """A caller's client and `target`'s, joined by a socketpair (as two containers
    are by the direct data-plane benchmark): the caller's client, once `target` runs."""
    ours, theirs = port_pair(AnyMessage)
    caller, callee = (
        ServiceClient("caller", PortLink(ours)),
        ServiceClient("plain", PortLink(theirs)),
    )
    callee.serve(target)
    # Started by hand: whichever client stops first cuts the other's link, which
    # then stops on its own (with a reason) as the owner closes.
    async with startable.open_owner():
        await startable.of(caller).start()
        await startable.of(callee).start()
        with serving_as(callee):
            await startable.of(target).start()
        yield caller


async def test_plain_handlers_over_a_port_answer_as_their_request_is_read() -> None:
    plain = Plain()
    with anyio.fail_after(10):
        async with joined(plain) as caller:
            assert await caller.request("plain", "whoami") == "plain"
            with pytest.raises(RemoteError, match="plain failure") as failed:
                await caller.request("plain", "fail")
            assert "KeyError" in failed.value.info.traceback
            with pytest.raises(RemoteError, match="cannot be sent"):
                await caller.request("plain", "unsendable")
            assert await caller.request("plain", "later", 21) == 42
            with pytest.raises(RequestTimeout):
                await caller.request("plain", "later", -1, deadline=0.2)
            await plain.cancelled.wait()  # the coroutine it handed back was cancelled
            with pytest.raises(HandlerNotFound):
                await caller.request("plain", "_later", 1)
            # Many at once, while the answers are written as they come.
            async with anyio.create_task_group() as group:
                for _ in range(50):
                    group.start_soon(caller.request, "plain", "whoami")
        other = Plain()
        async with joined(other) as caller:
            await startable.of(other).stop()
            with pytest.raises(ServiceUnavailable, match="not STARTED"):
                await caller.request("plain", "whoami")


async def test_an_outbox_keeps_its_order_while_its_pump_holds_a_message() -> None:
    """The pump took a message and is at a checkpoint before writing it (its port's
    fair turn): a message put then waits behind it, though the port is idle."""
    with anyio.fail_after(10):
        async with pumping() as (outbox, theirs):
            await anyio.wait_all_tasks_blocked()  # the pump waits for a message
            raw = outbox.link.port._raw
            assert raw is not None
            raw._turns = FAIR_TURNS - 1  # its next send is the one that lets others run
            outbox._queue.append(Event("t", 1, "x"))  # (as `put` leaves it when the
            outbox._filled.set()  # port was busy a moment ago)
            for _ in range(10):
                await anyio.lowlevel.checkpoint()
                if not len(outbox):  # the pump took it
                    outbox.put(Event("t", 2, "x"))
                    break
            assert [(await theirs.receive()).payload for _ in range(2)] == [1, 2]


@pytest.mark.parametrize("big_every", [5, 17])
async def test_an_outbox_keeps_the_order_of_one_emitters_events(big_every: int) -> None:
    count = 1000
    with anyio.fail_after(60):
        async with pumping() as (outbox, theirs), anyio.create_task_group() as group:

            async def produce() -> None:
                for i in range(count):
                    size = 300_000 if i % big_every == 0 else 10
                    while not outbox.put(Event("t", [i, "x" * size], "x")):  # full: again
                        await anyio.lowlevel.checkpoint()
                    if i % 3 == 0:
                        await anyio.lowlevel.checkpoint()

            group.start_soon(produce)
            got = [(await theirs.receive()).payload[0] for _ in range(count)]
            assert got == list(range(count))


MARK: contextvars.ContextVar[str] = contextvars.ContextVar("mark")


class Marks:
    @startable.as_raw_start
    async def _start(self) -> None:
        pass

    @handler
    def mark(self) -> str:
        before = MARK.get("unset")
        MARK.set("set by an earlier request")  # (a log's correlation id, say)
        return before


async def test_a_plain_handler_over_a_port_does_not_see_what_the_last_one_set() -> None:
    with anyio.fail_after(10):
        async with joined(Marks()) as caller:
            assert await caller.request("plain", "mark") == "unset"
            assert await caller.request("plain", "mark") == "unset"
