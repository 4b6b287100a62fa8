"""Envelopes: what one host publishes to another over Redis, sealed and checked.

No I/O here. An envelope is a msgpack array followed by a 32-byte
HMAC-SHA256 tag:

    [version, cluster, channel, sender, service, seq, sent_ms, body] + tag

(`service` is empty for the sending host's operator, who is no service.)

The tag is made under a key derived from the cluster key for this purpose
alone (the cluster key itself signs nothing), and covers every field: the
destination channel and the cluster too, so an envelope cannot be moved to
another channel or another cluster that shares the key. `open_envelope`
checks the size and the tag before it decodes anything, then every field;
`Replays` drops an envelope seen before, or sent too long ago. A failure is
an `EnvelopeRefused` whose `reason` names the check, for the counters.
"""

from __future__ import annotations

import hmac
import re
from collections import OrderedDict
from typing import Final, Literal

import msgspec

from .._errors import ClusterError
from .._ipc.wire import TAG_SIZE, mac
from .._names import NAME_RULE

VERSION: Final = 1
#: The largest envelope sent or accepted, tag included.
MAX_ENVELOPE: Final = 1 << 20
#: How old (or how far ahead of this host's clock) an envelope may be, in ms.
WINDOW_MS: Final = 30_000
#: The shortest cluster key accepted, in bytes.
MIN_KEY: Final = 32
#: An instance id: what `new_instance_id` makes, and what a peer may send.
INSTANCE_RULE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
#: A channel name.
CHANNEL_RULE: Final = re.compile(r"[\x21-\x7e]{1,512}")
_SEQ_LIMIT: Final = 1 << 63

Reason = Literal[
    "size", "tag", "malformed", "version", "cluster", "channel", "stale", "replay", "identity"
]


class EnvelopeRefused(ClusterError):
    """An envelope failed a check; it is dropped (and counted by `reason`)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"envelope refused ({reason}): {detail}")
        self.reason: Reason = reason


class Envelope(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """The fields of an envelope, once its tag is checked."""

    version: int
    cluster: str
    channel: str
    sender: str
    service: str
    seq: int
    sent_ms: int
    body: bytes


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(Envelope)


def envelope_key(cluster_key: bytes) -> bytes:
    """The key that seals envelopes, derived from the cluster key.

    Raises:
        ValueError: the cluster key is shorter than `MIN_KEY` bytes.
    """
    if len(cluster_key) < MIN_KEY:
        raise ValueError(
            f"a cluster key has {MIN_KEY} bytes or more, not {len(cluster_key)}: "
            "make one with `python -c 'import secrets; print(secrets.token_hex(32))'`"
        )
    return mac(cluster_key, b"startable redis envelope v1")


def seal(
    key: bytes,
    *,
    cluster: str,
    channel: str,
    sender: str,
    service: str,
    seq: int,
    sent_ms: int,
    body: bytes,
) -> bytes:
    """The envelope carrying `body` to `channel`, under `key` (`envelope_key`).

    Raises:
        ClusterError: it would exceed `MAX_ENVELOPE`.
    """
    payload = _encoder.encode(
        Envelope(VERSION, cluster, channel, sender, service, seq, sent_ms, body)
    )
    if len(payload) + TAG_SIZE > MAX_ENVELOPE:
        raise ClusterError(
            f"a message of {len(body)} bytes does not fit in an envelope "
            f"({MAX_ENVELOPE} bytes at most)"
        )
    return payload + mac(key, payload)


def open_envelope(key: bytes, data: object, *, cluster: str, channel: str, now_ms: int) -> Envelope:
    """The envelope in `data`, which came on `channel`, once every check passed.

    Raises:
        EnvelopeRefused: with the check it failed (`reason`).
    """
    if not isinstance(data, bytes) or not TAG_SIZE < len(data) <= MAX_ENVELOPE:
        size = len(data) if isinstance(data, bytes) else type(data).__name__
        raise EnvelopeRefused("size", f"{size} is not an envelope's size")
    payload, tag = data[:-TAG_SIZE], data[-TAG_SIZE:]
    if not hmac.compare_digest(tag, mac(key, payload)):
        raise EnvelopeRefused("tag", "the sender does not hold the cluster key, or it was altered")
    try:
        envelope = _decoder.decode(payload)
    except msgspec.DecodeError as exc:  # signed, yet malformed: a peer with a bug
        raise EnvelopeRefused("malformed", str(exc)) from None
    if envelope.version != VERSION:
        raise EnvelopeRefused("version", f"version {envelope.version}, this host speaks {VERSION}")
    if envelope.cluster != cluster:
        raise EnvelopeRefused("cluster", f"for cluster {envelope.cluster!r}, not {cluster!r}")
    if envelope.channel != channel:
        raise EnvelopeRefused("channel", f"sealed for {envelope.channel!r}, came on {channel!r}")
    if not INSTANCE_RULE.fullmatch(envelope.sender) or not (
        envelope.service == "" or NAME_RULE.fullmatch(envelope.service)
    ):
        raise EnvelopeRefused("malformed", "its sender is not an instance id and a service name")
    if not 0 <= envelope.seq < _SEQ_LIMIT:
        raise EnvelopeRefused("malformed", f"sequence number {envelope.seq} is out of range")
    if abs(now_ms - envelope.sent_ms) > WINDOW_MS:
        raise EnvelopeRefused("stale", f"sent {now_ms - envelope.sent_ms} ms from now")
    return envelope


class Replays:
    """Which envelopes were seen within the window, to drop a second copy.

    Per sender, the sequence numbers seen with their send times; entries
    older than the window are forgotten (an envelope that old is refused as
    stale anyway). At most `max_senders` senders are remembered: past that,
    the one heard from least recently is forgotten, and an envelope from it
    within the window would be taken again (the limit bounds memory against
    a key holder that makes up senders).
    """

    def __init__(self, *, window_ms: int = WINDOW_MS, max_senders: int = 100_000) -> None:
        self.window_ms = window_ms
        self.max_senders = max_senders
        self._seen: OrderedDict[str, dict[int, int]] = OrderedDict()

    def check(self, envelope: Envelope, now_ms: int) -> None:
        """Note `envelope` as seen.

        Raises:
            EnvelopeRefused: ("replay") it was seen before.
        """
        seen = self._seen.get(envelope.sender)
        if seen is None:
            seen = self._seen[envelope.sender] = {}
            while len(self._seen) > self.max_senders:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(envelope.sender)
        if envelope.seq in seen:
            raise EnvelopeRefused("replay", f"{envelope.sender} #{envelope.seq} came before")
        if len(seen) >= 64 and len(seen) & (len(seen) - 1) == 0:  # now and then: forget the old
            oldest = now_ms - self.window_ms
            for seq in [s for s, sent in seen.items() if sent < oldest]:
                del seen[seq]
        seen[envelope.seq] = envelope.sent_ms

    def __len__(self) -> int:
        return sum(len(seen) for seen in self._seen.values())
