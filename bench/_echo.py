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


async def raw_echo_round_trip(n: int, child_code: str = ECHO_CHILD, payload: bytes = PING) -> float:
    """Seconds per round trip of `payload`, framed, to a child running `child_code`."""
    ours, theirs = socket.socketpair()
    child = subprocess.Popen(  # noqa: ASYNC220 (spawning does not block for long)
        [sys.executable, "-c", child_code, str(theirs.fileno()), str(ROOT)],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    stream = await anyio.abc.SocketStream.from_socket(ours)
    codec, reader = FrameCodec(), FrameReader(FrameCodec())

    async def once() -> None:
        await stream.send(codec.encode(payload))
        while reader.next() is None:
            reader.feed(await stream.receive())

    try:
        for _ in range(50):
            await once()
        began = time.perf_counter()
        for _ in range(n):
            await once()
        return (time.perf_counter() - began) / n
    finally:
        await stream.aclose()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
