"""Per-service configuration: a small key-value store each service reads and changes,
and whose every change is announced to the service's instances.

A service reaches its configuration through its client (`ServiceClient.config`),
with `Configure` messages the router checks (a service asks for its own; the
operator for any) and hands to the directory, which applies them to the
cluster's `ConfigStore`:

- `MemoryConfig`, in the manager's process, when the cluster runs on one host
  (it lasts as long as the manager);
- `RedisConfig` (`startable.cluster._redis.config`), shared by every host of
  the cluster, when the manager has a link to Redis.

A store calls its `on_change` with each change once it is stored, in the
order they were stored; the manager announces it on the service's reserved
topic (`config_topic`), which `Config.watch` subscribes to.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream

from .._errors import ClusterError, RequestRefused
from .contract import (
    DEFAULT_DEADLINE,
    MAX_CONFIG_BYTES,
    MAX_CONFIG_KEYS,
    ConfigChange,
    Configure,
    Event,
    Reply,
    config_change_problem,
    config_topic,
    config_value_problem,
)

if TYPE_CHECKING:
    from .client import ServiceClient


class ConfigStore(Protocol):
    """Where the configuration of a cluster's services is kept.

    Arguments are checked before a store sees them (names, value sizes). A
    store refuses a new key past `MAX_CONFIG_KEYS`, or a write that takes a
    service past `MAX_CONFIG_BYTES`, with `RequestRefused`, and raises
    `ClusterError` when it cannot be reached.
    """

    #: Whether the store is shared with other hosts (then the operator may
    #: name a service that runs on another host only).
    shared: bool

    async def get(self, service: str, key: str) -> Any:
        """`key`'s value in `service`'s configuration (None: unset)."""
        ...

    async def set(self, service: str, key: str, value: Any, writer: str = "") -> None:
        """Set `key` to `value`, and announce the change (made by service `writer`,
        empty: the operator)."""
        ...

    async def delete(self, service: str, key: str, writer: str = "") -> bool:
        """Delete `key` (and announce it, if it was there); whether it was."""
        ...

    async def items(self, service: str) -> dict[str, Any]:
        """Every key of `service`'s configuration, with its value."""
        ...


class MemoryConfig:
    """The configuration of a cluster on one host, in the manager's memory.

    Args:
        on_change: called with each change once it is made.
    """

    shared = False

    def __init__(self, on_change: Callable[[ConfigChange], object]) -> None:
        self.on_change = on_change
        # Each value as msgpack: a read decodes a copy of its own, and what is
        # held is what the budget counts.
        self._services: dict[str, dict[str, bytes]] = {}

    async def get(self, service: str, key: str) -> Any:
        data = self._services.get(service, {}).get(key)
        return None if data is None else _decode(data)

    async def set(self, service: str, key: str, value: Any, writer: str = "") -> None:
        keys = self._services.setdefault(service, {})
        data = _encode(value)
        refusal = over_budget(service, key, len(data), {k: len(v) for k, v in keys.items()})
        if refusal is not None:
            raise RequestRefused(refusal)
        keys[key] = data
        self.on_change(ConfigChange(service, key, _decode(data)))

    async def delete(self, service: str, key: str, writer: str = "") -> bool:
        keys = self._services.get(service, {})
        if key not in keys:
            return False
        del keys[key]
        self.on_change(ConfigChange(service, key, None, deleted=True))
        return True

    async def items(self, service: str) -> dict[str, Any]:
        return {key: _decode(data) for key, data in self._services.get(service, {}).items()}


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def over_budget(service: str, key: str, size: int, sizes: Mapping[str, int]) -> str | None:
    """Why setting `key` to a value of `size` bytes is refused, given the sizes of the
    values `service` holds now (None: it is not)."""
    if key not in sizes and len(sizes) >= MAX_CONFIG_KEYS:
        return too_many_keys(service, MAX_CONFIG_KEYS)
    total = sum(len(k.encode()) + n for k, n in sizes.items() if k != key)
    if total + len(key.encode()) + size > MAX_CONFIG_BYTES:
        return too_large(service, MAX_CONFIG_BYTES)
    return None


def too_many_keys(service: str, limit: int) -> str:
    return f"service {service!r} has {limit} configuration keys already"


def too_large(service: str, limit: int) -> str:
    return (
        f"service {service!r} would hold more than {limit} bytes of "
        "configuration (its keys and values)"
    )


async def apply(store: ConfigStore, service: str, message: Configure, writer: str = "") -> Reply:
    """Do what `message` (from service `writer`; empty: the operator) asks of
    `store`; its reply (never raises but for cancellation).

    The caller's deadline bounds the work too: past it, nobody waits for the answer.
    """
    op = message.op
    timeout = message.timeout if math.isfinite(message.timeout) else DEFAULT_DEADLINE
    try:
        with anyio.fail_after(timeout):
            if op == "get":
                value = await store.get(service, message.key)
            elif op == "set":
                await store.set(service, message.key, message.value, writer)
                value = None
            elif op == "delete":
                value = await store.delete(service, message.key, writer)
            else:
                value = await store.items(service)
    except RequestRefused as exc:
        return Reply(message.id, kind="refused", message=str(exc))
    except ClusterError as exc:
        why = f"the configuration of {service!r} cannot be reached: {exc}"
        return Reply(message.id, kind="unavailable", message=why)
    except TimeoutError:
        why = f"the store of {service!r}'s configuration did not answer within the deadline" + (
            " (the change may have been made)" if op in ("set", "delete") else ""
        )
        return Reply(message.id, kind="timeout", message=why)
    return Reply(message.id, value)


class ConfigChanges:
    """The changes of one service's configuration, as `Config.watch` yields them.

    Iterate it (`async for change in changes`) or call `receive`. Changes
    come in the order they were stored, from every host; a change that does
    not decode is skipped. A change whose `resync` is True says that some may
    have been missed (the host's link to Redis was lost and is back, or it
    could not keep up): read `items()` again. When more than the watch's
    buffer are waiting, new ones are dropped (counted in the client's
    `events_dropped`), with no resync: keep up, or read `items()` now and then.
    """

    def __init__(self, events: MemoryObjectReceiveStream[Event]) -> None:
        self._events = events

    async def receive(self) -> ConfigChange:
        """The next change (raises `anyio.EndOfStream` once the client is closed)."""
        while True:
            event = await self._events.receive()
            try:
                change = msgspec.convert(event.payload, ConfigChange)
            except msgspec.ValidationError:
                continue
            if not event.source and config_change_problem(change) is None:
                return change

    def __aiter__(self) -> ConfigChanges:
        return self

    async def __anext__(self) -> ConfigChange:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


class Config:
    """One service's configuration, as a client reaches it (see `ServiceClient.config`).

    Values are what msgpack encodes (None, booleans, numbers, strings, bytes,
    lists and dicts of them), `MAX_CONFIG_VALUE` bytes at most; keys are 1 to
    255 characters; a service has `MAX_CONFIG_KEYS` keys and `MAX_CONFIG_BYTES`
    bytes (keys and values) at most. Each call is one request to the manager,
    bounded by `deadline`. A key set to None reads as unset. A client has
    `MAX_CONFIGURING` requests waiting at most.

    Each method raises `RequestRefused` when the service may not (another
    service's configuration, a new key or a value past the limits),
    `ServiceUnavailable` when the store cannot be reached (Redis is down) or
    too many requests wait, and `RequestTimeout` when no answer comes within
    `deadline` (a `set` or `delete` may have been made even so).
    """

    def __init__(self, client: ServiceClient, service: str) -> None:
        self.client = client
        #: Whose configuration (empty: the client's own service).
        self.service = service

    def __repr__(self) -> str:
        return f"<Config of {self.service or self.client.name!r}>"

    async def _ask(
        self, op: str, key: str = "", value: Any = None, deadline: float = DEFAULT_DEADLINE
    ) -> Any:
        message = Configure(self.client._new_id(), op, self.service, key, value, deadline)
        return (await self.client._ask(message, deadline, self.service, f"config {op}")).value

    async def get(
        self, key: str, default: Any = None, *, deadline: float = DEFAULT_DEADLINE
    ) -> Any:
        """`key`'s value, or `default` when it is unset."""
        _check_key(key)
        value = await self._ask("get", key, deadline=deadline)
        return default if value is None else value

    async def set(self, key: str, value: Any, *, deadline: float = DEFAULT_DEADLINE) -> None:
        """Set `key` to `value`; every watcher of this configuration is told, on every host.

        Raises:
            ValueError: `value` is larger than `MAX_CONFIG_VALUE` once encoded.
            TypeError: msgpack cannot encode `value`.
        """
        _check_key(key)
        why = config_value_problem(value)
        if why is not None:
            raise (ValueError if "bytes at most" in why else TypeError)(why)
        await self._ask("set", key, value, deadline)

    async def delete(self, key: str, *, deadline: float = DEFAULT_DEADLINE) -> bool:
        """Delete `key`; whether it was set (watchers are told when it was)."""
        _check_key(key)
        return bool(await self._ask("delete", key, deadline=deadline))

    async def items(self, *, deadline: float = DEFAULT_DEADLINE) -> dict[str, Any]:
        """Every key with its value."""
        items = await self._ask("items", deadline=deadline)
        return dict(items) if isinstance(items, dict) else {}

    @contextlib.asynccontextmanager
    async def watch(
        self, *, buffer: int = 64, deadline: float = DEFAULT_DEADLINE
    ) -> AsyncIterator[ConfigChanges]:
        """Receive every change stored after this has entered, while it is open.

        Example:
            ```python
            config = this_service().config()
            async with config.watch() as changes:
                limit = await config.get("limit", 10)  # (read after the watch began)
                async for change in changes:
                    if change.key == "limit":
                        limit = change.value
            ```
        """
        topic = config_topic(self.service or self.client.name)
        async with self.client._subscription(topic, buffer, deadline) as events:
            yield ConfigChanges(events)


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not 0 < len(key) <= 255:
        raise ValueError(f"a configuration key is a string of 1 to 255 characters, not {key!r}")
