"""The router asks a `Directory`; here one written for the test, with two replicas of a name.

The router is synchronous and never waits, so these tests drive it directly:
a directory of our own (a second implementation of the protocol, beside the
manager's `LocalDirectory`) and endpoints that keep what they are given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from msgspec.structs import replace

from startable.cluster._data.contract import (
    AnyMessage,
    Call,
    Configure,
    Create,
    Event,
    Reply,
    Subscribe,
    problem,
)
from startable.cluster._data.directory import Directory, Endpoint, Pick, Refusal, pick
from startable.cluster._data.router import Router


class Inbox:
    """An endpoint that keeps what it is given (or refuses, when full)."""

    def __init__(self, name: str, full: bool = False) -> None:
        self.name = name
        self.full = full
        self.got: list[AnyMessage] = []

    def __repr__(self) -> str:
        return f"<Inbox {self.name}>"

    def put(self, message: AnyMessage) -> bool:
        if self.full:
            return False
        self.got.append(message)
        return True


class Replicated:
    """A directory in which anyone may call anyone that has an endpoint."""

    name = "test cluster"

    def __init__(self) -> None:
        self.table: dict[str, list[Endpoint]] = {}
        self.created: list[tuple[str, str]] = []

    def call_refusal(self, caller: str | None, callee: str) -> Refusal | None:
        if callee == "forbidden":
            return "refused", f"{caller!r} may not call {callee!r}"
        return None

    def create_refusal(self, source: str) -> str | None:
        return None if source == "maker" else f"{source!r} may not create services"

    def create(self, parent: str, create: Create, answer: Callable[[Reply], None]) -> None:
        self.created.append((parent, create.name))
        answer(Reply(create.id))

    def configure(
        self, source: str | None, service: str, message: Configure, answer: Callable[[Reply], None]
    ) -> None:
        answer(Reply(message.id, kind="refused", message="no configuration here"))

    def register(self, name: str, endpoint: Endpoint) -> None:
        self.table.setdefault(name, []).append(endpoint)

    def unregister(self, name: str, endpoint: Endpoint) -> None:
        self.table[name].remove(endpoint)

    def endpoints(self, name: str) -> Sequence[Endpoint]:
        return self.table.get(name, [])


def call(rid: int, service: str = "web", method: str = "get") -> Call:
    return Call(rid, service, method, (), {}, 5.0)


@pytest.fixture
def setup() -> tuple[Router, Replicated, Inbox, Inbox, Inbox]:
    directory = Replicated()
    router = Router(directory)
    caller, one, two = Inbox("api"), Inbox("web 1"), Inbox("web 2")
    router.attach("api", caller)
    router.attach("web", one)
    router.attach("web", two)
    return router, directory, caller, one, two


def numbered() -> tuple[Router, Inbox, Inbox, Inbox]:
    """A router, a caller, and two instances of "web" numbered 0 and 1."""
    router = Router(Replicated())
    caller, zero, one = Inbox("api"), Inbox("web 0"), Inbox("web 1")
    router.attach("api", caller)
    router.attach("web", zero, 0)
    router.attach("web", one, 1)
    return router, caller, zero, one


def test_both_directories_implement_the_protocol() -> None:
    from startable.cluster._system.directory import LocalDirectory
    from startable.cluster._system.manager import ServicesManager

    members = {name for name in vars(Directory) if not name.startswith("_")}
    assert members >= {"call_refusal", "configure", "create", "endpoints", "register"}
    for directory in (Replicated(), LocalDirectory(ServicesManager())):
        assert all(hasattr(directory, name) for name in members), directory
        assert list(directory.endpoints("web")) == []


def test_pick_by_least_outstanding_takes_the_oldest_among_equals() -> None:
    a, b, c = Inbox("a"), Inbox("b"), Inbox("c")
    assert pick([a, b, c], Pick.LEAST_OUTSTANDING, {}) == [a]
    assert pick([a, b, c], Pick.LEAST_OUTSTANDING, {a: 2, b: 1, c: 1}) == [b]
    assert pick([a, b, c], Pick.ALL, {a: 5}) == [a, b, c]
    assert pick([a, b, c], Pick.RANDOM, {}, chance=lambda endpoints: endpoints[-1]) == [c]
    assert pick([a, b, c], Pick.RANDOM, {})[0] in (a, b, c)
    for policy in Pick:
        assert pick([], policy, {}) == []


def test_a_request_needs_one_answer() -> None:
    with pytest.raises(ValueError, match="one answer"):
        Router(Replicated(), Pick.ALL)


def test_requests_go_to_the_replica_with_the_fewest_waiting(setup: tuple) -> None:
    router, _, caller, one, two = setup
    router.handle(caller, call(1))
    router.handle(caller, call(2))
    router.handle(caller, call(3))
    assert [len(one.got), len(two.got)] == [2, 1]  # 1 to one, 2 to two, 3 to one again
    (second,) = two.got
    assert isinstance(second, Call) and second.caller == "api"
    router.handle(two, Reply(second.id, value="from two"))
    router.handle(caller, call(4))  # two owes nothing now, one owes two answers
    assert len(two.got) == 2
    answers = [m for m in caller.got if isinstance(m, Reply)]
    assert [(r.id, r.value) for r in answers] == [(2, "from two")]


def test_only_the_replica_that_was_asked_answers(setup: tuple) -> None:
    router, _, caller, one, two = setup
    router.handle(caller, call(7))
    (forwarded,) = one.got
    router.handle(two, Reply(forwarded.id, value="forged"))  # the other replica: ignored
    router.handle(one, Reply(forwarded.id, value="real"))
    router.handle(one, Reply(forwarded.id, value="again"))  # answered already: ignored
    assert [(m.id, m.value) for m in caller.got if isinstance(m, Reply)] == [(7, "real")]


def test_a_replica_that_goes_fails_only_its_own_requests(setup: tuple) -> None:
    router, _, caller, one, two = setup
    router.handle(caller, call(1))
    router.handle(caller, call(2))
    router.detach(one)
    (failed,) = caller.got
    assert isinstance(failed, Reply) and (failed.id, failed.kind) == (1, "unavailable")
    assert failed.message == "service 'web' stopped before it answered"
    router.handle(caller, call(3))  # the other replica takes the rest
    assert len(two.got) == 2 and not router.attached(one)
    router.handle(one, call(9))  # a detached endpoint's messages reach no one
    assert len(caller.got) == 1


def test_a_name_with_no_endpoint_left_cannot_be_reached(setup: tuple) -> None:
    router, _, caller, one, two = setup
    router.detach(one)
    router.detach(two)
    router.detach(two)  # (twice is fine)
    router.handle(caller, call(5))
    (reply,) = caller.got
    assert isinstance(reply, Reply) and reply.kind == "unavailable"
    assert reply.message == "service 'web' cannot be reached: its data socket is closed"


def test_the_directory_refuses_before_any_endpoint_is_picked(setup: tuple) -> None:
    router, _, caller, _one, _two = setup
    router.handle(caller, call(1, service="forbidden"))
    (reply,) = caller.got
    assert isinstance(reply, Reply) and reply.kind == "refused"
    assert reply.message == "'api' may not call 'forbidden'"


def test_a_full_replica_fails_the_request_at_once(setup: tuple) -> None:
    router, _, caller, one, two = setup
    one.full = two.full = True
    router.handle(caller, call(1))
    (reply,) = caller.got
    assert isinstance(reply, Reply) and reply.kind == "unavailable"
    assert "is not keeping up" in (reply.message or "")


def test_each_replica_subscribes_for_itself(setup: tuple) -> None:
    router, _, caller, one, two = setup
    router.handle(one, Subscribe(1, "news"))
    router.handle(caller, Event("news", None, ""))
    assert [type(m) for m in one.got] == [Reply, Event] and two.got == []
    assert router.topics_of("web") == {"news"} and router.topics_of("api") == set()
    router.detach(one)
    assert router.topics == {}


def test_creation_is_asked_of_the_directory_after_its_permission(setup: tuple) -> None:
    router, directory, caller, _one, _two = setup
    maker = Inbox("maker")
    router.attach("maker", maker)
    create = Create(3, "child", "mod:Child", None, (), {}, 5.0)
    router.handle(caller, create)
    router.handle(maker, create)
    assert directory.created == [("maker", "child")]
    (refused,) = caller.got
    assert isinstance(refused, Reply) and refused.message == "'api' may not create services"
    (created,) = maker.got
    assert isinstance(created, Reply) and created.kind == ""


def test_a_request_to_all_is_a_fan_out_then_a_part_from_each_instance() -> None:
    router, caller, zero, one = numbered()
    router.handle(caller, replace(call(7), pick="all"))
    assert caller.got == [Reply(7, [0, 1], kind="fan-out")]
    (to_zero,), (to_one,) = zero.got, one.got
    assert isinstance(to_zero, Call) and isinstance(to_one, Call)
    assert to_zero.pick == to_one.pick == ""  # each instance sees a plain request
    router.handle(one, Reply(to_one.id, value="one"))
    router.handle(zero, Reply(to_one.id, value="not asked"))  # only the asked one answers
    router.detach(zero)  # gone before it answered: its own part fails
    assert caller.got[1:] == [
        Reply(7, "one", part=1),
        Reply(7, kind="unavailable", message="service 'web' stopped before it answered", part=0),
    ]
    router.handle(caller, replace(call(8), pick="random"))
    assert len(one.got) == 2  # the only one left


def test_a_bad_pick_or_part_breaks_the_contract(setup: tuple) -> None:
    router, _, caller, _, _ = setup
    router.handle(caller, replace(call(9), pick="everyone"))
    (refused,) = caller.got
    assert isinstance(refused, Reply) and refused.kind == "invalid"
    assert "a pick is one of" in refused.message
    for bad in (
        Reply(1, kind="fan-out", value=[0, 0]),
        Reply(1, kind="fan-out", value="all"),
        Reply(1, kind="fan-out", value=[-1]),
        Reply(1, part=-2),
        Reply(1, part=1 << 40),
    ):
        assert problem(bad) is not None, bad


@pytest.mark.anyio
async def test_a_request_to_all_ends_at_its_deadline_with_the_silent_ones_timed_out() -> None:
    import anyio

    import startable
    from startable.cluster import RequestTimeout, ServiceClient
    from startable.cluster._data.router import LocalLink

    directory = Replicated()
    router = Router(directory)
    zero, silent = Inbox("web 0"), Inbox("web 1")
    router.attach("web", zero, 0)
    router.attach("web", silent, 1)
    client = ServiceClient("api", LocalLink(router, "api"))
    with anyio.fail_after(10):
        async with startable.running(client), anyio.create_task_group() as group:

            async def answer_zero() -> None:
                while not zero.got:
                    await anyio.lowlevel.checkpoint()
                (asked,) = zero.got
                assert isinstance(asked, Call)
                router.handle(zero, Reply(asked.id, value="zero"))

            group.start_soon(answer_zero)
            answers = await client.request_all("web", "get", deadline=0.2)
    assert [(a.replica, a.value) for a in answers] == [(0, "zero"), (1, None)]
    assert isinstance(answers[1].error, RequestTimeout)
    assert "replica 1 did not answer within the deadline of 0.2s" in str(answers[1].error)


def test_a_service_may_have_max_in_flight_requests_waiting_and_no_more() -> None:
    from startable.cluster import MAX_IN_FLIGHT

    router, caller, zero, one = numbered()
    for rid in range(1, MAX_IN_FLIGHT):
        router.handle(caller, call(rid))
    assert caller.got == [] and len(zero.got) + len(one.got) == MAX_IN_FLIGHT - 1
    router.handle(caller, replace(call(MAX_IN_FLIGHT), pick="all"))  # two more: refused whole
    (refused,) = caller.got
    assert isinstance(refused, Reply) and refused.kind == "unavailable"
    assert f"{MAX_IN_FLIGHT} requests of this service wait for answers" in refused.message
    assert len(zero.got) + len(one.got) == MAX_IN_FLIGHT - 1  # nothing of it was sent
    router.handle(caller, call(MAX_IN_FLIGHT + 1))  # the last one that fits
    router.handle(caller, call(MAX_IN_FLIGHT + 2))
    assert [r.kind for r in caller.got if isinstance(r, Reply)] == ["unavailable"] * 2
    first = zero.got[0]
    assert isinstance(first, Call)
    router.handle(zero, Reply(first.id, value="done"))  # one answered: room for one more
    router.handle(caller, call(MAX_IN_FLIGHT + 3))
    assert len(zero.got) + len(one.got) == MAX_IN_FLIGHT + 1


def test_a_callee_cannot_announce_a_fan_out() -> None:
    from startable.cluster._data.client import _Waiter

    router, caller, zero, _ = numbered()
    router.handle(caller, replace(call(7), pick="all"))
    (to_zero,) = zero.got
    router.handle(zero, Reply(to_zero.id, [], kind="fan-out"))  # a forged list of replicas
    waiter = _Waiter(gathering=True)
    for reply in caller.got:
        waiter.take(reply)
    waiter.take(Reply(7, [5], kind="fan-out", part=0))  # and a second one is not taken
    assert not waiter.done.is_set() and waiter.instances == [0, 1]
    assert router.malformed == {"web": 1}


def test_a_redirected_request_goes_to_another_endpoint_or_fails(setup: tuple) -> None:
    router, _, caller, one, two = setup
    router.handle(caller, call(1))
    forwarded = one.got[-1]
    assert isinstance(forwarded, Call) and router.outstanding(one) == 1
    router.redirect(forwarded.id, forwarded)  # `one` never ran it
    assert two.got == [forwarded] and router.outstanding(one) == 0
    assert router.outstanding(two) == 1
    router.handle(two, Reply(forwarded.id, "from two"))
    assert caller.got == [Reply(1, "from two")]
    # With no other endpoint, the caller is told at once.
    router.detach(one)
    router.handle(caller, call(2))
    again = two.got[-1]
    assert isinstance(again, Call)
    router.redirect(again.id, again)
    answer = caller.got[-1]
    assert isinstance(answer, Reply) and answer.id == 2 and answer.kind == "unavailable"
    assert "no instance left" in answer.message
    router.redirect(12345, again)  # an id it does not know: nothing happens
    assert router.outstanding(two) == 0


def test_a_foreign_endpoint_calls_as_its_name_but_is_never_called_and_never_relayed(
    setup: tuple,
) -> None:
    router, directory, _, one, _ = setup
    relayed: list[Event] = []
    router.relay = relayed.append
    foreign = Inbox("web on another host")
    router.attach("web", foreign, foreign=True)
    assert foreign not in directory.endpoints("web")
    router.handle(foreign, call(1, "web"))  # it calls as "web"
    forwarded = one.got[-1]
    assert isinstance(forwarded, Call) and forwarded.caller == "web"
    router.handle(foreign, Event("t", 1))
    router.handle(one, Event("t", 2))
    assert [event.payload for event in relayed] == [2]  # only this host's own events go out
    router.detach(foreign)
    assert not router.attached(foreign) and foreign not in directory.endpoints("web")
