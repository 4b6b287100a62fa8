"""A server that takes the listening socket it is given, or binds its own.

Under socket activation (systemd's, and a startable pool's), the process is
started with its listening socket already bound, at descriptor 3:
``listen_sockets()`` finds it. Run alone, it binds the address itself with
``bind_listener``. Either way the lifecycle is the same, and so is the code
after the first line of the raw start. Try it under systemd's tool::

    systemd-socket-activate -l 127.0.0.1:8000 python examples/socket_activation.py
"""

from __future__ import annotations

import anyio
import anyio.abc

import startable
from startable.cluster import ListenAddress, bind_listener, listen_sockets


class Greeter:
    def __init__(self, address: str = "127.0.0.1:0") -> None:
        self.address = ListenAddress.parse(address)  # a bad one is refused here
        self.port = 0
        self.given = False

    @startable.as_raw_start
    async def _start(self) -> None:
        given = listen_sockets()
        self.given = bool(given)
        sock = given[0].socket if given else bind_listener(self.address)
        listener = await anyio.abc.SocketListener.from_socket(sock)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        startable.of(self).start_soon(self._serve, listener)

    async def _serve(self, listener: anyio.abc.SocketListener) -> None:
        async with listener:  # closed when the stop cancels this task
            await listener.serve(self._greet)

    async def _greet(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            await client.send(b"hello from the greeter\n")


async def main() -> None:
    greeter = Greeter()
    async with startable.running(greeter):
        print("socket given:", greeter.given)
        async with await anyio.connect_tcp("127.0.0.1", greeter.port) as client:
            print("heard:", (await client.receive()).decode().strip())
    print("greeter:", startable.of(greeter).state.name)


if __name__ == "__main__":
    anyio.run(main)
