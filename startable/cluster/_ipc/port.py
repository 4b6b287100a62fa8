"""`ConnectionPort`: typed messages over one byte stream, framed and checked."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any, Final, Generic, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
import msgspec

from ... import State, as_raw_start, as_raw_stop, assert_state, of
from .._errors import AuthenticationError, FrameError, MessageError, PortClosed, PortError
from .wire import (
    DEFAULT_MAX_FRAME,
    MAGIC,
    NONCE_SIZE,
    TAG_SIZE,
    FrameCodec,
    FrameReader,
    check_magic,
    check_proof,
    new_nonce,
    proof,
    session_keys,
)

T = TypeVar("T")
STARTED = State.STARTED
#: Reads or writes a port over a socket makes in a row without having to wait,
#: before it lets the other tasks of its process run once.
FAIR_TURNS: Final = 16


@attrs.frozen
class PortStatistics:
    """Counters of a port, from `ConnectionPort.statistics`."""

    frames_sent: int
    frames_received: int
    bytes_sent: int
    bytes_received: int
    messages_dropped: int


class ConnectionPort(Generic[T]):
    """Typed messages over a byte stream: framed, size-limited, optionally authenticated.

    A port is a lifecycle of its own: its raw start runs the handshake (when
    a key is given), its raw stop closes the stream. Start it like any other
    service (`async with startable.running(port)`, or from a raw start with
    the owner's `stop` as hook, so that a broken connection stops the owner).

    What it does with bad input:

    * a frame whose payload is not a valid message of the schema (but whose
      length and tag are right) is dropped: `receive` raises `MessageError`
      for it and the port stays open;
    * a frame larger than `max_frame`, a frame cut short by the end of the
      stream, a bad tag, or a failed handshake: the port stops itself with a
      `FrameError` (`AuthenticationError` for the last two) as its reason,
      and `receive` raises it: after a bad frame, a byte stream cannot be
      trusted to find the next one;
    * the end of the stream between frames: the port stops with `PortClosed`.

    Messages are encoded with msgpack (msgspec); nothing is ever unpickled.

    Args:
        stream: a connected byte stream (a socket, a socketpair end, TCP...).
        receives: the message type(s) this side accepts: a `msgspec.Struct`
            class or a union of tagged ones.
        key: the cluster key; when given, both sides run a handshake that
            proves they hold it, and every frame carries an HMAC. Use it on
            anything another user could reach (TCP).
        initiator: which side of the handshake this is (the connecting side).
        max_frame: the largest payload accepted or sent, in bytes.
        handshake_timeout: seconds the handshake may take.
        send_timeout: seconds one frame may take to be written. A frame
            half written would corrupt the stream, so a send is not
            interrupted by cancellation once it has the port (the
            cancellation takes effect when the frame is out); a peer that
            does not read for this long breaks the port (`PortClosed`).
        name: used in `repr()`, logs and errors.
    """

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        *,
        receives: Any,
        key: bytes | None = None,
        initiator: bool = True,
        max_frame: int = DEFAULT_MAX_FRAME,
        handshake_timeout: float = 10.0,
        send_timeout: float = 10.0,
        name: str = "port",
    ) -> None:
        if key is not None and len(key) < 16:
            raise ValueError("a cluster key must be at least 16 bytes")
        self.name = name
        self._stream: anyio.abc.ByteStream = stream
        #: The raw socket under a port made by `from_socket`: sends and receives
        #: that need not wait cost no scheduler pass (see `_SocketStream`).
        self._raw = stream if isinstance(stream, _SocketStream) else None
        self._reader = FrameReader(FrameCodec(max_frame=max_frame))
        self._key = key
        self._initiator = initiator
        self._max_frame = max_frame
        self._handshake_timeout = handshake_timeout
        self._send_timeout = send_timeout
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[T] = msgspec.msgpack.Decoder(receives)
        self._send_lock = anyio.Lock(fast_acquire=True)  # no extra scheduler pass per send
        #: The rest of a frame the kernel took part of, until it is written.
        self._backlog: memoryview | None = None
        # The counters `statistics` reports, one attribute each (see PortStatistics).
        self._frames_sent = self._frames_received = 0
        self._bytes_sent = self._bytes_received = 0
        self._messages_dropped = 0

    def __repr__(self) -> str:
        return f"<ConnectionPort {self.name}: {of(self).state.name}>"

    def statistics(self) -> PortStatistics:
        return PortStatistics(
            frames_sent=self._frames_sent,
            frames_received=self._frames_received,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            messages_dropped=self._messages_dropped,
        )

    @property
    def mid_frame(self) -> bool:
        """Whether part of a frame has arrived and the rest of it not yet."""
        return self._reader.mid_frame

    # -- lifecycle ----------------------------------------------------------

    @as_raw_start
    async def _open(self) -> None:
        if self._key is None:
            return
        try:
            with anyio.fail_after(self._handshake_timeout):
                send_key, receive_key = await self._handshake(self._key)
        except TimeoutError:
            raise AuthenticationError(
                f"{self.name}: the handshake took more than {self._handshake_timeout}s"
            ) from None
        self._reader.codec = FrameCodec(
            max_frame=self._max_frame, send_key=send_key, receive_key=receive_key
        )

    async def _handshake(self, key: bytes) -> tuple[bytes, bytes]:
        if self._initiator:
            mine = new_nonce()
            await self._stream.send(MAGIC + mine)
            reply = await self._read(len(MAGIC) + NONCE_SIZE + TAG_SIZE, "the handshake")
            check_magic(reply[: len(MAGIC)])
            theirs = reply[len(MAGIC) : len(MAGIC) + NONCE_SIZE]
            check_proof(key, b"responder", mine, theirs, reply[-TAG_SIZE:])
            await self._stream.send(proof(key, b"initiator", mine, theirs))
            to_responder, to_initiator = session_keys(key, mine, theirs)
            return to_responder, to_initiator
        hello = await self._read(len(MAGIC) + NONCE_SIZE, "the handshake")
        check_magic(hello[: len(MAGIC)])
        theirs, mine = hello[len(MAGIC) :], new_nonce()
        await self._stream.send(MAGIC + mine + proof(key, b"responder", theirs, mine))
        check_proof(key, b"initiator", theirs, mine, await self._read(TAG_SIZE, "the handshake"))
        to_responder, to_initiator = session_keys(key, theirs, mine)
        return to_initiator, to_responder

    @as_raw_stop
    async def _close(self) -> None:
        with anyio.CancelScope(shield=True):  # closing a socket does not block
            await self._stream.aclose()

    # -- messages -----------------------------------------------------------

    @assert_state()
    async def send(self, message: msgspec.Struct) -> None:
        """Send one message.

        On a port over a socket (`from_socket`), a frame the kernel takes at
        once is sent without a scheduler pass (but see `_SocketStream`).

        Raises:
            FrameError: if the encoded message exceeds `max_frame` (the
                message is not sent; the port stays open).
            PortError: if the connection is gone (the port stops).
            StateError: if the port is not STARTED.
        """
        payload = self._encoder.encode(message)
        raw = self._raw
        if raw is not None:
            await (
                raw.fair_turn()
            )  # (before the frame is committed: a cancellation here sends nothing)
            written = self._write_now(raw, payload)
            if written is not None:
                if not written:  # the kernel took part of it: the rest, as any send
                    self._send_lock.acquire_nowait()  # (free, and no checkpoint: committed)
                    try:
                        await self._flush()
                    finally:
                        self._send_lock.release()
                return
        async with self._send_lock:
            await self._flush()
            # Framed under the lock: with a key, each frame takes the next sequence number.
            frame = self._reader.codec.encode(payload)
            await self._write(self._stream, frame)
            self._sent(frame)

    @assert_state()
    def send_nowait(self, message: msgspec.Struct) -> bool:
        """Send one message if that needs no waiting for another send: whether it did.

        False (nothing sent) while another send waits for the peer, or on a
        port that is not over a socket (`from_socket`); send it with `send`
        then. A frame the kernel takes only part of is sent (True): a task of
        the port writes the rest as the peer reads, within `send_timeout`.

        Raises:
            FrameError: if the encoded message exceeds `max_frame` (the
                message is not sent; the port stays open).
            PortError: if the connection is gone (the port stops).
            StateError: if the port is not STARTED.
        """
        raw = self._raw
        if raw is None:
            return False
        written = self._write_now(raw, self._encoder.encode(message))
        if written is None:
            return False
        if not written:
            of(self).start_soon(self._flush_alone)
        return True

    def _write_now(self, raw: _SocketStream, payload: bytes) -> bool | None:
        """Frame `payload` and write it at once, unless another send is under way.

        Returns:
            None if it wrote nothing (another send is under way); True if the
            kernel took all of the frame; False if it took part of it (the
            rest is kept in `_backlog`, for the caller to have it written).
        """
        codec = self._reader.codec
        codec.check_size(len(payload))  # (whether or not another send is under way)
        if self._backlog is not None or self._send_lock.locked():
            return None
        # No await from here to the write: nothing can come in between.
        frame = codec.encode(payload)
        try:
            sent = raw.write_now(frame)
        except (anyio.ClosedResourceError, OSError) as exc:
            raise self._broken(
                PortClosed(f"{self.name}: the connection is gone ({exc!r})")
            ) from exc
        self._sent(frame)
        if sent == len(frame):
            return True
        self._backlog = memoryview(frame)[sent:]
        return False

    def _sent(self, frame: bytes) -> None:
        self._frames_sent += 1
        self._bytes_sent += len(frame)

    async def _flush_alone(self) -> None:
        try:
            async with self._send_lock:
                await self._flush()
        except PortError:
            pass  # the port stopped with it as its reason already

    async def _flush(self) -> None:
        """Write what is left of a frame the kernel took part of (the port holds the lock)."""
        backlog = self._backlog
        if backlog is not None:
            await self._write(self._stream, backlog)
            self._backlog = None

    async def _write(self, stream: anyio.abc.ByteStream, data: bytes | memoryview) -> None:
        """Write all of `data`, shielded, within `send_timeout` (the port holds the lock)."""
        try:
            with anyio.move_on_after(self._send_timeout, shield=True) as writing:
                await stream.send(data)  # type: ignore[arg-type]  # (_SocketStream takes a view)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise self._broken(
                PortClosed(f"{self.name}: the connection is gone ({exc!r})")
            ) from exc
        if writing.cancelled_caught:
            raise self._broken(
                PortClosed(f"{self.name}: the peer read nothing for {self._send_timeout}s")
            )

    @assert_state()
    async def receive(self) -> T:
        """Receive the next message (one receiving task at a time).

        Raises:
            MessageError: the next frame held no valid message; it is dropped
                and the port stays open.
            PortClosed: the peer closed the connection.
            FrameError: the stream broke the framing (see the class docs).
            StateError: if the port is not STARTED.
        """
        try:
            while (payload := self._reader.next()) is None:
                await self._fill("a frame")
        except FrameError as exc:
            raise self._broken(exc) from None
        self._frames_received += 1
        self._bytes_received += len(payload)
        try:
            return self._decoder.decode(payload)
        except Exception as exc:  # any failure on untrusted bytes (msgspec raises
            # DecodeError and ValidationError, but UnicodeDecodeError too): no message
            self._messages_dropped += 1
            raise MessageError(
                f"{self.name}: dropped a frame that held no valid message: {exc}"
            ) from None

    async def __aiter__(self) -> AsyncIterator[T]:
        """Messages until the peer closes the connection or the port stops (frames with no
        valid message skipped)."""
        while of(self).state is STARTED:
            try:
                yield await self.receive()
            except PortClosed:
                return
            except MessageError:
                continue

    async def _read(self, size: int, what: str) -> bytes:
        while (data := self._reader.take(size)) is None:
            await self._fill(what)
        return data

    async def _fill(self, what: str) -> None:
        """Feed the reader what the stream gives; the end of the stream is an error."""
        try:
            data = await self._stream.receive()
        except anyio.EndOfStream:
            if self._reader.mid_frame:
                raise self._broken(
                    FrameError(f"{self.name}: the stream ended in the middle of {what}")
                ) from None
            raise self._broken(PortClosed(f"{self.name}: the peer closed the connection")) from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError) as exc:
            raise self._broken(
                PortClosed(f"{self.name}: the connection is gone ({exc!r})")
            ) from None
        self._reader.feed(data)

    def _broken(self, error: PortError) -> PortError:
        """Stop the port with `error` as reason (once), and return it to raise."""
        of(self).stop_nowait(error)
        return error


def port_pair(
    receives: Any, other_receives: Any | None = None, *, max_frame: int = DEFAULT_MAX_FRAME
) -> tuple[ConnectionPort[Any], ConnectionPort[Any]]:
    """Two ports joined by a local socketpair (not started; no key: nobody else can reach it).

    Must be called inside an event loop.
    """
    one, two = socket.socketpair()
    return (
        from_socket(one, receives=receives, max_frame=max_frame, name="port 1"),
        from_socket(two, receives=other_receives or receives, max_frame=max_frame, name="port 2"),
    )


def from_socket(
    sock: socket.socket,
    *,
    receives: Any,
    key: bytes | None = None,
    initiator: bool = True,
    max_frame: int = DEFAULT_MAX_FRAME,
    name: str = "port",
) -> ConnectionPort[Any]:
    """A port over an already connected socket (not started)."""
    sock.setblocking(False)
    stream = _SocketStream(sock)
    return ConnectionPort(
        stream, receives=receives, key=key, initiator=initiator, max_frame=max_frame, name=name
    )


class _SocketStream(anyio.abc.ByteStream):
    """A byte stream straight over a connected non-blocking socket (`from_socket`'s).

    It reads and writes the socket itself, on either backend, and waits only
    when the socket says so (`anyio.wait_readable` / `wait_writable`): a read
    of bytes already there, or a write the kernel takes at once, costs no
    scheduler pass, where a stream of the backend's would make one for
    each. So that a busy port never starves the other tasks of its process,
    every `FAIR_TURNS`-th read or write that did not wait lets them run
    first (a checkpoint, before any byte moves: a cancellation there loses
    nothing).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock
        self._closed = False
        self._turns = 0
        self._drained = False  # whether the last read found less than it could take

    async def fair_turn(self) -> None:
        """A checkpoint every `FAIR_TURNS` calls (reset whenever the socket made us wait)."""
        self._turns += 1
        if self._turns >= FAIR_TURNS:
            self._turns = 0
            await anyio.lowlevel.checkpoint()

    def write_now(self, data: bytes | memoryview) -> int:
        """Write what the kernel takes now, without waiting: how many bytes it took.

        Raises:
            anyio.ClosedResourceError: the stream is closed.
            OSError: the connection is gone.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            return self._socket.send(data)
        except BlockingIOError:
            return 0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._drained:  # the last read took all there was: wait first, not a vain recv
            self._turns = 0
            await anyio.wait_readable(self._socket)
        else:
            await self.fair_turn()
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                data = self._socket.recv(max_bytes)
            except BlockingIOError:
                self._turns = 0
                await anyio.wait_readable(self._socket)
                continue
            if not data:
                raise anyio.EndOfStream
            self._drained = len(data) < max_bytes
            return data

    async def send(self, item: bytes | memoryview) -> None:
        view = memoryview(item)
        while view:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                view = view[self._socket.send(view) :]
            except BlockingIOError:
                pass
            if view:
                self._turns = 0
                await anyio.wait_writable(self._socket)

    async def send_eof(self) -> None:
        self._socket.shutdown(socket.SHUT_WR)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._socket)  # wakes a task waiting on it, if any
            self._socket.close()
        await anyio.lowlevel.checkpoint()
