"""Envelopes over Redis: sealed, checked before anything is decoded, replays dropped."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from startable.cluster._redis.envelope import (
    MAX_ENVELOPE,
    WINDOW_MS,
    EnvelopeRefused,
    Replays,
    envelope_key,
    open_envelope,
    seal,
)

KEY = envelope_key(b"k" * 32)
NOW = 1_800_000_000_000
CHANNEL = "startable:{shop}:to:host-a.1"
FIELDS: dict[str, object] = {
    "cluster": "shop",
    "channel": CHANNEL,
    "sender": "host-b.7",
    "service": "api",
    "seq": 1,
    "sent_ms": NOW,
    "body": b"\x81\xa1t\xa4call",
}


def sealed(**changes: object) -> bytes:
    return seal(KEY, **{**FIELDS, **changes})  # type: ignore[arg-type]


def refused(data: object, **where: object) -> str:
    place = {"cluster": "shop", "channel": CHANNEL, "now_ms": NOW, **where}
    with pytest.raises(EnvelopeRefused) as caught:
        open_envelope(KEY, data, **place)  # type: ignore[arg-type]
    return caught.value.reason


def test_an_envelope_opens_where_it_was_sealed_for() -> None:
    envelope = open_envelope(KEY, sealed(), cluster="shop", channel=CHANNEL, now_ms=NOW)
    assert (envelope.sender, envelope.service, envelope.body) == ("host-b.7", "api", FIELDS["body"])


def test_each_check_names_what_failed() -> None:
    good = sealed()
    assert refused(good[:-1] + bytes([good[-1] ^ 1])) == "tag"  # altered
    other = seal(envelope_key(b"x" * 32), **FIELDS)  # type: ignore[arg-type]
    assert refused(other) == "tag"  # sealed under another key
    assert refused(good, cluster="other") == "cluster"
    assert refused(good, channel="startable:{shop}:to:host-c.1") == "channel"  # moved
    assert refused(good, now_ms=NOW + WINDOW_MS + 1) == "stale"
    assert refused(good, now_ms=NOW - WINDOW_MS - 1) == "stale"  # from the future
    assert refused(b"") == "size"
    assert refused("text") == "size"
    assert refused(b"\x00" * (MAX_ENVELOPE + 1)) == "size"
    assert refused(sealed(sender="-bad id")) == "malformed"
    assert refused(sealed(service="Not A Name")) == "malformed"
    assert refused(sealed(seq=-1)) == "malformed"


def test_a_signed_but_malformed_payload_is_refused_as_malformed() -> None:
    from startable.cluster._ipc.wire import mac

    for payload in (b"\x93\x01\x02\x03", msgspec.msgpack.encode([1, "shop", 3.5])):
        assert refused(payload + mac(KEY, payload)) == "malformed"
    wrong = msgspec.msgpack.encode([2, "shop", CHANNEL, "h.1", "api", 1, NOW, b""])
    assert refused(wrong + mac(KEY, wrong)) == "version"


def test_a_short_cluster_key_is_refused() -> None:
    with pytest.raises(ValueError, match="a cluster key has 32 bytes or more, not 31"):
        envelope_key(b"k" * 31)


def test_a_body_too_large_for_an_envelope_is_refused_as_it_is_sealed() -> None:
    with pytest.raises(Exception, match="does not fit in an envelope"):
        sealed(body=b"x" * MAX_ENVELOPE)


def test_a_replayed_envelope_is_dropped_and_old_ones_are_forgotten() -> None:
    replays = Replays()
    first = open_envelope(KEY, sealed(), cluster="shop", channel=CHANNEL, now_ms=NOW)
    replays.check(first, NOW)
    with pytest.raises(EnvelopeRefused, match="came before"):
        replays.check(first, NOW)
    for seq in range(2, 200):  # a later burst forgets what is past the window
        envelope = open_envelope(
            KEY,
            sealed(seq=seq, sent_ms=NOW + 2 * WINDOW_MS),
            cluster="shop",
            channel=CHANNEL,
            now_ms=NOW + 2 * WINDOW_MS,
        )
        replays.check(envelope, NOW + 2 * WINDOW_MS)
    assert len(replays) < 199


def test_replays_remember_a_bounded_number_of_senders() -> None:
    replays = Replays(max_senders=3)
    for n in range(10):
        envelope = open_envelope(
            KEY, sealed(sender=f"h.{n}"), cluster="shop", channel=CHANNEL, now_ms=NOW
        )
        replays.check(envelope, NOW)
    assert len(replays) == 3


@given(st.binary(max_size=2048))
def test_garbage_is_refused_never_crashes(data: bytes) -> None:
    with pytest.raises(EnvelopeRefused):
        open_envelope(KEY, data, cluster="shop", channel=CHANNEL, now_ms=NOW)
