"""Dev mode's parts: the specs it runs, what it watches, and its debounce."""

from __future__ import annotations

import math
from pathlib import Path

import anyio
import pytest

from startable.cli._dev import dev_services, quiet_batches, watched_directories
from startable.cluster import RestartPolicy, ServiceSpec

pytestmark = pytest.mark.anyio


def test_each_pool_runs_one_replica_never_reforked_and_the_rest_is_untouched(
    tmp_path: Path,
) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "web.py").write_text("")
    (tmp_path / "tool.py").write_text("")
    agent = ServiceSpec(name="agent", entry="app.web:Agent", cwd=str(tmp_path))
    web = ServiceSpec(name="web", entry="app.web:Web", cwd=str(tmp_path), replicas=4)
    script = ServiceSpec(name="script", entry="tool.py:Tool", cwd=str(tmp_path), pool=True)
    text = ServiceSpec(name="text", entry="Made", code="class Made: pass", replicas=2)
    installed = ServiceSpec(name="installed", entry="anyio:Event", replicas=2)
    dev = dev_services([agent, web, script, text, installed])
    assert dev[0] is agent
    assert (dev[1].replicas, dev[1].is_pool, dev[1].restart) == (
        1,
        True,
        RestartPolicy(mode="never"),
    )
    assert watched_directories(dev) == {
        "web": str(tmp_path / "app"),  # the top-level package: its modules import each other
        "script": str(tmp_path),  # a file's directory
    }  # (code given as text, and an installed module: nothing to watch)


async def test_saves_within_the_delay_make_one_batch() -> None:
    send, receive = anyio.create_memory_object_stream[set[str]](math.inf)
    send.send_nowait({"a.py"})
    send.send_nowait({"b.py", "a.py"})
    send.close()
    with anyio.fail_after(10):
        batches = [batch async for batch in quiet_batches(receive, 5.0)]
    assert batches == [{"a.py", "b.py"}]


async def test_a_save_after_the_quiet_makes_a_second_batch() -> None:
    send, receive = anyio.create_memory_object_stream[set[str]](math.inf)
    batches: list[set[str]] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:

            async def collect() -> None:
                async for batch in quiet_batches(receive, 0.05):
                    batches.append(batch)

            group.start_soon(collect)
            send.send_nowait({"a.py"})
            while not batches:  # noqa: ASYNC110 - the quiet has to pass in real time
                await anyio.sleep(0.01)
            send.send_nowait({"b.py"})
            send.close()
    assert batches == [{"a.py"}, {"b.py"}]


def test_without_watchfiles_dev_mode_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from startable.cli._up import up

    monkeypatch.setitem(__import__("sys").modules, "watchfiles", None)  # not installed
    path = tmp_path / "c.toml"
    path.write_text('[services.web]\nentry = "anyio:Event"\n')
    assert up(str(path), dev=True, live=False) == 2
    assert "--dev needs watchfiles: pip install 'startable[dev]'" in capsys.readouterr().err
