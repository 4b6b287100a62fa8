"""`startable up FILE --detach`: the cluster in the background, with its control socket.

It starts `startable up FILE --no-live` in a session of its own (so the
terminal's signals do not reach it), its output appended to a log file next
to the control socket, and returns once the cluster is STARTED (exit code
0), or once its start has failed (exit code 1, with the end of its log).
Then `startable status`, `logs` and `down` reach it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence

import anyio

from ..cluster import ServiceDefinitionError, load_cluster
from ..program import EXIT_FAILED, EXIT_FORCED, EXIT_OK, EXIT_USAGE
from ._control import (
    ControlError,
    Line,
    Status,
    command,
    default_path,
    private_directory,
    request,
)
from ._output import escape

#: How long a detached start may take before it is given up (and stopped).
START_LIMIT = 600.0


def detach(
    path: str,
    *,
    only: Sequence[str] = (),
    control: str | None = None,
    backend: str = "trio",
    dev: bool = False,
    limit: float = START_LIMIT,
) -> int:
    """Run `startable up` of `path` in the background; its exit code once STARTED."""
    try:
        cluster = load_cluster(path)
    except ServiceDefinitionError as exc:
        print(f"startable: error: {escape(str(exc), newlines=True)}", file=sys.stderr)
        return EXIT_USAGE
    socket_path = os.path.abspath(control) if control else default_path(cluster.name, cluster.path)
    log_path = os.path.splitext(socket_path)[0] + ".log"
    arguments = [sys.executable, "-m", "startable", "up", path, *only, "--no-live"]
    arguments += ["--control", socket_path, "--backend", backend] + (["--dev"] if dev else [])
    if _state(socket_path) is not None:
        print(
            f"startable: error: {socket_path}: another startable up of this file runs",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        private_directory(os.path.dirname(socket_path))
        # Appended to, never followed through a link, readable by this user only.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
        descriptor = os.open(log_path, flags, 0o600)
    except (ControlError, OSError) as exc:
        print(f"startable: error: {escape(str(exc), newlines=True)}", file=sys.stderr)
        return EXIT_USAGE
    with os.fdopen(descriptor, "ab") as log:
        log.write(f"\n== startable up {path} --detach, {time.ctime()}\n".encode())
        log.flush()
        process = subprocess.Popen(
            arguments,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        return _until_started(process, cluster.name, path, socket_path, log_path, limit)
    except KeyboardInterrupt:  # the operator gave up waiting: the start is given up too
        process.terminate()
        print(f"startable: {cluster.name}: the detached start was stopped", file=sys.stderr)
        return EXIT_FORCED


def _until_started(
    process: subprocess.Popen[bytes],
    name: str,
    path: str,
    socket_path: str,
    log_path: str,
    limit: float,
) -> int:
    give_up = time.monotonic() + limit
    while time.monotonic() < give_up:
        code = process.poll()
        if code is not None:
            print(
                f"startable: error: the cluster did not start (exit code {code}):", file=sys.stderr
            )
            sys.stderr.write(_tail(log_path))
            return EXIT_USAGE if code == EXIT_USAGE else EXIT_FAILED
        if _state(socket_path, pid=process.pid) == "STARTED":
            print(
                f"{name}: STARTED in the background (pid {process.pid})\n"
                f"  its output: {log_path}\n"
                f"  startable status {path}   startable logs {path} -f   startable down {path}"
            )
            process.returncode = 0  # (it is meant to outlive this command)
            return EXIT_OK
        time.sleep(0.1)
    process.terminate()
    print(
        f"startable: error: {name} was not STARTED within {limit:g}s: stopped it", file=sys.stderr
    )
    return EXIT_FAILED


def _state(socket_path: str, pid: int | None = None) -> str | None:
    """The cluster's state, as its control socket says (None: it does not answer, or
    it is not the `up` of process `pid`)."""
    if not os.path.exists(socket_path):
        return None
    got: list[Status | Line] = []
    try:
        anyio.run(
            lambda: request(socket_path, command("status"), got.append, deadline=5),
            backend="trio",
        )
    except ControlError:
        return None
    status = next((m for m in got if isinstance(m, Status)), None)
    if status is None or (pid is not None and status.pid != pid):
        return None
    return status.state


def _tail(path: str, lines: int = 40) -> str:
    with open(path, "rb") as log:
        text = log.read()[-64_000:].decode(errors="replace")
    section = text[text.rfind("\n== startable up") :]
    return escape("\n".join(section.splitlines()[-lines:]), newlines=True) + "\n"
