"""A service in a child process of its own, with permissions.

Run it with `python examples/sandboxed.py`. The `Notes` service below is
loaded in the child by its import path (`sandboxed:Notes`); it may write in
one directory and nowhere else, may not use the network and may not start
programs. It tries to write, change a file's mode, connect, look a name up
and run a program, and reports what it was told: each is refused with a
`PermissionError`, by the kernel (Landlock, seccomp) or the audit hook.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio

import startable
from startable.cluster import Permissions, ServiceContainer


class Notes:
    """Keeps notes in $NOTES_DIR. This class runs in the child process."""

    def __init__(self) -> None:
        self.directory = Path(os.environ["NOTES_DIR"])

    @startable.as_raw_start
    async def _start(self) -> None:
        (self.directory / "today.txt").write_text("buy milk\n")
        print("wrote today.txt")
        for attempt, action in (
            ("write outside", lambda: (self.directory.parent / "escape.txt").write_text("x")),
            ("change a mode outside", lambda: self.directory.parent.chmod(0o777)),
            ("connect", lambda: socket.create_connection(("127.0.0.1", 9), timeout=1)),
            ("look a name up", lambda: socket.getaddrinfo("example.com", 443)),
            ("run a program", lambda: subprocess.run(["true"], check=False)),
        ):
            try:
                action()
            except PermissionError:
                print(f"{attempt}: refused")
            else:
                print(f"{attempt}: ALLOWED")

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        print(f"closing the notebook (reason: {err})")


async def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        notes_dir = anyio.Path(scratch, "notes")
        await notes_dir.mkdir()
        container = ServiceContainer(
            "sandboxed:Notes",
            cwd=str(Path(__file__).parent),  # where the child imports `sandboxed` from
            env={"NOTES_DIR": str(notes_dir)},
            permissions=Permissions(write=[str(notes_dir)], memory=2**30, open_files=256),
            on_output=lambda line: print(f"  [notes] {line.text}"),
        )
        with anyio.fail_after(30):
            async with startable.running(container):
                assert container.controller is not None
                print(f"notes service running in pid {container.pid}")
                for mechanism in container.controller.mechanisms:
                    print(f"  protected by {mechanism}")
                round_trip = await container.controller.ping()
                print(f"control port round trip: {round_trip * 1e6:.0f} µs")
        print(f"stopped: exit code {container.returncode}, ", end="")
        note = await (notes_dir / "today.txt").read_text()
        print(f"the note says {note.strip()!r}")
        print("escape.txt exists:", await anyio.Path(scratch, "escape.txt").exists())


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "trio")
