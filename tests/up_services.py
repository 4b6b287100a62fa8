"""Services that `tests/cli/test_up.py` names in its cluster files (`tests.up_services:...`)."""

from __future__ import annotations

import os
import sys

import anyio

import startable
from startable.cluster import this_service


class Talker:
    """Says hello on stdout and on stderr when it starts, goodbye when it stops."""

    @startable.as_raw_start
    async def _start(self) -> None:
        print(f"hello from {os.environ.get('TALKER', 'a talker')}", flush=True)
        print("a line on stderr", file=sys.stderr, flush=True)

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        print("goodbye", flush=True)


class FailsToStart:
    """Its raw start raises: the database it needs is not there."""

    @startable.as_raw_start
    async def _start(self) -> None:
        raise ConnectionRefusedError("the database said no")

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        pass


class Crashes:
    """Starts, then crashes a moment later: its process exits."""

    @startable.as_raw_start
    async def _start(self) -> None:
        startable.of(self).start_soon(self._crash)

    async def _crash(self) -> None:
        await anyio.sleep(0.05)
        os._exit(3)

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        pass


class HangsOnStop:
    """Starts at once; its raw stop never ends (until its process is killed)."""

    @startable.as_raw_start
    async def _start(self) -> None:
        print("ready", flush=True)

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        print("stopping, slowly", flush=True)
        await anyio.sleep_forever()


class SlowStart:
    """Its raw start takes a minute; its raw stop says why it runs."""

    @startable.as_raw_start
    async def _start(self) -> None:
        print("starting, slowly", flush=True)
        await anyio.sleep(60)

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        print(f"raw stop: {type(err).__name__}: {err}", flush=True)


class IgnoresTerm:
    """Ignores the close request and SIGTERM: only SIGKILL ends it."""

    @startable.as_raw_start
    async def _start(self) -> None:
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        await anyio.sleep_forever()


class Parent:
    """Once STARTED, creates a child service `kid` (a Talker) of its own."""

    @startable.as_raw_start
    async def _start(self) -> None:
        startable.of(self).start_soon(self._create_kid)

    async def _create_kid(self) -> None:
        await startable.of(self).wait_state(startable.State.STARTED)
        kid = {"TALKER": "kid", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
        await this_service().create("kid", "tests.up_services:Talker", env=kid)


#: What `Forger` writes: escape sequences, a carriage return, a forged line.
FORGERIES = (
    "\x1b]0;pwned\x07retitled",  # OSC: the window's title
    "\x1b[2J\x1b[Hcleared",  # CSI: clear the screen, cursor home
    "ok\rdemo: stopped",  # a carriage return back over the prefix
    "\x9b2Jc1",  # C1 CSI, one character
    "\x1bP1$qm\x1b\\dcs",  # DCS
    "abc\u202edetacilpmoc",  # a bidirectional override
    "\x1b[31mred\x1b[0m",  # a colour
    "kv: STOPPED",  # a line that says what startable says
)


class Forger:
    """Writes terminal escape sequences and lines that look like startable's own."""

    @startable.as_raw_start
    async def _start(self) -> None:
        for line in FORGERIES:
            print(line, flush=True)
        print("forged", file=sys.stderr, flush=True)

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        pass


class Liar:
    """Fails to start with an error whose message holds escape sequences."""

    @startable.as_raw_start
    async def _start(self) -> None:
        raise ConnectionError("\x1b]0;pwned\x07no\x1b[2J\nkv: STOPPED")

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        pass


class Chatty:
    """Writes `CHATTY_LINES` lines of 100 characters once STARTED, then creates
    the file `CHATTY_DONE`."""

    @startable.as_raw_start
    async def _start(self) -> None:
        startable.of(self).start_soon(self._chat)

    async def _chat(self) -> None:
        await startable.of(self).wait_state(startable.State.STARTED)

        def chat() -> None:
            for i in range(int(os.environ["CHATTY_LINES"])):
                sys.stdout.write(f"{i:08d} " + "x" * 91 + "\n")
            sys.stdout.flush()
            with open(os.environ["CHATTY_DONE"], "w"):
                pass

        await anyio.to_thread.run_sync(chat)

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        pass


class PoolMember:
    """A replica of a pool: says which one it is when it starts and when it stops."""

    @startable.as_raw_start
    async def _start(self) -> None:
        me = this_service()
        print(f"replica {me.replica} of {me.replicas} up (pid {os.getpid()})", flush=True)

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        print(f"replica {this_service().replica} down (pid {os.getpid()})", flush=True)
