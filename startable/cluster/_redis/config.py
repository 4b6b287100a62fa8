"""The configuration of a cluster's services in Redis, shared by every host.

Each service's configuration is one hash, `…:cfg:<service>`: a field per
key, whose value is a 32-byte tag followed by the value in msgpack. The tag
is an HMAC, under a key derived from the cluster key for this alone, over
the cluster, the service, the key and the value, so a value written by
someone who reaches Redis without the key (or moved to another key or
service) is ignored when read, and counted.

A change is one script: the write, and the `PUBLISH` of its announcement on
the cluster's configuration channel, so every host hears of the changes in
the order Redis stored them. The announcement is an envelope
(`envelope.seal`) sealed by the writing host as the writing service (empty:
its operator), and its body is the `ConfigChange`; each host's link opens it
as it opens any envelope (tag, fields, replays, the sender's declared
services) and hands the change to `on_change`, the writer's own host too.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec

from .._data.config import too_large, too_many_keys
from .._data.contract import MAX_CONFIG_BYTES, MAX_CONFIG_KEYS, ConfigChange
from .._errors import ClusterError, RequestRefused
from .._ipc.wire import TAG_SIZE, mac

if TYPE_CHECKING:
    import coredis

    from .link import RedisLink

# KEYS[1] the service's hash; ARGV: field, stored value, most keys, channel,
# envelope, most bytes, tag size. -1: too many keys; -2: too many bytes (keys and
# values, tags not counted).
_SET: Final = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0
   and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return -1
end
local tag = tonumber(ARGV[7])
local total = #ARGV[1] + #ARGV[2] - tag
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if field ~= ARGV[1] then
    total = total + #field + redis.call('HSTRLEN', KEYS[1], field) - tag
  end
end
if total > tonumber(ARGV[6]) then
  return -2
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""
# KEYS[1] the service's hash; ARGV: field, channel, envelope. 1: it was there.
_DELETE: Final = """
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if removed > 0 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return removed
"""
T = TypeVar("T")
_IGNORED: Final = object()
_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder()


class RedisConfig:
    """The `ConfigStore` of a cluster with a link to Redis (`startable.cluster._data.config`).

    Args:
        link: this host's link (STARTED while the store is used). Changes are
            announced through it: set its `on_config` to hear of them.
    """

    shared = True

    def __init__(self, link: RedisLink, cluster_key: bytes) -> None:
        self.link = link
        self._key = mac(cluster_key, b"startable config v1")
        #: Values ignored when read since this store was made (a bad tag or encoding).
        self.ignored = 0

    @property
    def _client(self) -> coredis.Redis[bytes]:
        client = self.link.client
        if client is None:
            raise ClusterError("the Redis link is not open")
        return client

    def _tag(self, service: str, key: str, data: bytes) -> bytes:
        fields = _encoder.encode((self.link.cluster, service, key))  # (self-delimiting)
        return mac(self._key, fields, data)

    def _value(self, service: str, key: str, stored: object) -> Any:
        """The value in `stored`, checked (`_IGNORED`, and counted, when it fails a check)."""
        if not isinstance(stored, bytes) or len(stored) < TAG_SIZE:
            self.ignored += 1
            return _IGNORED
        tag, data = stored[:TAG_SIZE], stored[TAG_SIZE:]
        if not hmac.compare_digest(tag, self._tag(service, key, data)):
            self.ignored += 1
            return _IGNORED
        try:
            return _decoder.decode(data)
        except msgspec.DecodeError:
            self.ignored += 1
            return _IGNORED

    async def _run(self, script: str, service: str, args: list[Any]) -> object:
        keys = [self.link.keys.config(service)]
        return await _reached(self._client.eval(script, keys=keys, args=args))

    async def get(self, service: str, key: str) -> Any:
        stored = await _reached(self._client.hget(self.link.keys.config(service), key))
        value = None if stored is None else self._value(service, key, stored)
        return None if value is _IGNORED else value

    async def set(self, service: str, key: str, value: Any, writer: str = "") -> None:
        await _reached(self.link.declare())  # (a service new here is declared before it writes)
        data = _encoder.encode(value)
        stored = self._tag(service, key, data) + data
        channel, envelope = self.link.announcement(writer, ConfigChange(service, key, value))
        args: list[Any] = [
            key,
            stored,
            MAX_CONFIG_KEYS,
            channel,
            envelope,
            MAX_CONFIG_BYTES,
            TAG_SIZE,
        ]
        outcome = await self._run(_SET, service, args)
        if outcome in (-1, -2):
            raise RequestRefused(
                too_many_keys(service, MAX_CONFIG_KEYS)
                if outcome == -1
                else too_large(service, MAX_CONFIG_BYTES)
            )

    async def delete(self, service: str, key: str, writer: str = "") -> bool:
        await _reached(self.link.declare())
        change = ConfigChange(service, key, None, deleted=True)
        channel, envelope = self.link.announcement(writer, change)
        return await self._run(_DELETE, service, [key, channel, envelope]) == 1

    async def items(self, service: str) -> dict[str, Any]:
        stored = await _reached(self._client.hgetall(self.link.keys.config(service)))
        found: dict[str, Any] = {}
        for raw_key, raw in stored.items():
            try:
                key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            except UnicodeDecodeError:
                self.ignored += 1
                continue
            value = self._value(service, key, raw)
            if value is not _IGNORED:
                found[key] = value
        return found


async def _reached(request: Awaitable[T]) -> T:
    """`request`'s answer; Redis down or refusing is a `ClusterError`."""
    try:
        return await request
    except Exception as exc:
        if isinstance(exc, OSError | TimeoutError) or type(exc).__module__.startswith("coredis"):
            raise ClusterError(f"Redis did not answer: {exc}") from None
        raise
