"""A first service: a TCP echo server whose lifecycle startable drives.

The raw start launches the accept loop as a background task and waits until
it is listening (``start_task``). The task owns the listening socket, so the
socket closes when the task is cancelled at the end of the stop. The raw stop
is the graceful part: it tells connected clients goodbye while the tasks
still run.
"""

from __future__ import annotations

import anyio
import anyio.abc

import startable


class EchoServer:
    def __init__(self) -> None:
        self.port = 0
        self.clients: set[anyio.abc.SocketStream] = set()

    @startable.as_raw_start
    async def _start(self) -> None:
        self.port = await startable.of(self).start_task(self._serve)

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[int]) -> None:
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
            await listener.serve(self._echo)

    async def _echo(self, client: anyio.abc.SocketStream) -> None:
        self.clients.add(client)
        try:
            async with client:
                async for chunk in client:
                    await client.send(chunk)
        finally:
            self.clients.discard(client)

    @startable.as_raw_stop
    async def _stop(self) -> None:
        for client in list(self.clients):
            await client.send(b"server closing\n")

    @startable.assert_state()
    def address(self) -> tuple[str, int]:
        """Where clients connect; only meaningful while STARTED."""
        return ("127.0.0.1", self.port)


async def main() -> None:
    async with startable.running(EchoServer()) as server:
        host, port = server.address()
        client = await anyio.connect_tcp(host, port)
        await client.send(b"hello")
        print("echoed:", (await client.receive()).decode())
        print("state inside the block:", startable.of(server).state.name)
    print("last words:", (await client.receive()).decode().strip())
    await client.aclose()
    print("state after the block:", startable.of(server).state.name)
    try:
        server.address()
    except startable.StateError as exc:
        print("refused:", exc)


if __name__ == "__main__":
    anyio.run(main, backend="trio")
