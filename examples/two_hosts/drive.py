"""Both hosts of the two-hosts example in one program, on a server of its own.

uv run python examples/two_hosts/drive.py

(The tutorial "Two hosts, one cluster" runs them as two `startable up`.)
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import anyio

import startable
from startable.cluster import EmbeddedRedis, ServicesManager, load_cluster

HERE = Path(__file__).parent


async def main() -> None:
    os.environ.setdefault("STARTABLE_CLUSTER_KEY", secrets.token_hex(32))
    first, second = load_cluster(HERE / "kv.toml"), load_cluster(HERE / "api.toml")
    async with startable.running(EmbeddedRedis()) as server:
        # Each file names the shared server; here both use this program's own.
        kv_host = ServicesManager(
            first.services, **{**first.manager_options(), "redis": server.url}
        )
        api_host = ServicesManager(
            second.services, **{**second.manager_options(), "redis": server.url}
        )
        async with startable.running(kv_host), startable.running(api_host):
            await api_host.client.request("api", "remember", "answer", 42)
            print("recalled:", await api_host.client.request("api", "recall", "answer"))
            # The kv host's operator changes api's configuration; api, on the other
            # host, hears of it through Redis.
            await kv_host.client.config("api").set("greeting", "welcome")
            with anyio.fail_after(10):
                greeting = "hello, Ada"
                while greeting == "hello, Ada":  # (api, in its own process, hears of it soon)
                    greeting = await api_host.client.request("api", "greet", "Ada")
                    await anyio.sleep(0.05)
            print("greeted:", greeting)
            print("kv runs on the other host:", kv_host["kv"].pid is not None)
            print("here, kv is", startable.of(api_host["kv"]).state.name, "and remote")
    print("stopped:", startable.of(api_host).state.name, startable.of(kv_host).state.name)


if __name__ == "__main__":
    anyio.run(main, backend="trio")
