"""The rules for names, entries and numbers, shared by every layer of the cluster.

A service's name travels everywhere (file names, Redis keys, terminals,
frames), so every layer checks it against the same rule; every number a
user gives (a timeout, a limit) is checked by `number` before it is kept.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from ._errors import ServiceDefinitionError

#: A service name: a lowercase letter, then lowercase letters, digits, `-`
#: or `_`; 63 characters at most. Safe in file names, Redis keys, terminals.
NAME_RULE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_IDENTIFIER_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def check_name(name: object) -> str:
    """Return `name` if it follows `NAME_RULE`; raise `ServiceDefinitionError` otherwise."""
    if not isinstance(name, str) or NAME_RULE.fullmatch(name) is None:
        raise ServiceDefinitionError(
            f"bad service name {name!r}: a name is a lowercase letter followed by up to 62 "
            "lowercase letters, digits, '-' or '_'",
            name if isinstance(name, str) else None,
        )
    return name


def check_entry(entry: str, has_code: bool) -> None:
    """Raise `ValueError` unless `entry` names a module's or a file's attribute.

    That is `pkg.module:attr` or `path/to/file.py:attr`; with code, a name
    (`attr`, `ns.attr`) that the code defines.
    """
    if has_code:
        if _IDENTIFIER_PATH.fullmatch(entry) is None:
            raise ValueError(f"with code, the entry is a name defined by it, not {entry!r}")
        return
    module, colon, attribute = entry.rpartition(":")
    if colon and _IDENTIFIER_PATH.fullmatch(attribute):
        if entry_file(entry) is not None:
            if "\0" in module:
                raise ValueError("the path of an entry cannot hold a NUL character")
            return
        if _IDENTIFIER_PATH.fullmatch(module):
            return
    raise ValueError(
        f"an entry is 'package.module:attribute' or 'path/to/file.py:attribute', not {entry!r}"
    )


def entry_file(entry: str) -> str | None:
    """The file an entry names (`app/main.py` for `"app/main.py:App"`), or None
    if it names a module.

    The child imports such a file by its path (relative to its working
    directory), under the file's name when no other module has it.
    """
    module = entry.rpartition(":")[0]
    return module if module.endswith(".py") and len(module) > 3 else None


def number(
    *, above: float | None = None, at_least: float | None = None, integer: bool = False
) -> Callable[[object, Any, object], None]:
    """An attrs validator: a finite number (an `int` if `integer`; never a bool),
    greater than `above` and not less than `at_least`; None passes (a field
    typed `X | None` means "none" by it).

    Its errors name the class and the field: `ValueError` for a value out of
    range (NaN and the infinities too), `TypeError` for one of the wrong type.
    """

    def check(instance: object, attribute: Any, value: object) -> None:
        if value is None:
            return
        field = f"{type(instance).__name__}.{attribute.name}"
        kinds: tuple[type, ...] = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            kind = "an integer" if integer else "a number"
            raise TypeError(f"{field} must be {kind}, not {value!r}")
        assert isinstance(value, (int, float))
        if not math.isfinite(value):
            raise ValueError(f"{field} must be a finite number, not {value!r}")
        if above is not None and not value > above:
            limit = "positive" if above == 0 else f"greater than {above:g}"
            raise ValueError(f"{field} must be {limit}, not {value!r}")
        if at_least is not None and value < at_least:
            raise ValueError(f"{field} must be at least {at_least:g}, not {value!r}")

    return check


def now_and_then(count: int) -> bool:
    """Whether the `count`th time something is dropped or fails gets a log line:
    the 1st, 2nd, 4th, 8th... (a flood cannot fill the log; the count says how many)."""
    return count & (count - 1) == 0
