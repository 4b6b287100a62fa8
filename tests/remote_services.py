"""Services the container tests run in child processes (`tests.remote_services:...`).

Behaviour is chosen with environment variables, so one class covers many
endings without editing code: STARTABLE_TEST_* below.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import anyio

import startable


class Echo:
    """Starts, prints a little, and stops cleanly."""

    @startable.as_raw_start
    async def _start(self) -> None:
        print("echo: started", flush=True)
        print("echo: to stderr", file=sys.stderr, flush=True)
        print(f"cwd={os.getcwd()} greeting={os.environ.get('GREETING')}", flush=True)

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        print(f"echo: stopping ({err!r})", flush=True)


class Faulty:
    """Fails where STARTABLE_TEST_FAIL says: start, running, stop, exit, hang."""

    def __init__(self) -> None:
        self.where = os.environ.get("STARTABLE_TEST_FAIL", "")

    @startable.as_raw_start
    async def _start(self) -> None:
        if self.where == "start":
            raise ConnectionRefusedError("the database said no")
        if self.where == "running":
            startable.of(self).start_soon(self._crash)
        if self.where == "exit":
            startable.of(self).start_soon(self._exit)
        if self.where == "hang":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    async def _crash(self) -> None:
        await anyio.sleep(0.05)
        raise OSError("the disk filled up")

    async def _exit(self) -> None:
        await anyio.sleep(0.05)
        os._exit(3)

    @startable.as_raw_stop
    async def _stop(self) -> None:
        if self.where == "stop":
            raise RuntimeError("could not flush the journal")
        if self.where == "hang":
            await anyio.sleep_forever()


class Prober:
    """Tries what STARTABLE_TEST_PROBE lists and prints ALLOWED/DENIED for each."""

    @startable.as_raw_start
    async def _start(self) -> None:
        scratch = os.environ.get("STARTABLE_TEST_SCRATCH", "/tmp")
        probes = {
            "read-etc": lambda: _read("/etc/hostname"),
            "write-scratch": lambda: _write(os.path.join(scratch, "ok.txt")),
            "write-elsewhere": lambda: _write("/tmp/startable-forbidden.txt"),
            "tcp": lambda: socket.create_connection(("127.0.0.1", 9), timeout=1).close(),
            "udp": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
                b"x", ("127.0.0.1", 9)
            ),
            "subprocess": lambda: subprocess.run(["/bin/true"], check=False),
        }
        for name in os.environ.get("STARTABLE_TEST_PROBE", "").split(","):
            try:
                probes[name]()
            except PermissionError as exc:
                print(f"DENIED {name}: {exc}", flush=True)
            except OSError as exc:  # refused connection, missing file...: not a permission matter
                print(f"ALLOWED {name} ({type(exc).__name__})", flush=True)
            else:
                print(f"ALLOWED {name}", flush=True)


def _read(path: str) -> None:
    with open(path) as file:
        file.read()


def _write(path: str) -> None:
    with open(path, "w") as file:
        file.write("x")


class Sleeper:
    """Runs until stopped; used to kill its controller's process under it."""

    @startable.as_raw_start
    async def _start(self) -> None:
        pass


class Tight:
    """Uses the CPU and some memory, so resource samples show it."""

    @startable.as_raw_start
    async def _start(self) -> None:
        self.ballast = bytearray(20 * 1024 * 1024)
        startable.of(self).start_soon(self._spin)

    async def _spin(self) -> None:
        while True:
            sum(range(20_000))
            await anyio.lowlevel.checkpoint()


class SlowStart:
    """A raw start that never ends by itself (it waits, cancellably)."""

    @startable.as_raw_start
    async def _start(self) -> None:
        print("slow: starting", flush=True)
        await anyio.sleep_forever()

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        print(f"slow: stopping ({type(err).__name__}: {err})", flush=True)


class ThreadRaiser:
    """Threads that raise, joined from the event loop's own thread (which then blocks).

    STARTABLE_TEST_THREADS says how many; STARTABLE_TEST_MESSAGE_SIZE how long
    each error's message is.
    """

    @startable.as_raw_start
    async def _start(self) -> None:
        import threading

        size = int(os.environ.get("STARTABLE_TEST_MESSAGE_SIZE", "10"))

        def fail(n: int) -> None:
            raise RuntimeError(f"thread {n} failed: " + "x" * size)

        for n in range(int(os.environ.get("STARTABLE_TEST_THREADS", "1"))):
            thread = threading.Thread(target=fail, args=(n,), name=f"worker-{n}")
            thread.start()
            thread.join()  # on the loop's thread: the excepthook must not wait for the loop
        print("raiser: joined", flush=True)


class Blocking:
    """A raw start that blocks its event loop (no close request can be heard)."""

    @startable.as_raw_start
    def _start(self) -> None:
        import time

        print("blocking: starting", flush=True)
        time.sleep(60)


class Quits:
    """Stops itself cleanly, without a reason, a moment after it started."""

    @startable.as_raw_start
    async def _start(self) -> None:
        startable.of(self).start_soon(self._quit)

    async def _quit(self) -> None:
        await anyio.sleep(0.05)
        startable.of(self).stop_nowait()
