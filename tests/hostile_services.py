"""A service that attacks the data plane from its child process (`tests.hostile_services:...`).

It speaks to the manager through its own client's link, bypassing every check
`ServiceClient` makes, as a service's code can: the manager must hold.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec

import startable
from startable.cluster import handler, this_service
from startable.cluster._data.contract import Call, Create, Subscribe


class Hostile:
    @startable.as_raw_start
    async def _start(self) -> None:
        self.client = this_service()

    async def _ask(self, message: Any) -> str:
        """Send `message` raw and wait for its answer: what the router said of it."""
        try:
            await self.client._ask(message, 5.0, "", "")
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "ok"

    @handler
    async def create(self, fields: dict[str, Any]) -> str:
        fields = {
            "id": 1_000_000,
            "name": "spawned",
            "entry": "tests.plane_services:Store",
        } | fields
        return await self._ask(Create(**fields))

    @handler
    async def call(self, fields: dict[str, Any]) -> str:
        return await self._ask(Call(**({"id": 1_000_001, "service": "store"} | fields)))

    @handler
    async def subscribe(self, count: int) -> list[str]:
        """Subscribe to `count` distinct topics; what the router said of each (the last 3)."""
        said = [await self._ask(Subscribe(2_000_000 + n, f"topic-{n}")) for n in range(count)]
        return said[-3:]

    @handler
    async def unanswerable(self) -> str:
        """A call with an id no reply can carry: nothing must come back, nothing must break."""
        with anyio.move_on_after(0.5):
            await self.client._link.send(Call(-5, "store", "get", ("k",), {}, 5.0))
        return "sent"

    @handler
    async def garbage(self) -> str:
        """A frame that holds no valid message (the port drops it and carries on)."""
        port = self.client._link.port  # type: ignore[attr-defined]
        await port.send(msgspec.Raw(b"\x93\xa4call\xc0\xc0"))  # type: ignore[arg-type]
        return "sent"

    @handler
    async def cut_link(self) -> str:
        """Close this service's data link from inside, as if the socket broke."""
        port = self.client._link.port  # type: ignore[attr-defined]
        startable.of(self).start_soon(startable.of(port).stop)
        return "cutting"
