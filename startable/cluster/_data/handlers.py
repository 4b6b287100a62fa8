"""The `handler` marker: which methods of a service other services may call."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
#: The attribute `handler` sets on a function.
MARK = "__startable_handler__"


def handler(func: F) -> F:
    """Mark a method as callable by other services through `ServiceClient.request`.

    Only marked methods can be called, by their name; sync and async methods
    both work. Arguments and results travel as msgpack: `None`, `bool`,
    `int`, `float`, `str`, `bytes`, lists and dicts of them (a tuple arrives
    as a list).

    Example:
        ```python
        class Store:
            @handler
            async def get(self, key: str) -> str | None: ...
        ```
    """
    setattr(func, MARK, True)
    return func


def handlers(target: object) -> list[str]:
    """The names of `target`'s handlers."""
    return sorted(
        name
        for name, value in inspect.getmembers(type(target))
        if not name.startswith("_") and getattr(value, MARK, False)
    )
