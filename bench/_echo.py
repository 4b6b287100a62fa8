"""Echo children: the floors the round trips of bench/cluster.py and bench/manager.py
are measured against, in the same run.

A child echoes every frame it reads (the port's framing, no tag); the parent,
async on the backend it runs on, sends one and waits for it back.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import anyio.abc

from startable.cluster._ipc.wire import FrameCodec, FrameReader

ROOT = Path(__file__).resolve().parent.parent
#: As large as an encoded `Ping` of the control port.
PING = b"\x92\xa4ping\xc4\x08" + bytes(8)

ECHO_CHILD = """
import socket, sys
sys.path.insert(0, sys.argv[2])
from startable.cluster._ipc.wire import FrameCodec, FrameReader
sock = socket.socket(fileno=int(sys.argv[1]))
codec = FrameCodec()
reader = FrameReader(FrameCodec())
while True:
    data = sock.recv(65536)
    if not data:
        break
    reader.feed(data)
    while (payload := reader.next()) is not None:
        sock.sendall(codec.encode(payload))
"""

ASYNC_ECHO_CHILD = """
import socket, sys
sys.path.insert(0, sys.argv[2])
import anyio
from startable.cluster._ipc.wire import FrameCodec, FrameReader

async def main():
    stream = await anyio.abc.SocketStream.from_socket(socket.socket(fileno=int(sys.argv[1])))
    codec, reader = FrameCodec(), FrameReader(FrameCodec())
    async for data in stream:
        reader.feed(data)
        while (payload := reader.next()) is not None:
            await stream.send(codec.encode(payload))

anyio.run(main, backend="trio")
"""


#: Copies bytes as they come between the sockets of argv[1] and argv[3], both ways,
#: without reading a frame; it ends when either side does.
RELAY_CHILD = """
import socket, sys
import anyio, anyio.abc

async def main():
    up = await anyio.abc.SocketStream.from_socket(socket.socket(fileno=int(sys.argv[1])))
    down = await anyio.abc.SocketStream.from_socket(socket.socket(fileno=int(sys.argv[3])))

    async def copy(source, sink):
        try:
            async for data in source:
                await sink.send(data)
        except anyio.BrokenResourceError:
            pass
        group.cancel_scope.cancel()  # one side is gone: so is the relay

    async with up, down, anyio.create_task_group() as group:
        group.start_soon(copy, up, down)
        group.start_soon(copy, down, up)

anyio.run(main, backend="trio")
"""


def spawn(code: str, theirs: socket.socket, *more: socket.socket) -> subprocess.Popen[bytes]:
    """A child running `code` with the sockets' fds as argv[1] and argv[3:] (argv[2]: ROOT)."""
    fds = [theirs.fileno(), *(s.fileno() for s in more)]
    argv = [sys.executable, "-c", code, str(fds[0]), str(ROOT), *map(str, fds[1:])]
    return subprocess.Popen(argv, pass_fds=fds)


async def raw_echo_round_trip(
    n: int,
    child_code: str = ECHO_CHILD,
    payload: bytes = PING,
    *,
    reader_task: bool = False,
) -> float:
    """Seconds per round trip of `payload`, framed, to a child running `child_code`.

    With `reader_task`, the parent reads in a task of its own, which wakes
    the sender with an event: the shape of any port whose peer also sends
    on its own (a control port's remote reports its state and resources),
    so that one task must always be reading.
    """
    ours, theirs = socket.socketpair()
    child = spawn(child_code, theirs)
    theirs.close()
    stream = await anyio.abc.SocketStream.from_socket(ours)
    codec, reader = FrameCodec(), FrameReader(FrameCodec())

    async def once() -> None:
        await stream.send(codec.encode(payload))
        while reader.next() is None:
            reader.feed(await stream.receive())

    answered = [anyio.Event()]

    async def read() -> None:
        async for data in stream:
            reader.feed(data)
            while reader.next() is not None:
                answered[0].set()

    async def once_read_elsewhere() -> None:
        answered[0] = anyio.Event()
        await stream.send(codec.encode(payload))
        await answered[0].wait()

    trip = once_read_elsewhere if reader_task else once
    try:
        async with anyio.create_task_group() as group:
            if reader_task:
                group.start_soon(read)
            for _ in range(50):
                await trip()
            began = time.perf_counter()
            for _ in range(n):
                await trip()
            elapsed = (time.perf_counter() - began) / n
            group.cancel_scope.cancel()
        return elapsed
    finally:
        await stream.aclose()
        end(child)


def end(child: subprocess.Popen[bytes]) -> None:
    """Wait for `child`, whose socket is closed, to end (kill it after 30 s)."""
    try:
        child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
