"""Run the shop inside your own program and call its API from Python.

uv run python examples/shop/drive.py
"""

from __future__ import annotations

from pathlib import Path

import anyio

import startable
from startable.cluster import ServicesManager, load_cluster

SHOP = Path(__file__).with_name("shop.toml")


async def main() -> None:
    shop = load_cluster(SHOP)
    manager = ServicesManager(shop.services, name=shop.name)
    async with startable.running(manager):
        client = manager.client  # the operator's: it may call any service
        await client.request("api", "write", "greeting", "hello")
        print("read:", await client.request("api", "read", "greeting"))
        print("again:", await client.request("api", "read", "greeting"))
        print("stats:", await client.request("api", "stats"))
        worker = manager["worker"]
        print(f"worker: pid {worker.pid}, restarts {worker.restarts}")
        try:
            await client.request("api", "write", "x", object())
        except TypeError as exc:
            print("refused before sending:", exc)
    print("stopped:", startable.of(manager).state.name)


if __name__ == "__main__":
    anyio.run(main, backend="trio")
