"""The registry: who is live, for each service of a cluster, in Redis.

Each live instance of a service is a member of the sorted set
`…:svc:<service>`, scored by the time it expires (Redis's own clock, in
ms: one clock for every host), and has a hash `…:inst:<id>` with what it
is (`service`, `host`, `pid`, `started`), its `load`, and a `tag`: an HMAC
under the cluster key over what it is, so that an entry written by someone
who reaches Redis without the key is ignored. Liveness is expiry: an
instance beats every `ttl / 3`, and a reader ignores members whose score is
past. Any member sweeps (`sweep`), by service, never with `KEYS`: the set
`…:services` lists the names.

Every write is one script (one round trip, atomic): `register`, `beat`,
`leave`, `sweep`; `live` reads a service's instances in one script too.
Every field read back is checked before it is used.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs

from .._ipc.wire import mac
from .._names import NAME_RULE
from .envelope import INSTANCE_RULE

if TYPE_CHECKING:
    import coredis

#: The most a `load` may say (outstanding requests).
MAX_LOAD: Final = 1 << 31
_HOST_RULE: Final = re.compile(r"[\x21-\x7e]{1,255}")

# KEYS[1] the service's set, KEYS[2] the instance's hash, KEYS[3] the names;
# ARGV: id, ttl ms, service, host, pid, load, tag. The start time is Redis's.
_REGISTER: Final = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], 'service', ARGV[3], 'host', ARGV[4], 'pid', ARGV[5],
           'load', ARGV[6], 'tag', ARGV[7], 'started', ms)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 2)
redis.call('SADD', KEYS[3], ARGV[3])
return ms
"""
# KEYS[1] the service's set, KEYS[2] the instance's hash; ARGV: id, ttl ms, load.
# 0: it was not registered (swept, or never): register again.
_BEAT: Final = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
if redis.call('ZADD', KEYS[1], 'XX', 'CH', ms + tonumber(ARGV[2]), ARGV[1]) == 0
   and redis.call('ZSCORE', KEYS[1], ARGV[1]) == false then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[2], 'load', ARGV[3])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 2)
return 1
"""
_LEAVE: Final = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""
# KEYS[1] the host's hash; ARGV: ttl ms, services, tag.
_DECLARE: Final = """
redis.call('HSET', KEYS[1], 'services', ARGV[2], 'tag', ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""
# KEYS[1] the service's set; ARGV[1] the prefix of instance hashes. How many it removed.
_SWEEP: Final = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms, 'LIMIT', 0, 1000)
for _, id in ipairs(dead) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('DEL', ARGV[1] .. id)
end
return #dead
"""
# KEYS[1] the service's set; ARGV[1] the prefix of instance hashes.
# {now, id, expiry, fields..., id, expiry, fields...}, live ones only.
_LIVE: Final = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local found = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ms, '+inf',
                         'WITHSCORES', 'LIMIT', 0, 10000)
local out = {ms}
for i = 1, #found, 2 do
  table.insert(out, found[i])
  table.insert(out, found[i + 1])
  table.insert(out, redis.call('HGETALL', ARGV[1] .. found[i]))
end
return out
"""


class Keys:
    """The key layout of one cluster: every key starts `startable:{<cluster>}:`.

    The braces are a Redis Cluster hash tag: one cluster's keys share a slot,
    so its scripts may touch several.
    """

    def __init__(self, cluster: str) -> None:
        if not NAME_RULE.fullmatch(cluster):
            raise ValueError(f"a cluster's name follows {NAME_RULE.pattern}, not {cluster!r}")
        self.cluster = cluster
        self.prefix = f"startable:{{{cluster}}}:"

    def service(self, name: str) -> str:
        return f"{self.prefix}svc:{name}"

    def instance(self, instance: str) -> str:
        return f"{self.prefix}inst:{instance}"

    @property
    def services(self) -> str:
        return f"{self.prefix}services"

    def host(self, host: str) -> str:
        """The hash of what a host says it runs (`Registry.declare`)."""
        return f"{self.prefix}host:{host}"

    def inbox(self, instance: str) -> str:
        """The channel of calls and replies for `instance` (a host's link)."""
        return f"{self.prefix}to:{instance}"

    @property
    def events(self) -> str:
        """The channel of every event emitted on any host."""
        return f"{self.prefix}events"

    def config(self, service: str) -> str:
        """The hash of `service`'s configuration (`RedisConfig`)."""
        return f"{self.prefix}cfg:{service}"

    @property
    def config_changes(self) -> str:
        """The channel every configuration change is announced on."""
        return f"{self.prefix}cfg-changes"


@attrs.frozen
class Instance:
    """One live instance of a service, as the registry says (every field checked)."""

    id: str
    service: str
    host: str
    pid: int
    load: int
    started_ms: int
    expires_ms: int


class Registry:
    """One host's reads and writes in the registry of a cluster.

    Args:
        client: a coredis client (bytes responses).
        cluster: the cluster's name.
        key: the cluster key (what `tag`s are made under).
        ttl: seconds an instance stays live without a beat (beat every ttl / 3).
    """

    def __init__(
        self, client: coredis.Redis[bytes], cluster: str, key: bytes, *, ttl: float = 3.0
    ) -> None:
        if not 0.05 <= ttl <= 3600:
            raise ValueError(f"a registry's ttl is from 0.05 to 3600 seconds, not {ttl!r}")
        self.client = client
        self.keys = Keys(cluster)
        self.ttl = ttl
        self._key = mac(key, b"startable registry v1")
        self._register = client.register_script(_REGISTER)
        self._beat = client.register_script(_BEAT)
        self._leave = client.register_script(_LEAVE)
        self._sweep = client.register_script(_SWEEP)
        self._live = client.register_script(_LIVE)
        self._declare = client.register_script(_DECLARE)
        #: Entries ignored by `live` since this registry was made (bad tag, bad field).
        self.ignored = 0

    @property
    def _ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    def _tag(self, instance: str, service: str, host: str, pid: int) -> str:
        fields = "\x00".join((self.keys.cluster, instance, service, host, str(pid)))
        return mac(self._key, fields.encode()).hex()

    async def register(
        self, instance: str, service: str, *, host: str, pid: int, load: int = 0
    ) -> None:
        """Make `instance` a live instance of `service` (call it once STARTED)."""
        _check_instance(instance, service, host, pid, load)
        tag = self._tag(instance, service, host, pid)
        keys = self.keys
        args: list[Any] = [instance, self._ttl_ms, service, host, pid, load, tag]
        await self._register(
            keys=[keys.service(service), keys.instance(instance), keys.services], args=args
        )

    async def beat(self, instance: str, service: str, load: int = 0) -> bool:
        """Push `instance`'s expiry on; False if it was not registered (swept)."""
        if not 0 <= load < MAX_LOAD:
            raise ValueError(f"a load is from 0 to {MAX_LOAD - 1}, not {load!r}")
        keys = [self.keys.service(service), self.keys.instance(instance)]
        return bool(await self._beat(keys=keys, args=[instance, self._ttl_ms, load]))

    async def leave(self, instance: str, service: str) -> None:
        """Take `instance` out of the registry (first thing in its stop)."""
        keys = [self.keys.service(service), self.keys.instance(instance)]
        await self._leave(keys=keys, args=[instance])

    def _host_tag(self, host: str, services: str) -> str:
        fields = "\x00".join((self.keys.cluster, "host", host, services))
        return mac(self._key, fields.encode()).hex()

    async def declare(self, host: str, services: Sequence[str]) -> None:
        """Say which services `host` (a link's instance id) runs or starts, for `ttl`
        seconds: a receiver takes a message from a service only from a host that
        declared it (so a host cannot pose as a service it does not run)."""
        if not INSTANCE_RULE.fullmatch(host):
            raise ValueError(f"a host's id follows {INSTANCE_RULE.pattern}, not {host!r}")
        for name in services:
            if not NAME_RULE.fullmatch(name):
                raise ValueError(f"a service's name follows {NAME_RULE.pattern}, not {name!r}")
        listed = ",".join(sorted(set(services)))
        tag = self._host_tag(host, listed)
        await self._declare(keys=[self.keys.host(host)], args=[self._ttl_ms, listed, tag])

    async def declared(self, host: str) -> frozenset[str] | None:
        """The services `host` declared (None: it declared none that is still
        valid, or its entry fails a check, which is counted in `ignored`)."""
        if not INSTANCE_RULE.fullmatch(host):
            return None
        fields = _fields(await self.client.hgetall(self.keys.host(host)))
        if not fields:
            return None
        listed, tag = fields.get("services"), fields.get("tag")
        if listed is None or tag is None or tag != self._host_tag(host, listed):
            self.ignored += 1
            return None
        names = frozenset(listed.split(",")) if listed else frozenset()
        if not all(NAME_RULE.fullmatch(name) for name in names):
            self.ignored += 1
            return None
        return names

    async def sweep(self, service: str) -> int:
        """Remove the expired instances of `service` (up to 1,000); how many."""
        removed: object = await self._sweep(
            keys=[self.keys.service(service)], args=[self.keys.instance("")]
        )
        return int(removed) if isinstance(removed, int) else 0

    async def services(self) -> list[str]:
        """The names of the services that ever registered (valid names only)."""
        names = await self.client.smembers(self.keys.services)
        decoded = (_text(name) for name in names)
        return sorted(n for n in decoded if n is not None and NAME_RULE.fullmatch(n))

    async def live(self, service: str) -> list[Instance]:
        """The live instances of `service`, by expiry; entries that fail a check are
        ignored (and counted in `ignored`)."""
        reply: object = await self._live(
            keys=[self.keys.service(service)], args=[self.keys.instance("")]
        )
        if not isinstance(reply, (list, tuple)) or not reply:
            return []
        found: list[Instance] = []
        for at in range(1, len(reply) - 2, 3):
            instance = self._instance(service, reply[at], reply[at + 1], reply[at + 2])
            if instance is None:
                self.ignored += 1
            else:
                found.append(instance)
        return found

    def _instance(
        self, service: str, raw_id: object, raw_expiry: object, raw: object
    ) -> Instance | None:
        instance = _text(raw_id)
        expires = _integer(raw_expiry)
        fields = _fields(raw)
        if instance is None or expires is None or fields is None:
            return None
        if not INSTANCE_RULE.fullmatch(instance) or fields.get("service") != service:
            return None
        host, tag = fields.get("host"), fields.get("tag")
        pid, load, started = (_integer(fields.get(f)) for f in ("pid", "load", "started"))
        if host is None or tag is None or pid is None or load is None or started is None:
            return None
        if not _HOST_RULE.fullmatch(host) or not 0 < pid < 1 << 22 or not 0 <= load < MAX_LOAD:
            return None
        if tag != self._tag(instance, service, host, pid):
            return None
        return Instance(instance, service, host, pid, load, started, expires)


def _check_instance(instance: str, service: str, host: str, pid: int, load: int) -> None:
    if not INSTANCE_RULE.fullmatch(instance):
        raise ValueError(f"an instance id follows {INSTANCE_RULE.pattern}, not {instance!r}")
    if not NAME_RULE.fullmatch(service):
        raise ValueError(f"a service's name follows {NAME_RULE.pattern}, not {service!r}")
    if not _HOST_RULE.fullmatch(host):
        raise ValueError(f"a host is 1 to 255 printable characters, not {host!r}")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 1 << 22:
        raise ValueError(f"a pid is a positive integer, not {pid!r}")
    if isinstance(load, bool) or not isinstance(load, int) or not 0 <= load < MAX_LOAD:
        raise ValueError(f"a load is from 0 to {MAX_LOAD - 1}, not {load!r}")


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def _integer(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = _text(value)
    if text is None or not re.fullmatch(r"-?\d{1,19}", text):
        return None
    return int(text)


def _fields(raw: object) -> dict[str, str] | None:
    """A flat HGETALL reply (or a mapping) as text, or None if it is not one."""
    if isinstance(raw, dict):
        pairs: Sequence[object] = [item for pair in raw.items() for item in pair]
    elif isinstance(raw, (list, tuple)) and len(raw) % 2 == 0:
        pairs = raw
    else:
        return None
    fields: dict[str, str] = {}
    for at in range(0, len(pairs), 2):
        name, value = _text(pairs[at]), _text(pairs[at + 1])
        if name is None or value is None:
            return None
        fields[name] = value
    return fields
