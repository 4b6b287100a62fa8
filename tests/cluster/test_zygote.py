"""The zygote on its own: fork requests, their answers, and its end (real processes)."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import psutil
import pytest

from startable.cluster._errors import ClusterError
from startable.cluster._process.remote import ENV_PORT
from startable.cluster._process.zygote import Zygote

pytestmark = [pytest.mark.anyio, pytest.mark.processes]


def new_zygote() -> Zygote:
    return Zygote(
        "tests.plane_services:Replica", code=None, permissions=None, env={}, cwd=None, name="web"
    )


@asynccontextmanager
async def zygote() -> AsyncIterator[Zygote]:
    server = new_zygote()
    async with anyio.create_task_group() as group:
        try:
            await server.start(group.start_soon)
            yield server
        finally:
            with anyio.CancelScope(shield=True):
                await server.aclose()


def holds(pid: int, sock: socket.socket) -> bool:
    """Whether process `pid` has `sock`'s socket open."""
    wanted = f"socket:[{os.fstat(sock.fileno()).st_ino}]"
    fds = os.listdir(f"/proc/{pid}/fd")
    return wanted in {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds}


async def test_a_fork_given_up_leaves_the_next_its_own_process() -> None:
    with anyio.fail_after(30):
        async with zygote() as server:
            assert server.pid is not None
            given_up, other = socket.socketpair()
            with anyio.CancelScope() as scope:
                scope.cancel()  # the request is sent, its answer not waited for
                await server.fork({}, [(ENV_PORT, given_up.fileno())], "web#0")
            ours, theirs = socket.socketpair()
            process = await server.fork({}, [(ENV_PORT, theirs.fileno())], "web#1")
            assert holds(process.pid, theirs)  # the process forked for this request
            zygote_process = psutil.Process(server.pid)
            while [c.pid for c in zygote_process.children()] != [process.pid]:  # noqa: ASYNC110
                await anyio.sleep(0.01)  # the one given up is killed (and reaped)
            process.signal(9)
            assert await process.wait() == -9
            await process.aclose()
            for sock in (given_up, other, ours, theirs):
                sock.close()


async def test_closing_a_zygote_ends_its_reader_and_refuses_forks() -> None:
    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            server = new_zygote()
            await server.start(group.start_soon)
            pid = server.pid
            await server.aclose()
            await server.ended.wait()  # its reader saw the close, and ended
            sock, other = socket.socketpair()
            with pytest.raises(ClusterError, match="its zygote has ended"):
                await server.fork({}, [(ENV_PORT, sock.fileno())], "web#0")
            sock.close()
            other.close()
        assert pid is not None
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
