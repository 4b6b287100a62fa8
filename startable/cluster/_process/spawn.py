"""Child processes: started from a long-lived thread, awaited through a pidfd.

The kernel's parent-death signal (`PR_SET_PDEATHSIG`, which the remote
arms first thing) fires when the *thread* that forked the child exits, not
the process. Event loops start subprocesses from worker threads that come and
go (trio does), which would kill children at random; here every child is
started from one thread that lives as long as this process.

Each child leads its own process group, so the stop ladder's signals reach
whatever it started too; when it exits, what is left in its group is killed
before it is reaped, while its pid cannot belong to anyone else. Where a
cgroup can be made for it (`_descendants`), it holds the child and all it
starts, wherever they go: the signals reach them, and they are killed when
the child exits. Its exit is awaited on a pidfd (Linux 5.3+).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import anyio
import anyio.to_thread

from .descendants import Cgroup, tree

_spawner: concurrent.futures.ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            # One worker, never idle-retired: it lives until the interpreter exits.
            _spawner = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="startable-spawner"
            )
        return _spawner


class ProcessBase:
    """A running child process: its pid, its pidfd, its output pipes, and its exit.

    `ChildProcess` is one this process spawned and reaps; a pool's zygote
    forks others (`zygote.ForkedProcess`), which it reaps.
    """

    def __init__(
        self, pid: int, pidfd: int, stdout: int, stderr: int, cgroup: Cgroup | None = None
    ) -> None:
        self.pid = pid
        self.pidfd = pidfd
        #: The read ends of its stdout and stderr (non-blocking).
        self.stdout = stdout
        self.stderr = stderr
        #: The cgroup holding it and all it starts (None where none could be made).
        self.cgroup = cgroup
        self.returncode: int | None = None
        self._exited = anyio.Event()

    async def _reap(self) -> int:
        """Its exit code, once it has exited (and what it left in its group is ended)."""
        raise NotImplementedError

    def _alive(self) -> bool:
        """Whether it has not exited yet (so its pid is still its own)."""
        return self.returncode is None

    async def wait(self) -> int:
        """Wait for the child to exit (the first caller reaps it); its return code.

        Once `aclose` has released it unreaped (it never exited), this waits
        until cancelled: its exit can no longer be seen here.
        """
        if self.returncode is None:
            try:
                await anyio.wait_readable(self.pidfd)
            except (anyio.ClosedResourceError, ValueError):  # released under this waiter
                await anyio.sleep_forever()
            if self.returncode is None:
                if self.cgroup is not None:  # what it left anywhere
                    self.cgroup.kill()
                self.returncode = await self._reap()
                self._exited.set()
        return self.returncode

    async def exited(self) -> None:
        await self._exited.wait()

    def signal(self, signum: int) -> None:
        """Send `signum` to the child's process group, while the child lives.

        The child leads its group, so this reaches what it started too; once
        it has exited, nothing is sent to its group (its pid could be reused).
        """
        if not self._alive() or self.pidfd < 0:  # (released: its pid may be another's)
            return
        try:
            left_its_group = os.getpgid(self.pid) != self.pid
        except ProcessLookupError:
            return
        if left_its_group:  # it moved itself elsewhere: reach it through its pidfd
            signal.pidfd_send_signal(self.pidfd, signum)
        self._kill_group(signum)
        # What it started in sessions of their own, too: its cgroup holds them
        # all; without one, its tree does (the remote adopts orphans).
        descendants = self.cgroup.members() if self.cgroup is not None else tree(self.pid)
        for pid in descendants:
            if pid != self.pid:
                with contextlib.suppress(OSError):
                    os.kill(pid, signum)

    def _kill_group(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    async def aclose(self) -> None:
        """Release its pipes, its pidfd, and its cgroup once empty (waiting up to 2 s).

        A task still waiting on one of them is woken first (it gets
        `ClosedResourceError`), so that a descriptor number reused by a new
        process is never watched by the old one's reader.
        """
        for fd in (self.stdout, self.stderr, self.pidfd):
            if fd >= 0:
                anyio.notify_closing(fd)
                os.close(fd)
        self.stdout = self.stderr = self.pidfd = -1
        cgroup, self.cgroup = self.cgroup, None
        if cgroup is not None:
            with anyio.move_on_after(2, shield=True):
                cgroup.kill()
                while not cgroup.remove():  # not empty yet: wait for what was killed to end
                    await _all_ended(cgroup.members())


class ChildProcess(ProcessBase):
    """A child this process spawned (`spawn`), and reaps."""

    def __init__(self, popen: subprocess.Popen[bytes], cgroup: Cgroup | None = None) -> None:
        assert popen.stdout is not None
        assert popen.stderr is not None
        # The pipes are ours to close, by their descriptors (the file objects are dropped).
        stdout, stderr = os.dup(popen.stdout.fileno()), os.dup(popen.stderr.fileno())
        popen.stdout.close()
        popen.stderr.close()
        popen.stdout = popen.stderr = None
        super().__init__(popen.pid, os.pidfd_open(popen.pid), stdout, stderr, cgroup)
        self.popen = popen

    async def _reap(self) -> int:
        # Not reaped yet, its pid (and so its group id) is still ours: end what
        # it left in its group now, never once the pid could be someone else's.
        self._kill_group(signal.SIGKILL)
        return self.popen.wait()  # it has exited: this does not block


async def _all_ended(pids: Sequence[int]) -> None:
    for pid in pids:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue  # gone already
        try:
            await anyio.wait_readable(pidfd)
        finally:
            os.close(pidfd)
    if not pids:  # the kernel has yet to empty it: rare, and brief
        await anyio.sleep(0.005)


async def spawn(
    args: Sequence[str],
    *,
    pass_fds: Sequence[int] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    label: str = "child",
) -> ChildProcess:
    """Start a child in a new session, with piped stdout and stderr, from the spawner thread.

    It is put in a cgroup of its own (named after `label`) where one can be made.
    """
    options: dict[str, Any] = {
        "pass_fds": tuple(pass_fds),
        "env": dict(env) if env is not None else None,
        "cwd": cwd,
        "stdin": subprocess.DEVNULL,
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        "start_new_session": True,
    }

    cgroup = Cgroup.make(label)

    def start() -> tuple[subprocess.Popen[bytes], Cgroup | None]:
        popen = subprocess.Popen(list(args), **options)
        # At once: the child runs no code of the service's before it is told to.
        # (If the kernel refuses the move, the cgroup is gone: the subreaper remains.)
        return popen, cgroup if cgroup is not None and cgroup.add(popen.pid) else None

    future = _executor().submit(start)
    try:
        popen, tracked = await anyio.to_thread.run_sync(future.result)
    except BaseException:
        if cgroup is not None:
            cgroup.remove()
        raise
    child = ChildProcess(popen, tracked)
    for fd in (child.stdout, child.stderr):
        os.set_blocking(fd, False)
    return child


async def read_lines(fileno: int, *, limit: int = 65536) -> AsyncIterator[str]:
    """Lines from a non-blocking pipe until EOF, or until the pipe is released
    under it (an over-long line comes in pieces)."""
    buffer = b""
    while True:
        try:
            await anyio.wait_readable(fileno)
        except anyio.ClosedResourceError:  # its owner released it: the end
            return
        try:
            chunk = os.read(fileno, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            if buffer:
                yield buffer.decode(errors="replace")
            return
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0 or len(buffer) >= limit:
            cut = end if end >= 0 else limit
            line, buffer = buffer[:cut], buffer[cut + (end >= 0) :]
            yield line.decode(errors="replace")


#: How a program that is not a startable child is run: it dies with this
#: process (the kernel's parent-death signal, kept across exec), unless this
#: process is gone already; its resource limits are set; then it is exec'd,
#: keeping its pid. A program that cannot be run exits 127, saying why.
_SHIM = """\
import ctypes, os, resource, sys
ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
if os.getppid() != int(sys.argv[1]):
    os._exit(70)
for name, value in zip(("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NOFILE"), sys.argv[2].split(",")):
    if value:
        resource.setrlimit(getattr(resource, name), (int(value), int(value)))
try:
    os.execvp(sys.argv[3], sys.argv[3:])
except OSError as exc:
    print(f"startable: cannot run {sys.argv[3]!r}: {exc.strerror}", file=sys.stderr, flush=True)
    os._exit(127)
"""


def program_args(
    args: Sequence[str],
    *,
    memory: int | None = None,
    cpu_time: int | None = None,
    open_files: int | None = None,
) -> list[str]:
    """The arguments that run the program `args` (looked up on the child's
    `$PATH` if it has no `/`) as a child that dies with this process, under
    the resource limits given (bytes of address space, seconds of CPU, open
    descriptors; None: this process's own)."""
    limits = ",".join(
        "" if value is None else str(value) for value in (memory, cpu_time, open_files)
    )
    return [sys.executable, "-I", "-S", "-c", _SHIM, str(os.getpid()), limits, *args]
