"""Each service's configuration on one host (kept by the manager): get, set, delete,
items, watching changes, and what a service may not do (tests/redis/test_config.py
runs the same over Redis, across hosts)."""

from __future__ import annotations

import math

import anyio
import pytest

import startable
from startable.cluster import (
    ConfigChange,
    RequestRefused,
    ServiceClient,
    ServicesManager,
    ServiceSpec,
)
from startable.cluster._data import config as config_module
from startable.cluster._data.contract import (
    MAX_CONFIG_VALUE,
    MAX_CONFIGURING,
    Configure,
    Event,
    Subscribe,
    config_topic,
)

from .test_dataplane import Inbox

pytestmark = pytest.mark.anyio


class Quiet:
    """A service that does nothing: the tests use its client."""

    @startable.as_raw_start
    async def _start(self) -> None:
        pass


def cluster() -> ServicesManager:
    return ServicesManager(
        [ServiceSpec(name="kv", factory=Quiet), ServiceSpec(name="api", factory=Quiet)]
    )


def client_of(manager: ServicesManager, name: str) -> ServiceClient:
    client = manager[name].client
    assert client is not None
    return client


async def test_a_service_reads_and_changes_its_own_configuration() -> None:
    manager = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            config = client_of(manager, "kv").config()
            assert await config.get("limit") is None
            assert await config.get("limit", 10) == 10
            await config.set("limit", 20)
            await config.set("hosts", ["a", "b"])
            assert await config.get("limit") == 20
            assert await config.items() == {"limit": 20, "hosts": ["a", "b"]}
            assert await config.delete("limit") is True
            assert await config.delete("limit") is False
            # The operator reaches every service's configuration, by name.
            assert await manager.client.config("kv").items() == {"hosts": ["a", "b"]}
            await manager.client.config("api").set("mode", "fast")
            assert await client_of(manager, "api").config().get("mode") == "fast"
            assert await config.items() == {"hosts": ["a", "b"]}  # one service's, not all


async def test_every_watcher_gets_each_change_in_order() -> None:
    manager = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            config = client_of(manager, "kv").config()
            got: list[ConfigChange] = []
            async with config.watch() as changes, manager.client.config("kv").watch() as also:
                await manager.client.config("kv").set("limit", 1)
                await config.set("limit", 2)
                await config.delete("limit")
                await config.delete("limit")  # (not there: nothing to announce)
                await manager.client.config("api").set("other", 1)  # another service's
                await config.set("done", True)
                async for change in changes:
                    got.append(change)
                    if change.key == "done":
                        break
                assert (await also.receive()).value == 1
            assert got == [
                ConfigChange("kv", "limit", 1),
                ConfigChange("kv", "limit", 2),
                ConfigChange("kv", "limit", None, deleted=True),
                ConfigChange("kv", "done", True),
            ]


async def test_a_service_cannot_reach_another_services_configuration() -> None:
    manager = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            kv = client_of(manager, "kv")
            with pytest.raises(ValueError, match="its own configuration only"):
                kv.config("api")
            with pytest.raises(ValueError, match="names the service"):
                manager.client.config()
            with pytest.raises(ValueError, match="not a service name"):
                manager.client.config("no such/name")
            # Sent as a message anyway, it is refused by the router.
            inbox = Inbox()
            manager.router.attach("kv", inbox)
            manager.router.handle(inbox, Configure(1, "get", "api", "limit"))
            manager.router.handle(inbox, Subscribe(2, config_topic("api")))
            # (both refused at once, in `handle`)
            assert [reply.kind for reply in inbox.got] == ["refused", "refused"]
            assert "its own configuration only" in inbox.got[0].message
            with pytest.raises(RequestRefused, match="no service named 'gone'"):
                await manager.client.config("gone").get("x")


async def test_hostile_configuration_requests_are_answered_as_malformed() -> None:
    manager = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            inbox = Inbox()
            manager.router.attach("kv", inbox)
            bad = [
                Configure(1, "drop"),  # no such op
                Configure(2, "get", "", ""),  # no key
                Configure(3, "get", "", "k" * 256),
                Configure(4, "set", "", "k", b"x" * (MAX_CONFIG_VALUE + 1)),
                Configure(5, "get", "", "k", timeout=math.nan),
                Configure(6, "get", "", "k", timeout=-1.0),
                Configure(7, "get", "", "k", timeout=math.inf),
                Configure(8, "get", "bad name", "k"),
            ]
            for message in bad:
                manager.router.handle(inbox, message)
            assert [reply.kind for reply in inbox.got] == ["invalid"] * len(bad)
            assert manager.router.malformed["kv"] == len(bad)
            # Nobody emits on the cluster's own topics: not a client, not a message.
            with pytest.raises(ValueError, match="cluster's own"):
                await client_of(manager, "kv").emit(config_topic("kv"), {"forged": True})
            manager.router.handle(inbox, Event(config_topic("kv"), ["kv", "limit", 1, False]))
            assert manager.router.malformed["kv"] == len(bad) + 1
            # And the manager still answers.
            await manager.client.config("kv").set("still", "here")
            assert await client_of(manager, "kv").config().get("still") == "here"


async def test_bad_values_and_too_many_keys_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "MAX_CONFIG_KEYS", 3)
    manager = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            config = client_of(manager, "kv").config()
            with pytest.raises(TypeError, match="msgpack encodes"):
                await config.set("k", object())
            with pytest.raises(ValueError, match="bytes at most"):
                await config.set("k", "x" * (MAX_CONFIG_VALUE + 1))
            with pytest.raises(ValueError, match="1 to 255 characters"):
                await config.get("")
            for key in "abc":
                await config.set(key, 1)
            with pytest.raises(RequestRefused, match="has 3 configuration keys already"):
                await config.set("d", 1)
            await config.set("a", 2)  # a key it has may change
            assert await config.items() == {"a": 2, "b": 1, "c": 1}


async def test_a_service_holds_so_many_bytes_and_reads_copies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(config_module, "MAX_CONFIG_BYTES", 100)
    manager = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            config = manager.client.config("kv")
            await config.set("a", "x" * 40)
            await config.set("a", "y" * 90)  # (replacing a value counts the new one only)
            with pytest.raises(RequestRefused, match="more than 100 bytes"):
                await config.set("b", "z" * 20)
            await config.set("a", [1])
            listed = await config.get("a")
            listed.append(2)  # a copy: what is stored does not change
            assert await config.get("a") == [1]


async def test_configuration_requests_waiting_are_bounded_per_client() -> None:
    manager = cluster()
    with anyio.fail_after(10):
        async with startable.running(manager):
            inbox = Inbox()
            manager.router.attach("kv", inbox)
            for n in range(1, MAX_CONFIGURING + 11):  # (all before any is answered)
                manager.router.handle(inbox, Configure(n, "items"))
            refused = [reply for reply in inbox.got if reply.kind == "unavailable"]
            assert len(refused) == 10
            assert "configuration requests of this client wait already" in refused[0].message
            while len(inbox.got) < MAX_CONFIGURING + 10:  # noqa: ASYNC110 - the rest answer
                await anyio.sleep(0.01)
            assert all(reply.kind == "" for reply in inbox.got if reply not in refused)
            # Answered, they no longer count.
            manager.router.handle(inbox, Configure(999, "items"))
            while inbox.got[-1].id != 999:  # noqa: ASYNC110 - answered in a task
                await anyio.sleep(0.01)
            assert inbox.got[-1].kind == ""
