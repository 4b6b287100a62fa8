"""A remote that breaks the control protocol, run as a container's `python`
(tests/cluster/test_control.py).

The controller runs `PYTHON -m startable.cluster._child`; the test's PYTHON is a
launcher that calls `main()` here instead. STARTABLE_FAKE says what it does
wrong; then it waits to be killed.
"""

from __future__ import annotations

import os
import socket
import time

import msgspec

from startable.cluster._ipc.messages import RemoteReady, StateChanged
from startable.cluster._ipc.wire import HEADER, FrameCodec


def frame(message: object) -> bytes:
    return FrameCodec().encode(msgspec.msgpack.encode(message))


def ready(**fields: object) -> bytes:
    return frame(RemoteReady(os.getpid(), "3.x", **fields))  # type: ignore[arg-type]


BEHAVIOURS = {
    "garbage": lambda: b"hello, this is not a startable frame\n",
    "huge": lambda: HEADER.pack(1 << 31),
    "slow": lambda: b"\x00\x00",
    "started-first": lambda: frame(StateChanged("STARTED", 1)),
    "skew": lambda: ready(protocol=999, version="9.9"),
    "old": lambda: frame({"type": "remoteReady", "pid": os.getpid(), "python": "3.x"}),
    "newer": lambda: frame(
        {"type": "remoteReady", "pid": os.getpid(), "python": "3.x", "protocol": 1, "extra": 1}
    ),
    "not-msgpack": lambda: FrameCodec().encode(b"\xc1\xc1\xc1"),
    "twice": lambda: ready(protocol=1) + ready(protocol=1),
}


def main() -> None:
    sock = socket.socket(fileno=int(os.environ["STARTABLE_PORT_FD"]))
    sock.setblocking(True)
    sock.sendall(BEHAVIOURS[os.environ["STARTABLE_FAKE"]]())
    time.sleep(3600)  # until the stop ladder ends it
