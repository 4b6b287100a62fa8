"""The identity map from an object to its Startable.

Entries are keyed by `id(obj)` rather than by the object, so objects that are
unhashable (attrs classes with `eq=True`) or that define `__eq__` work.
Each entry's `Startable` holds a weak reference to its object whose callback
removes the entry; CPython runs that callback while the object is being freed,
before its address (and so its `id`) can be reused, so a live object never
finds a stale entry under its `id`.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._startable import Startable

#: id(obj) -> the Startable of obj.
REGISTRY: dict[int, Startable] = {}


class ObjectRef(weakref.ref):  # type: ignore[type-arg]
    """A weak reference that remembers the registry key of its referent."""

    __slots__ = ("key",)
    key: int


def _forget(ref: ObjectRef) -> None:
    startable = REGISTRY.pop(ref.key, None)
    if startable is not None:
        startable._release()


def make_ref(obj: Any) -> ObjectRef:
    """A weak reference to `obj` that unregisters it when it dies."""
    ref = ObjectRef(obj, _forget)
    ref.key = id(obj)
    return ref
