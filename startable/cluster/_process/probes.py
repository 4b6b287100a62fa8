"""Probes: is a TCP port accepting, does a command succeed. Each is bounded,
and answers with the problem it found (None: healthy).

Used by a `command` service's readiness rule (`command.Readiness`) and by
health checks (`HealthCheck`), for any kind of service.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence

import anyio

from .controller import AFTER_SIGKILL
from .spawn import program_args, read_lines, spawn

#: The longest problem a probe reports (a command's last line is cut to it).
MAX_PROBLEM = 200


async def tcp_problem(host: str, port: int) -> str | None:
    """None if `host:port` accepts a TCP connection; otherwise why not. The
    caller bounds it (`anyio.move_on_after`)."""
    try:
        stream = await anyio.connect_tcp(host, port)
    except OSError as exc:
        return f"{host}:{port} refused: {exc.strerror or exc}"
    await stream.aclose()
    return None


async def command_problem(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    label: str = "probe",
) -> str | None:
    """None if `args` runs and exits 0; otherwise why not (its exit code and its
    last line of output). The caller bounds it: cancelled, the program is
    killed, with what it started."""
    try:
        child = await spawn(program_args(args), env=env, cwd=cwd, label=label)  # dies with us
    except OSError as exc:
        return f"{args[0]!r} could not run: {exc.strerror or exc}"
    last: list[str] = []

    async def drain(fileno: int) -> None:
        async for line in read_lines(fileno, limit=4096):  # a chatty probe cannot fill memory
            if line.strip():
                last[:] = [line.strip()]

    try:
        async with anyio.create_task_group() as readers:
            readers.start_soon(drain, child.stdout)
            readers.start_soon(drain, child.stderr)
            code = await child.wait()
        if code == 0:
            return None
        said = f": {last[0][:MAX_PROBLEM]}" if last else ""
        return f"{args[0]!r} exited with code {code}{said}"
    finally:
        child.signal(signal.SIGKILL)  # what it left behind, or itself if it overran
        with anyio.move_on_after(AFTER_SIGKILL, shield=True):  # (SIGKILLed: it ends)
            await child.wait()
        await child.aclose()


def inherited_env(env: Mapping[str, str], inherit: bool) -> dict[str, str]:
    """The environment of a process given `env`, on top of this one's if `inherit`."""
    return {**(os.environ if inherit else {}), **env}
