"""Framing and authentication, without I/O.

A frame is a 4-byte big-endian length, the payload, and (when a key is set) a
32-byte HMAC-SHA256 tag over the frame's sequence number, its length and its
payload. Each direction has its own key and its own sequence, so a frame can
be neither replayed, reordered, nor reflected back to its sender.

Keys come from a handshake on connection: both sides send a random nonce and
prove, with an HMAC under the cluster key, that they hold it; the session keys
are derived from the cluster key and both nonces. A peer without the key
learns nothing but two nonces, and gets no frame through.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Final

from .._errors import AuthenticationError, FrameError

HEADER: Final = struct.Struct(">I")
_SEQUENCE: Final = struct.Struct(">Q")
TAG_SIZE: Final = 32
NONCE_SIZE: Final = 32
MAGIC: Final = b"STRTBL01"  # what a startable port says first; the last two bytes are the version
DEFAULT_MAX_FRAME: Final = 1 << 20  # 1 MiB


def mac(key: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 under `key` of `parts`, joined."""
    return hmac.digest(key, b"".join(parts), hashlib.sha256)


class FrameCodec:
    """Encodes and checks the frames of one connection, in one direction each.

    Args:
        max_frame: the largest payload accepted or sent, in bytes.
        send_key: HMAC key for frames this side sends (None: no tag).
        receive_key: HMAC key for frames this side receives (None: no tag).
    """

    def __init__(
        self,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        send_key: bytes | None = None,
        receive_key: bytes | None = None,
    ) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be at least 1 byte")
        self.max_frame = max_frame
        self._send_key = send_key
        self._receive_key = receive_key
        self._sent = 0
        self._received = 0

    def encode(self, payload: bytes) -> bytes:
        """The frame carrying `payload`.

        Raises:
            FrameError: if the payload is larger than `max_frame`.
        """
        size = len(payload)
        self.check_size(size)
        header = HEADER.pack(size)
        if self._send_key is None:
            return header + payload
        tag = mac(self._send_key, _SEQUENCE.pack(self._sent), header, payload)
        self._sent += 1
        return header + payload + tag

    def check_size(self, size: int) -> None:
        """Raises FrameError if a payload of `size` bytes is larger than `max_frame`."""
        if size > self.max_frame:
            raise FrameError(f"a frame of {size} bytes exceeds the limit of {self.max_frame} bytes")

    def body_size(self, header: bytes) -> int:
        """How many bytes follow this header (payload and tag).

        Raises:
            FrameError: if the announced payload exceeds `max_frame`.
        """
        size = int(HEADER.unpack(header)[0])
        if size > self.max_frame:
            raise FrameError(
                f"the peer announced a frame of {size} bytes; the limit is {self.max_frame} bytes"
            )
        return size + (TAG_SIZE if self._receive_key is not None else 0)

    def decode(self, header: bytes, body: bytes) -> bytes:
        """The payload of a frame, after checking its tag.

        Raises:
            AuthenticationError: if the tag does not match.
        """
        if self._receive_key is None:
            return body
        payload, tag = body[:-TAG_SIZE], body[-TAG_SIZE:]
        expected = mac(self._receive_key, _SEQUENCE.pack(self._received), header, payload)
        if not hmac.compare_digest(tag, expected):
            raise AuthenticationError(
                f"frame {self._received} failed authentication: "
                "the peer does not hold the cluster key, or the frame was altered"
            )
        self._received += 1
        return payload


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def proof(key: bytes, role: bytes, initiator_nonce: bytes, responder_nonce: bytes) -> bytes:
    """What a side sends to prove it holds `key` (role is b"initiator" or b"responder")."""
    return mac(key, b"startable proof ", role, initiator_nonce, responder_nonce)


def check_proof(
    key: bytes, role: bytes, initiator_nonce: bytes, responder_nonce: bytes, given: bytes
) -> None:
    """Raises AuthenticationError unless `given` is the proof `role` should have sent."""
    if not hmac.compare_digest(given, proof(key, role, initiator_nonce, responder_nonce)):
        raise AuthenticationError(f"the {role.decode()} does not hold the cluster key")


def session_keys(key: bytes, initiator_nonce: bytes, responder_nonce: bytes) -> tuple[bytes, bytes]:
    """(initiator-to-responder key, responder-to-initiator key) for one connection."""
    to_responder = mac(key, b"startable session i2r ", initiator_nonce, responder_nonce)
    to_initiator = mac(key, b"startable session r2i ", initiator_nonce, responder_nonce)
    return to_responder, to_initiator


def check_magic(received: bytes) -> None:
    if received[:6] != MAGIC[:6]:
        raise FrameError("the peer is not a startable port (bad greeting)")
    if received != MAGIC:
        raise FrameError(
            f"the peer speaks protocol {received[6:].decode(errors='replace')!r}, "
            f"this side {MAGIC[6:].decode()!r}"
        )


class FrameReader:
    """Cuts a byte stream into checked payloads; fed whatever the socket gave.

    The port's whole receiving logic, without I/O, so that it can be fuzzed
    directly. It holds at most one frame's header and the bytes fed since.
    """

    def __init__(self, codec: FrameCodec) -> None:
        self.codec = codec
        self._buffer = bytearray()
        self._header: bytes | None = None
        self._body_size = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def take(self, size: int) -> bytes | None:
        """Exactly `size` raw bytes (for the handshake), or None if not all there yet."""
        if len(self._buffer) < size:
            return None
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def next(self) -> bytes | None:
        """The next payload, or None if more bytes are needed.

        Raises:
            FrameError: the announced frame is too large.
            AuthenticationError: the frame's tag does not match.
        """
        if self._header is None:
            header = self.take(HEADER.size)
            if header is None:
                return None
            self._body_size = self.codec.body_size(header)
            self._header = header
        body = self.take(self._body_size)
        if body is None:
            return None
        header, self._header = self._header, None
        return self.codec.decode(header, body)

    @property
    def mid_frame(self) -> bool:
        """Whether bytes of an unfinished frame are waiting."""
        return bool(self._buffer) or self._header is not None
