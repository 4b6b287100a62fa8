"""The data plane's contract: its messages, their limits, and the check of every field.

Clients and routers speak these messages, whatever carries them (a
container's data socket, a call in the manager's process, later Redis).
Nothing that comes from another service is trusted: a router checks each
message with `problem` before it acts on it, and a client checks what it is
asked to run. A message that breaks the contract is answered, when it has an
id to answer, with a `Reply` of kind `"invalid"` (the caller gets
`MalformedRequest`), and is dropped otherwise; it never raises in the
router or the client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, TypeAlias

import msgspec

from .._errors import (
    HandlerNotFound,
    MalformedRequest,
    RequestError,
    RequestRefused,
    RequestTimeout,
    ServiceUnavailable,
)
from .._ipc.messages import ErrorInfo
from .._ipc.wire import DEFAULT_MAX_FRAME
from .._names import NAME_RULE

#: The deadline of a request when the caller gives none, in seconds. Every
#: request has one: a caller never waits longer, whatever the callee does.
DEFAULT_DEADLINE: Final = 10.0
#: The longest deadline a request (or a creation) may have, in seconds: a day.
MAX_DEADLINE: Final = 86_400.0
#: The longest handler name and topic, in characters.
MAX_NAME_LENGTH: Final = 255
#: Ids are positive and fit in 63 bits.
MAX_ID: Final = (1 << 63) - 1
#: Instances of one service (the replicas of a pool) are numbered below this.
MAX_INSTANCES: Final = 1 << 16
#: The most times a request may be sent again (`request(retries=...)`).
MAX_RETRIES: Final = 16
#: The longest `Call.key`, in characters.
MAX_KEY_LENGTH: Final = 128
#: `Call.pick`: which of the callee's instances get the request. Empty: the
#: router's own policy (the fewest requests waiting); `"random"`: one at
#: random; `"all"`: every one (answered in parts, see `Reply`).
PICKS: Final = ("", "random", "all")
#: `Configure.op`: what a configuration request does.
CONFIG_OPS: Final = ("get", "set", "delete", "items")
#: The most keys one service's configuration may hold.
MAX_CONFIG_KEYS: Final = 1024
#: The largest configuration value, in bytes once encoded (msgpack).
MAX_CONFIG_VALUE: Final = 64 * 1024
#: The most one service's configuration may hold, in bytes: its keys and its
#: values once encoded (so that all of it fits in one answer).
MAX_CONFIG_BYTES: Final = 512 * 1024
#: Configuration requests one client may have waiting for the store at once.
MAX_CONFIGURING: Final = 64
#: Topics that begin with this are the cluster's own: no client emits on them.
RESERVED_TOPICS: Final = "startable."


class DataMessage(msgspec.Struct, frozen=True, tag_field="t", array_like=True):
    """Base of the data-plane messages (the same both ways)."""


class Call(DataMessage, tag="call", frozen=True):
    """Run `method(*args, **kwargs)` of `service`; answered by a `Reply` with the same id.

    `caller` is filled by the router (empty: the operator, not a service).
    `timeout` is the time the caller still waits, in seconds. `pick` is one
    of `PICKS`. A call that may be sent again (`request(retries=...)`) has a
    `key` that names it across its attempts, and `attempt` counts them (0:
    the first): a callee that answered the key answers a second attempt
    with the same reply, and runs an attempt after the first only in a
    handler marked idempotent.
    """

    id: int
    service: str
    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    timeout: float = DEFAULT_DEADLINE
    caller: str = ""
    pick: str = ""
    key: str = ""
    attempt: int = 0


#: `Reply.kind`: how a request failed (empty: it did not; `"error"`: the handler raised;
#: `"fan-out"` is no failure, see `Reply`).
FAILURES: Mapping[str, type[RequestError]] = {
    "refused": RequestRefused,
    "unavailable": ServiceUnavailable,
    "no-handler": HandlerNotFound,
    "timeout": RequestTimeout,
    "invalid": MalformedRequest,
}


class Reply(DataMessage, tag="reply", frozen=True):
    """The answer to a `Call` (or to a `Subscribe` or `Create`).

    `kind` is empty on success, `"error"` when the handler raised (`error`
    holds it), or a key of `FAILURES` (`message` says why).

    A request sent to every instance (`Call.pick == "all"`) is answered in
    parts: first a reply of kind `"fan-out"` whose `value` lists the
    instances it went to, then one reply per instance, its `part` the
    instance's number. Any other reply has `part` -1.
    """

    id: int
    value: Any = None
    kind: str = ""
    message: str = ""
    error: ErrorInfo | None = None
    part: int = -1


class Event(DataMessage, tag="event", frozen=True):
    """An event: `payload` published on `topic` by the service `source`.

    `source` is filled by the router (empty: the operator).
    """

    topic: str
    payload: Any = None
    source: str = ""


class Subscribe(DataMessage, tag="sub", frozen=True):
    """Deliver `topic`'s events to this service from now on (acknowledged by a `Reply`)."""

    id: int
    topic: str


class Unsubscribe(DataMessage, tag="unsub", frozen=True):
    topic: str


class Create(DataMessage, tag="create", frozen=True):
    """Create and start a child service of the sender (acknowledged by a `Reply`)."""

    id: int
    name: str
    entry: str
    code: str | None = None
    depends_on: tuple[str, ...] = ()
    env: dict[str, str] = {}
    timeout: float = 60.0


class Configure(DataMessage, tag="cfg", frozen=True):
    """Read or change a service's configuration (acknowledged by a `Reply`).

    `op` is one of `CONFIG_OPS`; `service` names whose configuration (empty:
    the sender's own); `key` is unused by `"items"`, `value` by all but
    `"set"`. The reply's value: the key's value (`"get"`, `None` when the key
    is unset), whether the key was there (`"delete"`), every key's value
    (`"items"`).
    """

    id: int
    op: str
    service: str = ""
    key: str = ""
    value: Any = None
    timeout: float = DEFAULT_DEADLINE


class ConfigChange(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One change of a service's configuration, as every watcher gets it.

    Attributes:
        service: whose configuration changed.
        key: the key that was set or deleted (empty for a resync).
        value: its new value (None when it was deleted).
        deleted: whether the key was deleted.
        resync: no change, but a warning: changes may have been missed (this
            host's link to Redis was lost and is back, or it could not keep
            up). Read `items()` again.
    """

    service: str
    key: str
    value: Any = None
    deleted: bool = False
    resync: bool = False


#: (Made here, where its annotations resolve: the type is re-exported under
#: another module's name, where msgspec could not evaluate them.)
change_decoder: Final = msgspec.msgpack.Decoder(ConfigChange)


def config_topic(service: str) -> str:
    """The topic the router announces `service`'s configuration changes on."""
    return f"{RESERVED_TOPICS}config.{service}"


def config_change_problem(change: ConfigChange) -> str | None:
    """What is wrong with `change`, from another process (None if nothing)."""
    if change.resync:
        return _service_problem(change.service, "a configured service") or (
            None if not change.key and not change.deleted else "a resync names no key"
        )
    return (
        _service_problem(change.service, "a configured service")
        or _name_problem(change.key, "a configuration key")
        or (None if not change.deleted or change.value is None else "a deleted key has no value")
        or config_value_problem(change.value)
    )


def config_value_problem(value: object) -> str | None:
    """Why `value` cannot be a configuration value (None if it can): what msgpack
    encodes, `MAX_CONFIG_VALUE` bytes at most."""
    try:
        size = len(_encoder.encode(value))
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        return f"a configuration value is what msgpack encodes, not {type(value).__name__} ({exc})"
    if size > MAX_CONFIG_VALUE:
        return f"a configuration value is {MAX_CONFIG_VALUE} bytes at most once encoded, not {size}"
    return None


AnyMessage: TypeAlias = Call | Reply | Event | Subscribe | Unsubscribe | Create | Configure

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[AnyMessage] = msgspec.msgpack.Decoder(AnyMessage)
_REPLY_KINDS: Final = frozenset({"", "error", "fan-out", *FAILURES})
_ENV_NAME: Final = re.compile(r"[^=\0]+")


def copy(message: AnyMessage) -> AnyMessage:
    """The message as the other side of a wire would see it (values copied, size limited).

    Raises:
        ValueError: it is larger than a port would carry.
    """
    data = _encoder.encode(message)
    if len(data) > DEFAULT_MAX_FRAME:
        raise ValueError(f"a message of {len(data)} bytes exceeds {DEFAULT_MAX_FRAME} bytes")
    return _decoder.decode(data)


def deadline_problem(value: object, what: str = "a deadline") -> str | None:
    """Why `value` cannot bound a wait (None if it can): a number of seconds, finite,
    positive and at most `MAX_DEADLINE`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{what} is a number of seconds, not {value!r}"
    if not 0 < value <= MAX_DEADLINE:  # NaN fails this too
        return f"{what} must be more than 0 and at most {MAX_DEADLINE:g} seconds, not {value!r}"
    return None


def _id_problem(value: int) -> str | None:
    if not 0 < value <= MAX_ID:
        return f"a message id is a positive 63-bit integer, not {value!r}"
    return None


def _name_problem(value: str, what: str) -> str | None:
    if not value or len(value) > MAX_NAME_LENGTH:
        return f"{what} must have 1 to {MAX_NAME_LENGTH} characters, not {len(value)}"
    return None


def _service_problem(value: str, what: str) -> str | None:
    if NAME_RULE.fullmatch(value) is None:
        shown = value if len(value) <= 70 else value[:67] + "..."
        return f"{what} {shown!r} is not a service name"
    return None


def _instances_problem(value: object) -> str | None:
    if (
        not isinstance(value, list)
        or len(value) > MAX_INSTANCES
        or not all(type(i) is int and 0 <= i < MAX_INSTANCES for i in value)
        or len(set(value)) != len(value)
    ):
        return "a fan-out lists distinct instance numbers"
    return None


def _env_problem(env: Mapping[str, str]) -> str | None:
    for name, value in env.items():
        if _ENV_NAME.fullmatch(name) is None:
            return f"{name!r} is not an environment variable name"
        if "\0" in value:
            return f"the environment variable {name!r} holds a NUL character"
    return None


def problem(message: AnyMessage) -> str | None:
    """What is wrong with `message` (None if nothing): every field a peer sets, checked.

    The msgpack decoder has checked the types already; this checks the
    values: ids, deadlines (NaN, infinities, negative or absurd numbers),
    names, topics, environment variables. Sizes are bounded by the frame.
    Fields the router fills (`Call.caller`, `Event.source`) are not checked:
    the router overwrites them.
    """
    if isinstance(message, Call):
        return (
            _id_problem(message.id)
            or _name_problem(message.service, "the callee's name")
            or _name_problem(message.method, "a handler's name")
            or deadline_problem(message.timeout, "a request's deadline")
            or (
                None if message.pick in PICKS else f"a pick is one of {PICKS}, not {message.pick!r}"
            )
            or (
                None
                if len(message.key) <= MAX_KEY_LENGTH
                else f"a call's key has {MAX_KEY_LENGTH} characters at most"
            )
            or (
                None
                if 0 <= message.attempt <= MAX_RETRIES
                else f"an attempt is from 0 to {MAX_RETRIES}, not {message.attempt}"
            )
        )
    if isinstance(message, Reply):
        if message.kind not in _REPLY_KINDS:
            return f"a reply's kind is one of {sorted(_REPLY_KINDS)}, not {message.kind!r}"
        if not -1 <= message.part < MAX_INSTANCES:
            return f"a reply's part is -1 or an instance below {MAX_INSTANCES}, not {message.part}"
        if message.kind == "fan-out" and _instances_problem(message.value) is not None:
            return _instances_problem(message.value)
        return _id_problem(message.id)
    if isinstance(message, Event | Unsubscribe):
        return _name_problem(message.topic, "a topic")
    if isinstance(message, Subscribe):
        return _id_problem(message.id) or _name_problem(message.topic, "a topic")
    if isinstance(message, Configure):
        return (
            _id_problem(message.id)
            or (None if message.op in CONFIG_OPS else f"a configuration op is one of {CONFIG_OPS}")
            or (None if not message.service else _service_problem(message.service, "a service"))
            or (
                None if message.op == "items" else _name_problem(message.key, "a configuration key")
            )
            or (None if message.op != "set" else config_value_problem(message.value))
            or deadline_problem(message.timeout, "a configuration request's deadline")
        )
    return (
        _id_problem(message.id)
        or _service_problem(message.name, "a new service's name")
        or deadline_problem(message.timeout, "a creation's deadline")
        or next((p for d in message.depends_on if (p := _service_problem(d, "a dependency"))), None)
        or _env_problem(message.env)
    )


def invalid(message: AnyMessage, why: str) -> Reply | None:
    """The answer to a `message` that broke the contract, if it has an id to answer."""
    if (
        isinstance(message, Call | Subscribe | Create | Configure)
        and _id_problem(message.id) is None
    ):
        return Reply(message.id, kind="invalid", message=why)
    return None
