"""The `handler` marker: which methods of a service other services may call."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])
#: The attribute `handler` sets on a function.
MARK = "__startable_handler__"
#: The attribute `handler(idempotent=True)` sets on a function.
IDEMPOTENT = "__startable_idempotent__"


@overload
def handler(func: F, /) -> F: ...


@overload
def handler(*, idempotent: bool = False) -> Callable[[F], F]: ...


def handler(func: F | None = None, /, *, idempotent: bool = False) -> F | Callable[[F], F]:
    """Mark a method as callable by other services through `ServiceClient.request`.

    Only marked methods can be called, by their name; sync and async methods
    both work. Arguments and results travel as msgpack: `None`, `bool`,
    `int`, `float`, `str`, `bytes`, lists and dicts of them (a tuple arrives
    as a list).

    `@handler(idempotent=True)` says that running it twice for one request
    does no harm (a read, or a write of a value by a key): a caller's retry
    (`request(retries=...)`) may then run it again, after its first attempt
    was lost with the host that ran it. A handler that is not idempotent
    runs once per request at most: a retry of it is refused, unless the
    service answered the request already (then the retry gets that answer).

    Example:
        ```python
        class Store:
            @handler(idempotent=True)
            async def get(self, key: str) -> str | None: ...
        ```
    """

    def mark(method: F) -> F:
        setattr(method, MARK, True)
        setattr(method, IDEMPOTENT, idempotent)
        return method

    return mark if func is None else mark(func)


def handlers(target: object) -> list[str]:
    """The names of `target`'s handlers."""
    return sorted(
        name
        for name, value in inspect.getmembers(type(target))
        if not name.startswith("_") and getattr(value, MARK, False)
    )
