"""The three decorators, and how a class's raw hooks are found.

`as_raw_start` and `as_raw_stop` leave a small descriptor in the class body
that behaves like the function it wraps; its `__set_name__` checks the class
as soon as the class statement finishes, so misuse fails at definition time
with the name `Class.method`. `assert_state` wraps the method in a guard
that reads the object's state and refuses to run the body in the wrong state.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Final, NoReturn, TypeVar, cast, overload

import attrs

from ._exceptions import DefinitionError, StateError
from ._lifecycle import State, describe_states
from ._registry import REGISTRY

F = TypeVar("F", bound=Callable[..., Any])

START: Final = "raw start"
STOP: Final = "raw stop"
_GUARD_ATTR: Final = "__startable_guard__"
_DRAIN_ATTR: Final = "__startable_drain__"
#: Seconds a stop waits for each call of a method guarded with `drain=True`.
DEFAULT_DRAIN_TIMEOUT: Final = 10.0


_ROLE_ATTR: Final = "__startable_role__"


class RawHook:
    """What `as_raw_start` / `as_raw_stop` leave in the class body.

    It only exists while the class statement runs: its `__set_name__` checks
    the class, then puts the plain function back, marked with its role. After
    that the method is an ordinary function (fast to call, patchable, and
    `super()` works), and the lifecycle finds it by its mark.
    """

    __func__: Callable[..., Any]

    def __init__(self, func: Callable[..., Any], role: str) -> None:
        self.__func__ = func
        self.role = role
        functools.update_wrapper(cast(Any, self), func)

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        return self.__func__.__get__(obj, objtype)

    def __set_name__(self, owner: type, name: str) -> None:
        setattr(self.__func__, _ROLE_ATTR, self.role)
        setattr(owner, name, self.__func__)
        find_raw_hooks(owner)  # raises DefinitionError on conflicts

    def __repr__(self) -> str:
        return f"<{self.role} {self.__func__.__qualname__}>"


def role_of(value: object) -> str | None:
    """`START`, `STOP` or None: the raw-hook role of a class attribute."""
    if isinstance(value, RawHook):
        return value.role
    return getattr(value, _ROLE_ATTR, None) if inspect.isfunction(value) else None


def _where(func: Any) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


def _check_method(func: Any, decorator: str) -> None:
    """Refuse anything that is not a plain function defined in a class body."""
    if (role := role_of(func)) is not None:
        raise DefinitionError(
            f"{_where(getattr(func, '__func__', func))} is already marked as {role}; "
            f"it cannot also be decorated with {decorator}"
        )
    if isinstance(func, staticmethod | classmethod | property):
        kind = type(func).__name__
        raise DefinitionError(
            f"{decorator} cannot decorate a {kind} ({_where(getattr(func, '__func__', func))}); "
            "it needs a plain method"
        )
    if not inspect.isfunction(func):
        raise DefinitionError(f"{decorator} must decorate a method, not {func!r}")
    qualname = func.__qualname__
    if "." not in qualname or qualname.endswith(f"<locals>.{func.__name__}"):
        raise DefinitionError(
            f"{decorator} must decorate a method in a class body; "
            f"{func.__module__}.{qualname} is not inside a class"
        )
    positional = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    if not positional:
        raise DefinitionError(f"{qualname} takes no 'self'; {decorator} needs an instance method")


def _required_after_self(func: Callable[..., Any]) -> list[inspect.Parameter]:
    params = list(inspect.signature(func).parameters.values())[1:]
    return [
        p
        for p in params
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def as_raw_start(func: F) -> F:
    """Mark the method that starts the object (its *raw start*).

    The raw start runs once per cycle, when `startable.of(obj).start()` is
    called in READY or STOPPED. It may be a coroutine function or a plain
    function, and takes no arguments besides `self`. If it raises, the
    object's raw stop runs with that error and `start()` re-raises it.

    Raises:
        DefinitionError: at class definition, if the class already has a raw
            start under another name, if the method is also marked as raw stop
            or guarded, or if it is not a method defined in a class body
            (on Python 3.11, as the `__cause__` of a `RuntimeError`: see
            `DefinitionError`).

    Example:
        ```python
        class Server:
            @startable.as_raw_start
            async def _open(self) -> None:
                self.listener = await anyio.create_tcp_listener(local_port=0)
        ```
    """
    _check_method(func, "as_raw_start")
    if getattr(func, _GUARD_ATTR, None) is not None:
        raise DefinitionError(
            f"{func.__qualname__} is guarded by assert_state; a raw start cannot be"
        )
    if extra := _required_after_self(func):
        raise DefinitionError(
            f"{func.__qualname__}: a raw start takes no arguments besides self, "
            f"but it requires {', '.join(p.name for p in extra)}"
        )
    return RawHook(func, START)  # type: ignore[return-value]


def as_raw_stop(func: F) -> F:
    """Mark the method that stops the object (its *raw stop*).

    The raw stop runs once per cycle: after a successful start, when the object
    is stopped, and after a failed raw start, with that error. If it declares a
    parameter besides `self`, it receives the stop reason (an exception, or
    None for a plain `stop()`). Whatever it does, the object ends STOPPED; if
    it raises, `stop()` raises that error.

    Raises:
        DefinitionError: at class definition, on the same misuses as
            `as_raw_start`, or if it requires more than one argument.

    Example:
        ```python
        class Server:
            @startable.as_raw_stop
            async def _close(self, err: BaseException | None) -> None:
                await self.listener.aclose()
        ```
    """
    _check_method(func, "as_raw_stop")
    if getattr(func, _GUARD_ATTR, None) is not None:
        raise DefinitionError(
            f"{func.__qualname__} is guarded by assert_state; a raw stop cannot be"
        )
    if len(extra := _required_after_self(func)) > 1:
        raise DefinitionError(
            f"{func.__qualname__}: a raw stop takes at most one argument besides self "
            f"(the stop reason), but it requires {', '.join(p.name for p in extra)}"
        )
    return RawHook(func, STOP)  # type: ignore[return-value]


@overload
def assert_state(func: F, /) -> F: ...
@overload
def assert_state(*states: State, drain: bool | float = False) -> Callable[[F], F]: ...
def assert_state(*states: Any, drain: bool | float = False) -> Any:
    """Guard a method so that it only runs in the given states (default STARTED).

    Called in any other state, the method raises `StateError` and its
    body does not run. Works on coroutine functions (checked when the call is
    awaited, before the body starts) and plain functions (checked when called).
    An object whose lifecycle was never touched counts as READY.

    The check is made when a call begins. A coroutine method that awaits
    halfway may still be running when a stop begins; with `drain`, the stop
    waits for such calls to finish before it runs the raw stop, so the raw
    stop never tears down what a call in flight still uses. Each call is
    waited for at most its drain timeout; then it is cancelled and raises
    `AbortedError`, and the raw stop runs.

    `@assert_state` without parentheses means `@assert_state()`.

    Args:
        *states: the states in which the method may run.
        drain: `True` for a drain timeout of 10 seconds, or the timeout in
            seconds (`math.inf`: wait as long as the call takes; a forced
            stop still cancels it). Only for coroutine methods. A draining
            call costs one cancel scope (a few microseconds); guards without
            drain cost nothing more.

    Raises:
        DefinitionError: if an argument is not a `State`, the decorated
            object is not a method (or is already a raw hook or guarded), or
            `drain` is given for a plain function or is not a positive number.

    Example:
        ```python
        class Cache:
            @startable.assert_state()
            async def get(self, key: str) -> bytes: ...

            @startable.assert_state(State.STARTED, State.STOPPING)
            def size(self) -> int: ...

            @startable.assert_state(drain=5.0)
            async def put(self, key: str, value: bytes) -> None: ...
        ```
    """
    if len(states) == 1 and not isinstance(states[0], State) and callable(states[0]):
        return assert_state()(states[0])
    for state in states:
        if not isinstance(state, State):
            raise DefinitionError(f"assert_state() takes State members, got {state!r}")
    allowed = frozenset(states) if states else frozenset({State.STARTED})
    timeout: float | None
    if drain is False:
        timeout = None
    elif drain is True:
        timeout = DEFAULT_DRAIN_TIMEOUT
    elif isinstance(drain, int | float) and drain > 0:
        timeout = float(drain)
    else:
        raise DefinitionError(
            f"assert_state(drain=...) takes True or a positive number of seconds, not {drain!r}"
        )
    return functools.partial(_guard, allowed=allowed, drain=timeout)


def _guard(func: F, *, allowed: frozenset[State], drain: float | None = None) -> F:
    _check_method(func, "assert_state")
    if getattr(func, _GUARD_ATTR, None) is not None:
        raise DefinitionError(f"{func.__qualname__} is already guarded by assert_state")
    if drain is not None and not inspect.iscoroutinefunction(func):
        raise DefinitionError(
            f"{func.__qualname__}: drain= is for coroutine methods; a plain method "
            "cannot be in flight when a stop begins"
        )

    def refuse(self: object, state: State) -> NoReturn:
        raise StateError(
            f"{type(self).__qualname__}.{func.__name__}() needs the object to be "
            f"{describe_states(allowed)}, but it is {state.name}",
            actual=state,
            expected=allowed,
        )

    if drain is None:
        guarded = _compile_guard(func, allowed, refuse)
    else:
        guarded = _draining_guard(func, allowed, refuse, drain)
    functools.update_wrapper(guarded, func)
    setattr(guarded, _GUARD_ATTR, allowed)
    if drain is not None:
        setattr(guarded, _DRAIN_ATTR, drain)
    return guarded  # type: ignore[return-value]


def _draining_guard(
    func: Callable[..., Any],
    allowed: frozenset[State],
    refuse: Callable[[Any, State], NoReturn],
    timeout: float,
) -> Callable[..., Any]:
    """The guard of `assert_state(drain=...)`: it also counts the call while it runs."""
    from ._calls import Calls
    from ._startable import of

    lookup = REGISTRY.get
    ready = State.READY
    name = func.__qualname__

    async def guarded(self: Any, /, *args: Any, **kwargs: Any) -> Any:
        s = lookup(id(self))
        state = ready if s is None else s._state
        if state not in allowed:
            refuse(self, state)
        if s is None:
            s = of(self)
        calls = s._calls
        if calls is None:
            calls = s._calls = Calls()
        return await calls.run(func, self, args, kwargs, timeout, name)

    return guarded


_P = inspect.Parameter
# Names the generated wrapper uses; a method with a parameter of one of these
# names gets the generic (slower) wrapper instead.
_GUARD_NAMES = frozenset(
    {
        "_sg_lookup",
        "_sg_id",
        "_sg_func",
        "_sg_refuse",
        "_sg_ready",
        "_sg_only",
        "_sg_allowed",
        "_sg_s",
        "_sg_state",
    }
)


def _compile_guard(
    func: Callable[..., Any], allowed: frozenset[State], refuse: Callable[[Any, State], NoReturn]
) -> Callable[..., Any]:
    """Build the guard around ``func`` with ``func``'s own parameter list.

    Forwarding ``*args, **kwargs`` costs more than the state check itself
    (about 0.4 µs a call on the benchmark machine), so the wrapper is
    generated with the exact signature, as attrs generates ``__init__``.
    """
    namespace: dict[str, Any] = {
        "_sg_lookup": REGISTRY.get,
        "_sg_id": id,
        "_sg_func": func,
        "_sg_refuse": refuse,
        "_sg_ready": State.READY,
        "_sg_allowed": allowed,
    }
    params = list(inspect.signature(func).parameters.values())
    if {p.name for p in params} & _GUARD_NAMES or any(p.name.startswith("_sg_d") for p in params):
        return _generic_guard(func, allowed, refuse)
    defs: list[str] = []
    call: list[str] = []
    bare_star = not any(p.kind is _P.VAR_POSITIONAL for p in params)
    for index, p in enumerate(params):
        text = p.name
        if p.default is not p.empty:
            namespace[f"_sg_d{index}"] = p.default
            text += f"=_sg_d{index}"
        if p.kind is _P.KEYWORD_ONLY and bare_star:
            defs.append("*")  # before the first keyword-only parameter
            bare_star = False
        if p.kind is _P.VAR_POSITIONAL:
            text = f"*{p.name}"
            call.append(text)
        elif p.kind is _P.VAR_KEYWORD:
            text = f"**{p.name}"
            call.append(text)
        elif p.kind is _P.KEYWORD_ONLY:
            call.append(f"{p.name}={p.name}")
        else:
            call.append(p.name)
        defs.append(text)
        if p.kind is _P.POSITIONAL_ONLY and (
            index + 1 == len(params) or params[index + 1].kind is not _P.POSITIONAL_ONLY
        ):
            defs.append("/")
    subject = params[0].name
    if len(allowed) == 1:
        (namespace["_sg_only"],) = allowed
        refused = "_sg_state is not _sg_only"
    else:
        refused = "_sg_state not in _sg_allowed"
    is_async = inspect.iscoroutinefunction(func)
    source = (
        f"{'async ' if is_async else ''}def guarded({', '.join(defs)}):\n"
        f"    _sg_s = _sg_lookup(_sg_id({subject}))\n"
        f"    _sg_state = _sg_ready if _sg_s is None else _sg_s._state\n"
        f"    if {refused}:\n"
        f"        _sg_refuse({subject}, _sg_state)\n"
        f"    return {'await ' if is_async else ''}_sg_func({', '.join(call)})\n"
    )
    exec(compile(source, f"<startable guard of {func.__qualname__}>", "exec"), namespace)
    return namespace["guarded"]  # type: ignore[no-any-return]


def _generic_guard(
    func: Callable[..., Any], allowed: frozenset[State], refuse: Callable[[Any, State], NoReturn]
) -> Callable[..., Any]:
    lookup = REGISTRY.get
    ready = State.READY
    if inspect.iscoroutinefunction(func):
        coro_func: Callable[..., Coroutine[Any, Any, Any]] = func

        async def guarded_async(self: Any, /, *args: Any, **kwargs: Any) -> Any:
            s = lookup(id(self))
            state = ready if s is None else s._state
            if state not in allowed:
                refuse(self, state)
            return await coro_func(self, *args, **kwargs)

        return guarded_async

    def guarded(self: Any, /, *args: Any, **kwargs: Any) -> Any:
        s = lookup(id(self))
        state = ready if s is None else s._state
        if state not in allowed:
            refuse(self, state)
        return func(self, *args, **kwargs)

    return guarded


def guarded_states(func: object) -> frozenset[State] | None:
    """The states in which a method guarded by `assert_state` may run.

    Returns None for anything that is not a guarded method. Works on the
    function taken from the class and on a bound method.

    Example:
        ```python
        assert startable.guarded_states(Cache.get) == {State.STARTED}
        ```
    """
    return getattr(func, _GUARD_ATTR, None)


def drain_timeout(func: object) -> float | None:
    """The drain timeout of a method guarded with `assert_state(drain=...)`.

    Returns None for a method without drain, and for anything that is not a
    guarded method.

    Example:
        ```python
        assert startable.drain_timeout(Cache.put) == 5.0
        ```
    """
    return getattr(func, _DRAIN_ATTR, None)


def find_raw_hooks(cls: type) -> dict[str, str]:
    """Map each role to the attribute name of that raw hook on `cls`.

    The nearest class in the MRO that marks a role decides its name; a
    subclass overrides a raw hook by defining a method with the same name
    (decorated or not). Marking a second method for a role that the class or
    a base already has is an error.

    Raises:
        DefinitionError: naming the two conflicting methods.
    """
    found: dict[str, tuple[str, type]] = {}
    for klass in cls.__mro__:
        for name, value in vars(klass).items():
            role = role_of(value)
            if role is None:
                continue
            if role not in found:
                found[role] = (name, klass)
                continue
            first_name, first_class = found[role]
            if first_name == name:
                continue  # overridden further down the MRO
            if first_class is klass:
                raise DefinitionError(
                    f"{klass.__qualname__} has two {role}s: "
                    f"{klass.__qualname__}.{first_name} and {klass.__qualname__}.{name}"
                )
            raise DefinitionError(
                f"{first_class.__qualname__}.{first_name} is marked as {role}, but "
                f"{klass.__qualname__}.{name} already is; override {name} instead"
            )
    return {role: name for role, (name, _) in found.items()}


@attrs.frozen
class ClassSpec:
    """How to drive the lifecycle of instances of one class."""

    start: str | None
    stop: str | None
    stop_takes_err: bool


_SPEC_ATTR: Final = "__startable_spec__"
# For the rare class whose metaclass refuses new attributes.
_SPECS: weakref.WeakKeyDictionary[type, ClassSpec] = weakref.WeakKeyDictionary()


def takes_reason(func: Callable[..., Any], *, bound: bool) -> bool:
    """Whether a raw stop declares a parameter for the stop reason."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    if not bound:
        params = params[1:]
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params
    )


def spec_for(cls: type) -> ClassSpec:
    """The (cached) lifecycle description of `cls`.

    Raises:
        TypeError: if `cls` has no raw start, raw stop or guarded method.
        DefinitionError: on conflicting raw hooks.
    """
    # Cached on the class itself (its own __dict__, never a base's): a plain
    # dict lookup, where a WeakKeyDictionary makes a weak reference per lookup.
    spec = cls.__dict__.get(_SPEC_ATTR) or _SPECS.get(cls)
    if spec is not None:
        return spec
    hooks = find_raw_hooks(cls)
    if not hooks and not any(
        guarded_states(value) is not None for klass in cls.__mro__ for value in vars(klass).values()
    ):
        raise TypeError(
            f"{cls.__qualname__} has no lifecycle: mark a method with startable.as_raw_start "
            "or startable.as_raw_stop (or guard one with startable.assert_state)"
        )
    stop = hooks.get(STOP)
    stop_takes_err = stop is not None and takes_reason(getattr(cls, stop), bound=False)
    spec = ClassSpec(start=hooks.get(START), stop=stop, stop_takes_err=stop_takes_err)
    try:
        setattr(cls, _SPEC_ATTR, spec)
    except (AttributeError, TypeError):
        _SPECS[cls] = spec
    return spec
