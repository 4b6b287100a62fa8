"""Run the pool from Python: requests over its port and the data plane, a reload, a scale.

uv run python examples/pool/drive.py
"""

from __future__ import annotations

from pathlib import Path

import anyio
import attrs

import startable
from startable.cluster import ServicesManager, load_cluster

POOL = Path(__file__).with_name("pool.toml")


async def get(port: int) -> str:
    """One HTTP request to the pool's port; the body of the answer."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(b"GET / HTTP/1.1\r\nHost: pool\r\n\r\n")
        answer = b""
        while True:
            try:
                answer += await stream.receive()
            except anyio.EndOfStream:
                break
    return answer.partition(b"\r\n\r\n")[2].decode().strip()


async def main() -> None:
    pool = load_cluster(POOL)
    # Port 0 here, so that the example runs beside anything on 8000.
    specs = [
        attrs.evolve(spec, listen=["127.0.0.1:0"]) if spec.listen else spec
        for spec in pool.services
    ]
    manager = ServicesManager(specs, name=pool.name)
    async with startable.running(manager):
        web = manager["web"]
        port = web.listeners[0].socket.getsockname()[1]
        print("one answer:", (await get(port)).split(":")[0])
        answers = await manager.client.request_all("web", "whoami")
        print("replicas answering:", [answer.replica for answer in answers])

        served, failed = 0, 0
        done = anyio.Event()

        async def hammer() -> None:
            nonlocal served, failed
            while not done.is_set():
                try:
                    await get(port)
                    served += 1
                except OSError:
                    failed += 1

        before = {container.pid for container in web.containers}
        async with anyio.create_task_group() as clients:
            for _ in range(4):
                clients.start_soon(hammer)
            await manager.reload("web")  # one by one: a new replica STARTED, then the old retired
            done.set()
        after = {container.pid for container in web.containers}
        print(f"reload: every process new: {not before & after}; failed requests: {failed}")
        print("served during the reload:", "some" if served else "none")

        await manager.scale("web", 2)
        print("after scale to 2:", len(web.containers), "replicas")
    print("stopped:", startable.of(manager).state.name)


if __name__ == "__main__":
    anyio.run(main, backend="trio")
