"""A Redis-compatible server for as long as a block runs: `EmbeddedRedis`.

Needs the extras: pip install 'startable[redis,redis-server]'.
"""

import anyio
import coredis

import startable
from startable.cluster import EmbeddedRedis


async def main() -> None:
    server = EmbeddedRedis(password=EmbeddedRedis.new_password())
    async with startable.running(server):  # STARTED once it answers PING
        async with coredis.Redis.from_url(server.url) as client:
            await client.set("greeting", "hello from an embedded server")
            print((await client.get("greeting")).decode())
        print(f"it runs as pid {server.pid}, on port {server.port}")
    print(f"after the block: {startable.of(server).state.name}, pid {server.pid}")


if __name__ == "__main__":
    anyio.run(main, backend="trio")
