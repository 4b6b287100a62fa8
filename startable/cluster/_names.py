"""The rules for names and entries, shared by every layer of the cluster.

A service's name travels everywhere (file names, Redis keys, terminals,
frames), so every layer checks it against the same rule.
"""

from __future__ import annotations

import re

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
