"""Small helpers shared by the public namespaces."""

from __future__ import annotations

from collections.abc import Iterable


def fixup_module_metadata(
    module_name: str,
    names: Iterable[str],
    namespace: dict[str, object],
    *,
    defined_in: str | None = None,
) -> None:
    """Make public objects report the public module they are exported from.

    `startable.Startable.__module__` then reads `"startable"` rather than
    the private module that defines it, in reprs, tracebacks and the docs.
    Objects defined in the module's private submodules are renamed, and
    those of `defined_in` (a private sibling that implements it).
    """
    private = f"{module_name}._"
    for name in names:
        obj = namespace[name]
        where = getattr(obj, "__module__", "")
        if where.startswith(private) or (defined_in is not None and where == defined_in):
            try:
                obj.__module__ = module_name
            except (AttributeError, TypeError):  # pragma: no cover - builtins, constants
                pass
