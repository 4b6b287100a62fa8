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


def has_lifecycle(obj: object) -> bool:
    """Whether `startable.of(obj)` would work on `obj`."""
    from ._markers import spec_for
    from ._startable import Startable

    if isinstance(obj, Startable):
        return True
    try:
        spec_for(type(obj))
    except TypeError:
        return False
    return True


def instance_of(obj: object, label: str) -> object:
    """`obj` if it has a lifecycle, else what calling it (a factory) returns.

    Raises:
        TypeError: naming `label`, if neither works.
    """
    if has_lifecycle(obj):
        return obj
    if not callable(obj):
        raise TypeError(f"{label} is neither an object with a lifecycle nor a factory: {obj!r}")
    made = obj()
    if not has_lifecycle(made):
        raise TypeError(f"{label}() returned {made!r}, which has no lifecycle")
    return made
