"""The wire under random and hostile input: hypothesis properties, and a fuzz run.

The fuzz run drives `FrameReader` and the message decoder, which are the
whole of what `ConnectionPort.receive` does with the bytes it gets, with
$STARTABLE_FUZZ_FRAMES inputs (100,000 by default): random bytes, and
valid frame streams mutated by bit flips, truncation, insertion, deletion
and rewritten length fields. A smaller run goes through real socket ports.
The random generator is seeded: a failure names its seed and replays.
"""

from __future__ import annotations

import os
import random
import socket
import struct

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import startable
from startable.cluster import AuthenticationError, FrameError, from_socket
from startable.cluster._ipc.messages import CloseRequest, ErrorInfo, Ping, RunEntry, ToRemote
from startable.cluster._ipc.wire import FrameCodec, FrameReader

KEY_OUT, KEY_IN = b"o" * 32, b"i" * 32
MAX = 4096
FUZZ_FRAMES = int(os.environ.get("STARTABLE_FUZZ_FRAMES", "100000"))

messages = st.one_of(
    st.builds(Ping, st.binary(max_size=64)),
    st.builds(
        CloseRequest,
        st.one_of(st.none(), st.builds(ErrorInfo, st.text(max_size=16), st.text(), st.text())),
    ),
    st.builds(RunEntry, st.text(max_size=40), resources_interval=st.floats(0, 10)),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


@pytest.mark.parametrize("keyed", [False, True])
@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=8), cuts=st.lists(st.integers(0, 10_000))
)
def test_any_chunking_of_valid_frames_reassembles_them(
    keyed: bool, payloads: list[bytes], cuts: list[int]
) -> None:
    sender = FrameCodec(max_frame=MAX, send_key=KEY_OUT if keyed else None)
    reader = FrameReader(FrameCodec(max_frame=MAX, receive_key=KEY_OUT if keyed else None))
    stream = b"".join(sender.encode(p) for p in payloads)
    got = []
    for chunk in split(stream, cuts):
        reader.feed(chunk)
        while (payload := reader.next()) is not None:
            got.append(payload)
    assert got == payloads
    assert not reader.mid_frame


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 5000)), keyed=st.booleans())
def test_arbitrary_bytes_raise_only_frame_errors(data: bytes, cuts: list[int], keyed: bool) -> None:
    reader = FrameReader(FrameCodec(max_frame=MAX, receive_key=KEY_IN if keyed else None))
    decoder = msgspec.msgpack.Decoder(ToRemote)
    for chunk in split(data, cuts):
        reader.feed(chunk)
        try:
            while (payload := reader.next()) is not None:
                assert len(payload) <= MAX
                try:
                    decoder.decode(payload)
                except Exception:
                    pass  # receive() raises MessageError and goes on
        except (FrameError, AuthenticationError):
            return  # receive() stops the port


@given(message=messages)
def test_messages_survive_encoding(message: msgspec.Struct) -> None:
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(message), type=ToRemote)
    assert decoded == message


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5)
        if kind == 0 and data:  # flip bits
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif kind == 1 and data:  # truncate
            del data[rng.randrange(len(data)) :]
        elif kind == 2:  # insert random bytes
            i = rng.randrange(len(data) + 1)
            data[i:i] = rng.randbytes(rng.randint(1, 16))
        elif kind == 3 and data:  # delete a run
            i = rng.randrange(len(data))
            del data[i : i + rng.randint(1, 16)]
        elif kind == 4 and len(data) >= 4:  # rewrite a length field
            data[0:4] = struct.pack(">I", rng.choice([0, 1, MAX, MAX + 1, 2**31, 2**32 - 1]))
    return bytes(data)


def valid_stream(rng: random.Random, codec: FrameCodec) -> bytes:
    frames = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(3)
        if kind == 0:
            message: msgspec.Struct = Ping(rng.randbytes(rng.randint(0, 40)))
        elif kind == 1:
            message = RunEntry(f"pkg.mod{rng.randint(0, 99)}:Service")
        else:
            message = CloseRequest(None)
        frames.append(codec.encode(msgspec.msgpack.encode(message)))
    return b"".join(frames)


def test_fuzz_run_finds_no_crash_and_no_hang() -> None:
    seed = int(os.environ.get("STARTABLE_FUZZ_SEED", "20261122"))
    rng = random.Random(seed)
    decoder = msgspec.msgpack.Decoder(ToRemote)
    outcomes = {"message": 0, "dropped": 0, "port closed": 0, "incomplete": 0}
    for case in range(FUZZ_FRAMES):
        keyed = case % 2 == 1
        key = KEY_IN if keyed else None
        if case % 4 < 2:
            data = rng.randbytes(rng.randint(0, 300))
        else:
            data = mutate(rng, valid_stream(rng, FrameCodec(max_frame=MAX, send_key=key)))
        reader = FrameReader(FrameCodec(max_frame=MAX, receive_key=key))
        reader.feed(data)
        payloads = 0
        try:
            while (payload := reader.next()) is not None:
                payloads += 1
                assert payloads <= len(data) // 4 + 1, f"seed {seed}, case {case}: no progress"
                try:
                    decoder.decode(payload)
                    outcomes["message"] += 1
                except Exception:  # exactly what receive() turns into MessageError
                    outcomes["dropped"] += 1
        except (FrameError, AuthenticationError):
            outcomes["port closed"] += 1
            continue
        except Exception as exc:  # pragma: no cover - the bug this test looks for
            raise AssertionError(f"seed {seed}, case {case}: {exc!r} on {data!r}") from exc
        if reader.mid_frame:
            outcomes["incomplete"] += 1
    assert sum(outcomes.values()) >= FUZZ_FRAMES
    # Every kind of outcome happened, so the run exercised each path.
    assert all(outcomes.values()), outcomes


@pytest.mark.anyio
async def test_mutated_streams_through_real_ports() -> None:
    rng = random.Random(7)
    codec = FrameCodec(max_frame=MAX)
    for case in range(300):
        raw, other = socket.socketpair()
        port = from_socket(other, receives=ToRemote, max_frame=MAX, name=f"fuzz {case}")
        data = mutate(rng, valid_stream(rng, codec)) if case % 3 else rng.randbytes(64)
        with anyio.fail_after(5), raw:
            async with startable.open_owner():
                await startable.of(port).start()
                raw.sendall(data)
                raw.shutdown(socket.SHUT_WR)
                received = 0
                while startable.of(port).state is startable.State.STARTED:
                    try:
                        await port.receive()
                        received += 1
                    except startable.cluster.MessageError:
                        continue
                    except startable.cluster.PortError:
                        break
                assert received <= len(data)
        assert startable.of(port).state is startable.State.STOPPED
