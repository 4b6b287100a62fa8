"""Decorators, definition-time checks, of(), guards, and Startable without decorators."""

from __future__ import annotations

import gc
import sys
import weakref
from typing import Any

import anyio
import attrs
import pytest

import startable
from startable import DefinitionError, State, StateError

READY, STARTING, STARTED, STOPPING, STOPPED = State


def definition_error() -> Any:
    """pytest.raises for a DefinitionError raised while a class is created.

    Python 3.11 wraps errors from ``__set_name__`` in a RuntimeError; check
    the message on ``_unwrap(caught.value)``.
    """
    if sys.version_info < (3, 12):
        return pytest.raises((DefinitionError, RuntimeError))
    return pytest.raises(DefinitionError)


def _unwrap(exc: BaseException) -> BaseException:
    if isinstance(exc, RuntimeError) and isinstance(exc.__cause__, DefinitionError):
        return exc.__cause__
    return exc


class TestDefinitionErrors:
    def test_two_raw_starts_in_one_class(self) -> None:
        with definition_error() as caught:

            class Twice:
                @startable.as_raw_start
                async def a(self) -> None: ...

                @startable.as_raw_start
                async def b(self) -> None: ...

        error = _unwrap(caught.value)
        assert isinstance(error, DefinitionError)
        assert "Twice.a" in str(error) and "Twice.b" in str(error)

    def test_two_raw_stops_in_one_class(self) -> None:
        with definition_error() as caught:

            class Twice:
                @startable.as_raw_stop
                def a(self) -> None: ...

                @startable.as_raw_stop
                def b(self) -> None: ...

        assert "two raw stops" in str(_unwrap(caught.value))

    def test_one_method_both_start_and_stop(self) -> None:
        with pytest.raises(DefinitionError, match=r"Both\.m is already marked as raw stop"):

            class Both:
                @startable.as_raw_start
                @startable.as_raw_stop
                async def m(self) -> None: ...

    def test_guard_on_a_raw_start(self) -> None:
        with pytest.raises(DefinitionError, match=r"Guarded\.m"):

            class Guarded:
                @startable.as_raw_start
                @startable.assert_state()
                async def m(self) -> None: ...

    def test_raw_hook_then_guard(self) -> None:
        with pytest.raises(DefinitionError, match=r"Guarded\.m is already marked as raw start"):

            class Guarded:
                @startable.assert_state()
                @startable.as_raw_start
                async def m(self) -> None: ...

    def test_module_level_function(self) -> None:
        async def not_a_method(self: object) -> None: ...

        with pytest.raises(DefinitionError, match="not inside a class"):
            startable.as_raw_start(not_a_method)
        with pytest.raises(DefinitionError, match="not inside a class"):
            startable.assert_state()(not_a_method)

    def test_staticmethod_and_non_functions(self) -> None:
        with pytest.raises(DefinitionError, match="staticmethod"):

            class Static:
                @startable.as_raw_start  # type: ignore[arg-type]
                @staticmethod
                async def m() -> None: ...

        with pytest.raises(DefinitionError, match="must decorate a method"):
            startable.as_raw_stop(42)  # type: ignore[type-var]

    def test_raw_start_with_required_arguments(self) -> None:
        with pytest.raises(DefinitionError, match=r"Args\.m: a raw start takes no arguments"):

            class Args:
                @startable.as_raw_start
                async def m(self, x: int) -> None: ...

    def test_raw_stop_with_two_required_arguments(self) -> None:
        with pytest.raises(DefinitionError, match="at most one argument"):

            class Args:
                @startable.as_raw_stop
                async def m(self, err: object, extra: object) -> None: ...

    def test_subclass_adding_a_second_raw_start(self) -> None:
        class Base:
            @startable.as_raw_start
            async def open(self) -> None: ...

        with definition_error() as caught:

            class Sub(Base):
                @startable.as_raw_start
                async def connect(self) -> None: ...

        error = _unwrap(caught.value)
        assert isinstance(error, DefinitionError)
        assert "Sub.connect" in str(error) and "Base.open" in str(error)
        assert "override open instead" in str(error)

    def test_assert_state_arguments_must_be_states(self) -> None:
        with pytest.raises(DefinitionError, match="takes State members"):
            startable.assert_state("STARTED")  # type: ignore[call-overload]


class Plain:
    def __init__(self) -> None:
        self.calls: list[str] = []

    @startable.as_raw_start
    def _start(self) -> None:  # a sync raw start
        self.calls.append("start")

    @startable.as_raw_stop
    def _stop(self) -> None:  # takes no reason
        self.calls.append("stop")

    @startable.assert_state
    def sync_guarded(self) -> str:
        return "ok"

    @startable.assert_state(State.READY, State.STOPPED)
    async def only_idle(self) -> str:
        return "idle"


@attrs.define(eq=False)
class SlottedService:
    name: str
    reasons: list[BaseException | None] = attrs.field(factory=list)

    @startable.as_raw_start
    async def _start(self) -> None:
        await anyio.lowlevel.checkpoint()

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        self.reasons.append(err)

    @startable.assert_state()
    async def get(self) -> str:
        return self.name


@attrs.define  # eq=True makes instances unhashable
class HashlessService:
    @startable.as_raw_start
    async def _start(self) -> None: ...


class Derived(SlottedService):
    pass


class TestOf:
    def test_same_object_every_call(self) -> None:
        obj = Plain()
        assert startable.of(obj) is startable.of(obj)
        assert startable.of(startable.of(obj)) is startable.of(obj)

    def test_slotted_and_unhashable_attrs_classes(self) -> None:
        slotted = SlottedService("a")
        assert "__dict__" not in dir(slotted)
        assert startable.of(slotted) is startable.of(slotted)
        hashless = HashlessService()
        with pytest.raises(TypeError):
            hash(hashless)
        assert startable.of(hashless) is startable.of(hashless)
        assert startable.of(HashlessService()) is not startable.of(hashless)

    def test_does_not_keep_the_object_alive(self) -> None:
        for cls in (Plain, SlottedService):
            obj = cls() if cls is Plain else cls("x")  # type: ignore[call-arg]
            lifecycle = startable.of(obj)
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert ref() is None, cls
            assert lifecycle.target is None
            assert "<collected>" in repr(lifecycle)

    def test_class_without_lifecycle(self) -> None:
        class Nothing:
            pass

        with pytest.raises(TypeError, match="Nothing has no lifecycle"):
            startable.of(Nothing())
        with pytest.raises(TypeError, match="has no lifecycle"):
            startable.of([1, 2])

    def test_slots_without_weakref(self) -> None:
        class NoWeak:
            __slots__ = ()

            @startable.as_raw_start
            async def _start(self) -> None: ...

        with pytest.raises(TypeError, match="__weakref__"):
            startable.of(NoWeak())

    def test_subclass_inherits_and_can_override_by_name(self) -> None:
        class Base:
            def __init__(self) -> None:
                self.calls: list[str] = []

            @startable.as_raw_start
            async def open(self) -> None:
                self.calls.append("base")

        class Sub(Base):
            async def open(self) -> None:  # overrides, undecorated
                self.calls.append("sub")
                await super().open()

        async def main() -> list[str]:
            sub = Sub()
            async with startable.running(sub):
                pass
            return sub.calls

        assert anyio.run(main) == ["sub", "base"]

    def test_repr_shows_the_state(self) -> None:
        obj = Plain()
        assert repr(startable.of(obj)).endswith(": READY>")
        assert "Plain at 0x" in repr(startable.of(obj))
        assert repr(startable.Startable(name="pool")) == "<Startable pool: READY>"

    def test_repr_names_an_object_by_its_own_name(self) -> None:
        class Named(Plain):
            name = "kv"

        class BadName(Plain):
            @property
            def name(self) -> str:
                raise RuntimeError("no name")

        named, bad = Named(), BadName()
        expected = f"<Startable {Named.__qualname__} 'kv' at {id(named):#x}: READY>"
        assert repr(startable.of(named)) == expected
        assert repr(startable.of(bad)).startswith("<Startable ")  # (a failing name is left out)
        assert "'" not in repr(startable.of(bad))

    def test_public_objects_report_the_public_module(self) -> None:
        assert startable.Startable.__module__ == "startable"
        assert startable.of.__module__ == "startable"
        assert startable.State.__module__ == "startable"


@pytest.mark.anyio
class TestBehaviour:
    async def test_sync_raw_hooks_and_reason_free_raw_stop(self) -> None:
        obj = Plain()
        with anyio.fail_after(10):
            async with startable.running(obj):
                assert obj.sync_guarded() == "ok"
        assert obj.calls == ["start", "stop"]

    async def test_guards_refuse_without_running_the_body(self) -> None:
        obj = Plain()
        with pytest.raises(StateError) as caught:
            obj.sync_guarded()
        assert caught.value.actual is READY
        assert caught.value.expected == {STARTED}
        assert "Plain.sync_guarded() needs the object to be STARTED, but it is READY" in str(
            caught.value
        )
        with anyio.fail_after(10):
            assert await obj.only_idle() == "idle"
            async with startable.running(obj):
                with pytest.raises(StateError, match="READY, STOPPED"):
                    await obj.only_idle()
            assert await obj.only_idle() == "idle"

    async def test_guarded_coroutine_body_does_not_run(self) -> None:
        ran: list[str] = []

        class Svc:
            @startable.assert_state()
            async def work(self) -> None:
                ran.append("body")

        with anyio.fail_after(10):
            with pytest.raises(StateError):
                await Svc().work()
        assert ran == []

    async def test_guard_keeps_the_signature_and_is_a_coroutine_function(self) -> None:
        import inspect

        assert inspect.iscoroutinefunction(SlottedService.get)
        assert SlottedService.get.__name__ == "get"
        assert not inspect.iscoroutinefunction(Plain.sync_guarded)

    async def test_attrs_slotted_and_subclass_lifecycle(self) -> None:
        svc = Derived("d")
        with anyio.fail_after(10):
            async with startable.running(svc):
                assert await svc.get() == "d"
        assert svc.reasons == [None]
        assert startable.of(svc).state is STOPPED

    async def test_startable_from_callables(self) -> None:
        calls: list[object] = []

        async def open_pool() -> None:
            calls.append("open")

        def close_pool(err: BaseException | None) -> None:
            calls.append(("close", err))

        lifecycle = startable.Startable(open_pool, close_pool, name="pool")
        reason = RuntimeError("why")
        with anyio.fail_after(10):
            async with startable.open_owner():
                await lifecycle.start()
                assert lifecycle.state is STARTED
                await lifecycle.stop(reason)
        assert calls == ["open", ("close", reason)]
        assert startable.of(lifecycle) is lifecycle

    async def test_startable_without_hooks_is_a_plain_switch(self) -> None:
        lifecycle = startable.Startable()
        with anyio.fail_after(10):
            async with startable.running(lifecycle):
                assert lifecycle.state is STARTED
        assert lifecycle.state is STOPPED

    async def test_startable_rejects_non_callables(self) -> None:
        with pytest.raises(TypeError, match="raw_start must be callable"):
            startable.Startable(42)  # type: ignore[arg-type]

    async def test_a_stopped_object_is_freed_without_the_collector(self) -> None:
        """An object that ran a cycle, once dropped, leaves no garbage cycle behind:
        its lifecycle and its last cycle are freed by reference counting."""
        obj = Plain()
        with anyio.fail_after(10):
            async with startable.open_owner():
                await startable.of(obj).start()
                await startable.of(obj).stop()
        lifecycle = weakref.ref(startable.of(obj))
        gc.collect()
        gc.disable()
        try:
            del obj
            assert lifecycle() is None
        finally:
            gc.enable()

    async def test_a_lifecycle_kept_past_its_object_keeps_its_figures(self) -> None:
        obj = Plain()
        with anyio.fail_after(10):
            async with startable.open_owner():
                await startable.of(obj).start()
                await startable.of(obj).stop(ValueError("done"))
        lifecycle = startable.of(obj)
        del obj
        gc.collect()
        assert lifecycle.state is State.STOPPED
        assert lifecycle.statistics().cycle == 1
        assert isinstance(lifecycle.statistics().stop_reason, ValueError)
        assert repr(lifecycle) == "<Startable <collected>: STOPPED cycle 1>"

    async def test_lifecycle_of_a_collected_object_cannot_start(self) -> None:
        lifecycle = startable.of(Plain())
        gc.collect()
        with anyio.fail_after(10):
            async with startable.open_owner():
                with pytest.raises(startable.StartableError, match="keep a reference"):
                    await lifecycle.start()


class Signatures:
    """Guarded methods with every kind of parameter."""

    @startable.as_raw_start
    async def _start(self) -> None: ...

    @startable.assert_state()
    async def positional_only(self, a: int, b: int = 2, /) -> tuple[int, int]:
        return (a, b)

    @startable.assert_state()
    async def mixed(
        self, a: int, *args: int, key: str = "k", flag: bool, **extra: object
    ) -> tuple[object, ...]:
        return (a, args, key, flag, extra)

    @startable.assert_state()
    def keyword_only(self, *, x: list[int] | None = None) -> list[int] | None:
        return x

    @startable.assert_state(State.STARTED, State.STOPPING)
    def clashing_name(self, _sg_func: int, _sg_d0: int = 0) -> int:
        return _sg_func + _sg_d0

    @startable.assert_state()
    def defaults_are_the_same_objects(self, seen: list[int] = []) -> list[int]:  # noqa: B006
        seen.append(1)
        return seen


@pytest.mark.anyio
async def test_guards_forward_every_kind_of_parameter() -> None:
    import inspect

    obj = Signatures()
    with anyio.fail_after(10):
        async with startable.running(obj):
            assert await obj.positional_only(1) == (1, 2)
            assert await obj.positional_only(1, 3) == (1, 3)
            with pytest.raises(TypeError):
                await obj.positional_only(a=1)  # type: ignore[call-arg]
            assert await obj.mixed(1, 2, 3, flag=True, z=4) == (1, (2, 3), "k", True, {"z": 4})
            assert await obj.mixed(1, key="q", flag=False) == (1, (), "q", False, {})
            with pytest.raises(TypeError):
                await obj.mixed(1)  # type: ignore[call-arg]
            assert obj.keyword_only() is None
            assert obj.keyword_only(x=[1]) == [1]
            with pytest.raises(TypeError):
                obj.keyword_only([1])  # type: ignore[misc]
            assert obj.clashing_name(2, 3) == 5
            first = obj.defaults_are_the_same_objects()
            second = obj.defaults_are_the_same_objects()
            assert first is second  # the default object itself, as without the guard
        for name in ("positional_only", "mixed", "keyword_only", "clashing_name"):
            method = getattr(Signatures, name)
            assert inspect.signature(method) == inspect.signature(method.__wrapped__)
        with pytest.raises(StateError):
            await obj.mixed(1, flag=True)
        with pytest.raises(StateError, match="STARTED, STOPPING"):
            obj.clashing_name(1)


def test_name_is_a_short_label() -> None:
    obj = Plain()
    assert startable.of(obj).name == "Plain"
    assert startable.Startable(name="pool").name == "pool"
    assert startable.Startable().name == "Startable"
