"""ConnectionPort over real sockets: framing, typing, authentication, bad input."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec
import pytest

import startable
from startable import State
from startable.cluster import (
    AuthenticationError,
    ConnectionPort,
    FrameError,
    MessageError,
    PortClosed,
    from_socket,
    port_pair,
)
from startable.cluster._ipc.messages import CloseRequest, ErrorInfo, Ping, RunEntry, ToRemote
from startable.cluster._ipc.port import _SocketStream

pytestmark = pytest.mark.anyio

KEY = b"k" * 32


async def test_messages_round_trip_over_a_socketpair() -> None:
    left, right = port_pair(ToRemote)
    with anyio.fail_after(5):
        async with startable.running(left), startable.running(right):
            await left.send(RunEntry("pkg.mod:Service", resources_interval=0.5))
            await right.send(Ping(b"\x00\xff"))
            assert await right.receive() == RunEntry("pkg.mod:Service", resources_interval=0.5)
            assert await left.receive() == Ping(b"\x00\xff")
            stats = left.statistics()
            assert stats.frames_sent == 1 and stats.frames_received == 1
    assert startable.of(left).state is State.STOPPED


@asynccontextmanager
async def tcp_pair(
    client_key: bytes | None, server_key: bytes | None
) -> AsyncIterator[tuple[ConnectionPort[Any], ConnectionPort[Any]]]:
    """A client and a server port over real TCP on localhost (not started)."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener:
        client_stream = await anyio.connect_tcp("127.0.0.1", port)
        server_stream = await listener.listeners[0].accept()
        client = ConnectionPort(client_stream, receives=ToRemote, key=client_key, name="client")
        server = ConnectionPort(
            server_stream, receives=ToRemote, key=server_key, initiator=False, name="server"
        )
        try:
            yield client, server
        finally:
            await client_stream.aclose()
            await server_stream.aclose()


async def start_both(a: ConnectionPort[Any], b: ConnectionPort[Any]) -> list[BaseException]:
    errors: list[BaseException] = []

    async def start(port: ConnectionPort[Any]) -> None:
        try:
            await startable.of(port).start()
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(start, a)
        tg.start_soon(start, b)
    return errors


async def test_tcp_with_the_cluster_key_authenticates_every_frame() -> None:
    with anyio.fail_after(5):
        async with startable.open_owner(), tcp_pair(KEY, KEY) as (client, server):
            assert await start_both(client, server) == []
            bye = CloseRequest(ErrorInfo("ValueError", "bye", "Traceback: ..."))
            await client.send(bye)
            assert await server.receive() == bye
            await server.send(Ping(b"x"))
            assert await client.receive() == Ping(b"x")


@pytest.mark.parametrize(("client_key", "server_key"), [(KEY, b"w" * 32), (b"w" * 32, KEY)])
async def test_a_peer_without_the_key_is_refused(client_key: bytes, server_key: bytes) -> None:
    with anyio.fail_after(5):
        async with startable.open_owner(), tcp_pair(client_key, server_key) as (client, server):
            errors = await start_both(client, server)
    assert errors
    assert all(isinstance(e, (AuthenticationError, FrameError, PortClosed)) for e in errors)
    assert any(isinstance(e, AuthenticationError) for e in errors)
    assert any("does not hold the cluster key" in str(e) for e in errors)
    assert startable.of(client).state is State.STOPPED
    assert startable.of(server).state is State.STOPPED


async def test_a_peer_that_is_not_a_startable_port_is_refused() -> None:
    with anyio.fail_after(5):
        async with startable.open_owner(), tcp_pair(None, KEY) as (client, server):
            await startable.of(client).start()  # no key: no handshake on this side
            errors: list[BaseException] = []
            async with anyio.create_task_group() as tg:

                async def serve() -> None:
                    try:
                        await startable.of(server).start()
                    except FrameError as exc:
                        errors.append(exc)

                tg.start_soon(serve)
                await client._stream.send(b"GET / HTTP/1.1\r\n\r\n" + b"x" * 40)
    assert len(errors) == 1
    assert "not a startable port" in str(errors[0])


async def test_a_slow_handshake_times_out() -> None:
    with anyio.fail_after(5):
        async with startable.open_owner(), tcp_pair(None, KEY) as (_client, server):
            server._handshake_timeout = 0.05
            with pytest.raises(AuthenticationError, match="handshake took more than"):
                await startable.of(server).start()


def raw_pair() -> tuple[socket.socket, ConnectionPort[Any]]:
    """A raw socket (to write anything) and a port reading from the other end."""
    raw, other = socket.socketpair()
    from startable.cluster import from_socket

    return raw, from_socket(other, receives=ToRemote, max_frame=1024, name="victim")


async def test_oversized_frame_closes_the_port_with_a_clear_error() -> None:
    raw, port = raw_pair()
    with anyio.fail_after(5), raw:
        async with startable.open_owner():
            await startable.of(port).start()
            raw.sendall(struct.pack(">I", 10_000_000))
            with pytest.raises(FrameError, match="10000000 bytes; the limit is 1024"):
                await port.receive()
            assert startable.of(port).state in (State.STOPPING, State.STOPPED)
            await startable.of(port).wait_state(State.STOPPED)
            assert isinstance(startable.of(port).statistics().stop_reason, FrameError)


async def test_truncated_frame_closes_the_port() -> None:
    raw, port = raw_pair()
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(port).start()
            raw.sendall(struct.pack(">I", 100) + b"only part")
            raw.close()
            with pytest.raises(FrameError, match="ended in the middle of a frame"):
                await port.receive()


async def test_end_of_stream_between_frames_is_a_clean_close() -> None:
    raw, port = raw_pair()
    with anyio.fail_after(5):
        async with startable.open_owner():
            await startable.of(port).start()
            raw.close()
            with pytest.raises(PortClosed):
                await port.receive()
            assert [m async for m in _restarted(port)] == []


async def _restarted(port: ConnectionPort[Any]) -> AsyncIterator[Any]:
    if False:  # pragma: no cover - an empty async generator
        yield


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",  # never used in msgpack
        msgspec.msgpack.encode({"type": "launch_missiles"}),
        msgspec.msgpack.encode({"type": "run"}),  # a required field is missing
        msgspec.msgpack.encode({"type": "run", "entry": 42}),  # a field of the wrong type
        msgspec.msgpack.encode([1, 2, 3]),
    ],
)
async def test_malformed_message_is_dropped_and_the_port_stays_open(payload: bytes) -> None:
    raw, port = raw_pair()
    good = msgspec.msgpack.encode(Ping(b"after"))
    with anyio.fail_after(5), raw:
        async with startable.open_owner():
            await startable.of(port).start()
            raw.sendall(struct.pack(">I", len(payload)) + payload)
            raw.sendall(struct.pack(">I", len(good)) + good)
            with pytest.raises(MessageError, match="dropped a frame"):
                await port.receive()
            assert startable.of(port).state is State.STARTED
            assert await port.receive() == Ping(b"after")
            assert port.statistics().messages_dropped == 1


async def test_sending_a_message_over_the_limit_is_refused_and_the_port_stays_open() -> None:
    left, right = port_pair(ToRemote, max_frame=64)
    with anyio.fail_after(5):
        async with startable.running(left), startable.running(right):
            with pytest.raises(FrameError, match="exceeds the limit of 64"):
                await left.send(Ping(b"x" * 100))
            await left.send(Ping(b"small"))
            assert await right.receive() == Ping(b"small")


class _Tap:
    """A TCP proxy that can alter or replay the bytes going to the server."""

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.to_server: list[bytes] = []
        self.flip_at: int | None = None
        self.replay = False


async def _proxy(tap: _Tap, listener: Any) -> None:
    async with (
        await listener.listeners[0].accept() as client,
        await anyio.connect_tcp("127.0.0.1", tap.server_port) as server,
    ):

        async def upstream() -> None:
            seen = 0
            async for chunk in client:
                data = bytearray(chunk)
                if tap.flip_at is not None and seen <= tap.flip_at < seen + len(data):
                    data[tap.flip_at - seen] ^= 0x01
                seen += len(chunk)
                tap.to_server.append(bytes(chunk))
                await server.send(bytes(data))
                if tap.replay and len(tap.to_server) >= 3:
                    await server.send(tap.to_server[-1])  # the same frame again

        async def downstream() -> None:
            async for chunk in server:
                await client.send(chunk)

        async with anyio.create_task_group() as tg:
            tg.start_soon(upstream)
            tg.start_soon(downstream)


@pytest.mark.parametrize("attack", ["tamper", "replay"])
async def test_altered_or_replayed_frames_fail_authentication(attack: str) -> None:
    errors: list[BaseException] = []
    with anyio.fail_after(5):
        async with startable.open_owner():
            server_listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
            proxy_listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
            tap = _Tap(server_listener.extra(anyio.abc.SocketAttribute.local_port))
            handshake = 8 + 32 + 32  # the initiator's greeting and proof
            if attack == "tamper":
                tap.flip_at = handshake + 6  # inside the first frame's payload
            else:
                tap.replay = True
            async with server_listener, proxy_listener, anyio.create_task_group() as tg:
                tg.start_soon(_proxy, tap, proxy_listener)
                proxy_port = proxy_listener.extra(anyio.abc.SocketAttribute.local_port)
                client = ConnectionPort(
                    await anyio.connect_tcp("127.0.0.1", proxy_port), receives=ToRemote, key=KEY
                )
                server = ConnectionPort(
                    await server_listener.listeners[0].accept(),
                    receives=ToRemote,
                    key=KEY,
                    initiator=False,
                )
                assert await start_both(client, server) == []
                await client.send(Ping(b"one"))
                if attack == "replay":
                    assert await server.receive() == Ping(b"one")
                try:
                    await server.receive()
                except AuthenticationError as exc:
                    errors.append(exc)
                tg.cancel_scope.cancel()
    assert len(errors) == 1
    assert "failed authentication" in str(errors[0])


async def test_a_broken_port_stops_its_owner_with_the_error() -> None:
    raw, port = raw_pair()

    class Consumer:
        @startable.as_raw_start
        async def _start(self) -> None:
            await startable.of(port).start(startable.of(self).stop)

        @startable.as_raw_stop
        async def _stop(self) -> None:
            await startable.of(port).stop()

    consumer = Consumer()
    with anyio.fail_after(5), raw, pytest.raises(FrameError):
        async with startable.running(consumer):
            raw.sendall(struct.pack(">I", 1 << 30))
            await port.receive()
    assert startable.of(consumer).state is State.STOPPED


async def test_cancelled_sends_leave_a_keyed_stream_intact() -> None:
    """A send cancelled while it waits for the port, or while its frame is being
    written, neither skips a sequence number nor leaves half a frame behind."""
    one, two = socket.socketpair()
    big = 4 * 2**20  # more than the socket buffers hold: its send blocks until read
    sender = from_socket(one, receives=Ping, key=KEY, initiator=True, max_frame=2 * big)
    receiver = from_socket(two, receives=Ping, key=KEY, initiator=False, max_frame=2 * big)
    with anyio.fail_after(30):
        async with startable.open_owner(), anyio.create_task_group() as group:
            group.start_soon(startable.of(receiver).start)
            await startable.of(sender).start()
            writing, waiting = anyio.CancelScope(), anyio.CancelScope()

            async def send_big() -> None:
                with writing:
                    await sender.send(Ping(b"x" * big))

            async def send_small() -> None:
                with waiting:
                    await sender.send(Ping(b"never sent"))

            group.start_soon(send_big)
            await anyio.wait_all_tasks_blocked()
            group.start_soon(send_small)
            await anyio.wait_all_tasks_blocked()
            waiting.cancel()  # waiting for the port: not framed, not sent
            writing.cancel()  # half written: finished all the same
            assert (await receiver.receive()).payload == b"x" * big
            await sender.send(Ping(b"after"))
            assert (await receiver.receive()).payload == b"after"
            assert startable.of(receiver).state is State.STARTED


async def test_sends_behind_a_half_written_frame_all_go_whole_and_in_order() -> None:
    """While one frame waits for the peer to read, the sends behind it wait their
    turn: each goes after it, whole, in the order each task sent them."""
    one, two = socket.socketpair()
    big = 4 * 2**20  # more than the socket buffers hold
    sender = from_socket(one, receives=Ping, max_frame=2 * big)
    receiver = from_socket(two, receives=Ping, max_frame=2 * big)
    with anyio.fail_after(30):
        async with startable.running(sender), startable.running(receiver):
            async with anyio.create_task_group() as group:
                group.start_soon(sender.send, Ping(b"x" * big))
                await anyio.wait_all_tasks_blocked()  # half written, waiting for the reader

                async def small(task: int) -> None:
                    for n in range(5):
                        await sender.send(Ping(b"%d.%d" % (task, n)))

                for task in range(3):
                    group.start_soon(small, task)
                await anyio.wait_all_tasks_blocked()
                assert not sender.send_nowait(Ping(b"not now"))  # a send is under way
                received = [(await receiver.receive()).payload for _ in range(16)]
            assert received[0] == b"x" * big
            for task in range(3):
                mine = [p for p in received[1:] if p.startswith(b"%d." % task)]
                assert mine == [b"%d.%d" % (task, n) for n in range(5)]


async def test_send_nowait_hands_the_rest_of_a_big_frame_to_the_port() -> None:
    one, two = socket.socketpair()
    big = 4 * 2**20
    sender = from_socket(one, receives=Ping, max_frame=2 * big)
    receiver = from_socket(two, receives=Ping, max_frame=2 * big)
    with anyio.fail_after(30):
        async with (
            startable.running(sender),
            startable.running(receiver),
            anyio.create_task_group() as group,
        ):
            assert sender.send_nowait(Ping(b"small"))
            assert sender.send_nowait(Ping(b"x" * big))  # taken in part: the port writes the rest
            assert not sender.send_nowait(Ping(b"behind"))  # (that send is under way)
            group.start_soon(sender.send, Ping(b"after"))  # waits its turn
            assert [(await receiver.receive()).payload for _ in range(3)] == [
                b"small",
                b"x" * big,
                b"after",
            ]
            with pytest.raises(FrameError):
                sender.send_nowait(Ping(b"x" * (2 * big + 1)))


async def test_a_loop_of_sends_lets_the_other_tasks_run() -> None:
    """Sends the socket takes at once cost no scheduler pass, but a task that
    sends in a loop still lets the others run now and then."""
    sender, receiver = port_pair(Ping)
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(10):
        async with (
            startable.running(sender),
            startable.running(receiver),
            anyio.create_task_group() as group,
        ):
            group.start_soon(other)  # (it has not run yet)
            for _ in range(100):  # (all fit in the socket's buffer)
                await sender.send(Ping(b"x"))
            assert turns > 0
            group.cancel_scope.cancel()


async def test_a_cancelled_send_whose_frame_went_in_part_still_sends_it_whole() -> None:
    """A caller already cancelled whose frame the kernel took part of: the rest is
    written all the same (the cancellation takes effect once the frame is out)."""
    one, two = socket.socketpair()
    big = 4 * 2**20
    sender = from_socket(one, receives=Ping, max_frame=2 * big)
    receiver = from_socket(two, receives=Ping, max_frame=2 * big)
    got: list[bytes] = []
    with anyio.fail_after(10):
        async with (
            startable.running(sender),
            startable.running(receiver),
            anyio.create_task_group() as group,
        ):

            async def read() -> None:
                got.append((await receiver.receive()).payload)

            group.start_soon(read)
            with anyio.CancelScope() as scope:
                scope.cancel()
                await sender.send(Ping(b"x" * big))
            assert sender.statistics().frames_sent == 1
    assert got == [b"x" * big]


async def test_a_port_closed_under_its_waiting_reader_ends_that_read() -> None:
    with anyio.fail_after(5):
        for _ in range(3):  # (each time on a file descriptor the last one freed)
            one, two = port_pair(Ping)
            async with startable.running(one), anyio.create_task_group() as group:
                await startable.of(two).start()
                outcome: list[str] = []

                async def read(port: ConnectionPort[Any], outcome: list[str]) -> None:
                    try:
                        await port.receive()
                    except Exception as exc:
                        outcome.append(type(exc).__name__)

                group.start_soon(read, two, outcome)
                await anyio.wait_all_tasks_blocked()  # it waits for the socket
                await startable.of(two).stop()
                await anyio.wait_all_tasks_blocked()
                assert outcome == ["PortClosed"]
                assert startable.of(one).state is State.STARTED


async def test_the_rest_of_a_send_nowait_that_times_out_stops_the_port_only() -> None:
    """The port's own task that writes the rest of a frame stops the port when the
    peer reads nothing for send_timeout, as a send would; it raises into nobody."""
    one, two = socket.socketpair()
    one.setblocking(False)
    big = 4 * 2**20
    stream = _SocketStream(one)
    sender = ConnectionPort(stream, receives=Ping, max_frame=2 * big, send_timeout=0.3)
    receiver = from_socket(two, receives=Ping, max_frame=2 * big)
    with anyio.fail_after(10):
        async with startable.running(receiver), startable.open_owner():
            await startable.of(sender).start()  # no hook, as a container's runner does
            assert sender.send_nowait(Ping(b"x" * big))  # nobody reads it
            await startable.of(sender).wait_state(State.STOPPED)
            assert isinstance(startable.of(sender).statistics().stop_reason, PortClosed)
