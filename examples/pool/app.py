"""The services of examples/pool/pool.toml: an agent, and web workers in a pool.

`Web` is a small HTTP server on the socket the pool hands it
(`listen_sockets()`). It stops gracefully, as a pool replica should: it stops
accepting as soon as its stop begins (an on_stopping hook), and its raw stop
waits for the connections it already accepted. So a reload, which starts a
new replica before it retires an old one, never drops a request.
"""

from __future__ import annotations

import os

import anyio
import anyio.abc

import startable
from startable.cluster import handler, listen_sockets, this_service

#: How much of a request the server reads at most (it needs the request line).
MAX_REQUEST = 8192


class Agent:
    """Started first; holds what every worker asks for at its start."""

    def __init__(self) -> None:
        self.started = 0

    @startable.as_raw_start
    async def _start(self) -> None:
        print(f"agent: up (pid {os.getpid()})", flush=True)

    @handler
    async def greeting(self) -> str:
        """What the workers say; counts how many asked."""
        self.started += 1
        return "hello from the pool"


class Web:
    """One replica: answers every HTTP request with the greeting and its place in the pool."""

    @startable.as_raw_start
    async def _start(self) -> None:
        me = this_service()
        self.greeting = await me.request("agent", "greeting")  # the agent is STARTED already
        self._accepting = anyio.CancelScope()
        self._served = anyio.Event()
        startable.of(self).add_on_stopping(lambda _: self._accepting.cancel())
        (given,) = listen_sockets()  # the pool's socket, at descriptor 3
        listener = await anyio.abc.SocketListener.from_socket(given.socket)
        startable.of(self).start_soon(self._serve, listener)
        startable.of(self).start_soon(self._housekeeping)
        print(f"web: replica {me.replica} of {me.replicas} up (pid {os.getpid()})", flush=True)

    async def _serve(self, listener: anyio.abc.SocketListener) -> None:
        async with listener, anyio.create_task_group() as connections:
            with self._accepting:  # cancelled as the stop begins: no new connection
                await listener.serve(self._answer, task_group=connections)
        self._served.set()  # the task group has waited for the connections in flight

    async def _answer(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            request = b""
            with anyio.move_on_after(10):  # a client that sends nothing is not waited for
                while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST:
                    try:
                        request += await client.receive()
                    except anyio.EndOfStream:
                        break
            me = this_service()
            body = f"{self.greeting}: replica {me.replica} (pid {os.getpid()})\n".encode()
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n"
            await client.send(head.encode() + b"Connection: close\r\n\r\n" + body)

    async def _housekeeping(self) -> None:
        """Work that one process of the pool should do: only the singleton does it."""
        me = this_service()
        await me.wait_singleton()
        print(f"web: replica {me.replica} holds the singleton role", flush=True)

    @startable.as_raw_stop
    async def _stop(self) -> None:
        self._accepting.cancel()  # (a failed start calls no on_stopping hook)
        with anyio.move_on_after(10):
            await self._served.wait()
        print(f"web: replica {this_service().replica} down", flush=True)

    @handler
    async def whoami(self) -> dict[str, int]:
        """Which replica answered."""
        me = this_service()
        return {"replica": me.replica, "pid": os.getpid()}
