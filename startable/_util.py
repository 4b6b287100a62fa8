"""Small helpers shared by the public namespaces."""

from __future__ import annotations

from collections.abc import Iterable


def fixup_module_metadata(
    module_name: str, names: Iterable[str], namespace: dict[str, object]
) -> None:
    """Make public objects report the public module they are exported from.

    `startable.Startable.__module__` then reads `"startable"` rather than
    the private module that defines it, in reprs, tracebacks and the docs.
    """
    for name in names:
        obj = namespace[name]
        if getattr(obj, "__module__", "").startswith(f"{module_name}._"):
            try:
                obj.__module__ = module_name
            except (AttributeError, TypeError):  # pragma: no cover - builtins, constants
                pass
