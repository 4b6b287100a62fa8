"""Services the container tests run in child processes (`tests.remote_services:...`).

Behaviour is chosen with environment variables, so one class covers many
endings without editing code: STARTABLE_TEST_* below.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys

import anyio
import anyio.abc

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
    """Tries what STARTABLE_TEST_PROBE lists and prints one line for each.

    `ALLOWED name`, `ALLOWED name (OSError subclass)` when the call failed for
    another reason than a permission (a refused connection, a missing file),
    or `DENIED name: ...` on a `PermissionError`. Paths come from
    STARTABLE_TEST_SCRATCH (inside the write grants) and STARTABLE_TEST_OUTSIDE
    (a file outside them); STARTABLE_TEST_LOW_PORT is a port below 1024.
    """

    @startable.as_raw_start
    async def _start(self) -> None:
        scratch = os.environ.get("STARTABLE_TEST_SCRATCH", "/tmp")
        outside = os.environ.get("STARTABLE_TEST_OUTSIDE", "/tmp/startable-outside")
        inside = os.path.join(scratch, "ok.txt")
        probes = {
            "read-etc": lambda: _read("/etc/hostname"),
            "write-scratch": lambda: _write(inside),
            "write-elsewhere": lambda: _write("/tmp/startable-forbidden.txt"),
            "tcp": lambda: socket.create_connection(("127.0.0.1", 9), timeout=1).close(),
            "udp": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
                b"x", ("127.0.0.1", 9)
            ),
            "subprocess": lambda: subprocess.run(["/bin/true"], check=False),
            # File metadata, which Landlock does not cover.
            "chmod-outside": lambda: os.chmod(outside, 0o600),
            "chown-outside": lambda: os.chown(outside, os.getuid(), os.getgid()),
            "utime-outside": lambda: os.utime(outside, (0, 0)),
            "setxattr-outside": lambda: os.setxattr(outside, "user.startable", b"changed"),
            "removexattr-outside": lambda: os.removexattr(outside, "user.startable"),
            "c-chmod-outside": lambda: _libc_call("chmod", outside.encode(), 0o600),
            "child-chmod-outside": lambda: _program(["chmod", "600", outside]),
            "c-chattr-outside": lambda: _set_flags(outside),
            "c-io-uring": lambda: _libc_call("syscall", 425, 1, None),  # io_uring_setup
            "chmod-scratch": lambda: os.chmod(inside, 0o600),
            "utime-scratch": lambda: os.utime(inside, (0, 0)),
            "setxattr-scratch": lambda: os.setxattr(inside, "user.startable", b"ok"),
            "chown-scratch-to-another-user": lambda: os.chown(inside, 1, 1),
            # Links and renames across the grants (Landlock says EXDEV to those).
            "link-outside-in": lambda: os.link(outside, os.path.join(scratch, "linked")),
            "rename-inside-out": lambda: os.rename(inside, outside + ".moved"),
            "rmtree-outside": lambda: shutil.rmtree(os.path.dirname(outside)),
            # Sockets and names.
            "tcp-server": lambda: socket.create_server(("127.0.0.1", 0)).close(),
            "low-port-server": lambda: socket.create_server(
                ("127.0.0.1", int(os.environ["STARTABLE_TEST_LOW_PORT"]))
            ).close(),
            "c-udp": lambda: _libc_call("socket", socket.AF_INET, socket.SOCK_DGRAM, 0),
            "c-unix-datagram": lambda: _libc_call("socket", socket.AF_UNIX, socket.SOCK_DGRAM, 0),
            "socketpair": lambda: [end.close() for end in socket.socketpair()],
            "child-udp": lambda: _program([sys.executable, "-c", _SEND_UDP]),
            "getaddrinfo": lambda: socket.getaddrinfo("localhost", 80),
            "gethostbyname": lambda: socket.gethostbyname("localhost"),
            "gethostbyname_ex": lambda: socket.gethostbyname_ex("localhost"),
            "gethostbyaddr": lambda: socket.gethostbyaddr("127.0.0.1"),
            "getnameinfo": lambda: socket.getnameinfo(("127.0.0.1", 80), 0),
            # Signals and capabilities.
            "signal-parent": lambda: os.kill(os.getppid(), 0),
            "signal-own-child": _signal_own_child,
            "capabilities": _capabilities,
        }
        for name in os.environ.get("STARTABLE_TEST_PROBE", "").split(","):
            try:
                probes[name]()
            except PermissionError as exc:
                print(f"DENIED {name}: {exc}", flush=True)
            except OSError as exc:  # refused connection, missing file...: not a permission matter
                print(f"ALLOWED {name} ({type(exc).__name__}: {exc})", flush=True)
            else:
                print(f"ALLOWED {name}", flush=True)


_SEND_UDP = (
    "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 9))"
)


def _libc_call(name: str, *args: object) -> None:
    """A system call the audit hook cannot see; its errno as the OSError Python would raise."""
    libc = ctypes.CDLL(None, use_errno=True)
    result = getattr(libc, name)(*args)
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))  # PermissionError for EACCES and EPERM
    if name == "socket":
        os.close(result)


def _set_flags(path: str) -> None:
    """Set a file's inode flags (chattr) to what they are, with ioctl from C."""
    libc = ctypes.CDLL(None, use_errno=True)
    flags = ctypes.c_long()
    fd = os.open(path, os.O_RDONLY)
    try:
        for request in (0x8008_6601, 0x4008_6602):  # FS_IOC_GETFLAGS, FS_IOC_SETFLAGS
            if libc.ioctl(fd, ctypes.c_ulong(request), ctypes.byref(flags)) < 0:
                error = ctypes.get_errno()
                raise OSError(error, os.strerror(error))
    finally:
        os.close(fd)


def _program(command: list[str]) -> None:
    """Run a program the service starts; a PermissionError if it was refused something."""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        refusals = ("PermissionError", "Permission denied", "Operation not permitted")
        if any(refusal in result.stderr for refusal in refusals):
            raise PermissionError(result.stderr.strip().splitlines()[-1])
        raise OSError(f"{command[0]} exited with {result.returncode}: {result.stderr.strip()}")


def _signal_own_child() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        child.send_signal(signal.SIGTERM)
    finally:
        child.kill()
        child.wait()


def _capabilities() -> None:
    """Print the capability sets and no_new_privs, as /proc/self/status has them."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    wanted = ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")
    print("STATUS " + " ".join(f"{key}={fields[key].strip()}" for key in wanted), flush=True)


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


class Daemonizer:
    """Starts programs that leave its process group: a new session, and a double fork.

    Prints `GRANDCHILD <pid>` for each, once it runs.
    """

    @startable.as_raw_start
    def _start(self) -> None:
        session = subprocess.Popen(["sleep", "1000"], start_new_session=True)
        print(f"GRANDCHILD {session.pid}", flush=True)
        # The classic daemon: fork, new session, fork again, the middle one exits.
        script = (
            "import os, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            "        print('GRANDCHILD', os.getpid(), flush=True)\n"
            "        time.sleep(1000)\n"
            "    os._exit(0)\n"
            "os.wait()\n"
        )
        subprocess.run([sys.executable, "-c", script], check=True)


class Greeter:
    """Answers every connection on the sockets it was given with its pid and their name."""

    @startable.as_raw_start
    async def _start(self) -> None:
        from startable.cluster import listen_sockets

        given = listen_sockets()
        fds = [s.socket.fileno() for s in given]
        print(f"greeter: given {[s.name for s in given]} at {fds}", flush=True)
        for found in given:
            listener = await anyio.abc.SocketListener.from_socket(found.socket)
            startable.of(self).start_soon(self._serve, listener, found.name)

    async def _serve(self, listener: anyio.abc.SocketListener, name: str) -> None:
        async def greet(client: anyio.abc.SocketStream) -> None:
            async with client:
                await client.send(f"{os.getpid()} {name}\n".encode())

        async with listener:
            await listener.serve(greet)
