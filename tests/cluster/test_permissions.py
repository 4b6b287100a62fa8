"""Permissions, seen from inside real containers: what is refused, what still works.

Each test starts `tests.remote_services:Prober` in a child with some
`Permissions`, lets it try calls, and reads its verdicts from its output.
We run as root with every capability, so a refusal here is one that root
would meet too.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import startable
from startable.cluster import Permissions, ProcessOptions, ServiceContainer, landlock_abi
from startable.cluster._sandbox import seccomp as _seccomp

#: Every test here spawns child processes (`-m "not processes"` skips them).
pytestmark = [pytest.mark.anyio, pytest.mark.processes]

ROOT = Path(__file__).resolve().parents[2]

needs_landlock = pytest.mark.skipif(landlock_abi() < 6, reason="needs Landlock ABI 6 (Linux 6.12)")
needs_seccomp = pytest.mark.skipif(
    not _seccomp.available(), reason="needs seccomp filters and x86-64 or arm64"
)
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="shows what root may no longer do")


def has_xattrs(directory: Path) -> bool:
    probe = directory / ".xattr-probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.startable", b"x")
    except OSError:
        return False
    finally:
        probe.unlink()
    return True


async def probe(
    tmp_path: Path, probes: list[str], permissions: Permissions, **env: str
) -> tuple[dict[str, str], tuple[str, ...]]:
    """Run the prober; its verdicts by probe name, and the mechanisms it reported."""
    container = ServiceContainer(
        "tests.remote_services:Prober",
        cwd=str(ROOT),
        env={"STARTABLE_TEST_PROBE": ",".join(probes), **env},
        permissions=permissions,
        options=ProcessOptions(close_timeout=5, output_lines=1000),
    )
    with anyio.fail_after(60):
        async with startable.running(container):
            assert container.controller is not None
            mechanisms = container.controller.mechanisms
    verdicts = {}
    for line in container.output:
        verdict, _, rest = line.text.partition(" ")
        if line.stream == "stdout" and verdict in ("ALLOWED", "DENIED", "STATUS"):
            name = "status" if verdict == "STATUS" else rest.split(":")[0].split(" ")[0]
            verdicts[name] = line.text
    assert set(verdicts) >= set(probes) - {"capabilities"}, container.output
    return verdicts, mechanisms


def allowed(verdict: str) -> bool:
    """Allowed, and it worked (no OSError of another kind either)."""
    return verdict.startswith("ALLOWED") and "(" not in verdict


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file outside every grant, owned by us (root: what the service runs as)."""
    directory = tmp_path / "outside"
    directory.mkdir()
    victim = directory / "victim.txt"
    victim.write_text("original")
    victim.chmod(0o644)
    os.utime(victim, (1_000_000, 1_000_000))
    return victim


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    directory = tmp_path / "scratch"
    directory.mkdir()
    (directory / "ok.txt").write_text("x")
    return directory


def unchanged(victim: Path) -> None:
    info = victim.stat()
    assert stat.S_IMODE(info.st_mode) == 0o644
    assert info.st_mtime == 1_000_000
    assert victim.read_text() == "original"


METADATA = ["chmod-outside", "chown-outside", "utime-outside"]
XATTRS = ["setxattr-outside", "removexattr-outside"]


@needs_seccomp
async def test_a_service_that_may_write_nowhere_changes_no_file_metadata(
    tmp_path: Path, outside: Path
) -> None:
    xattrs = has_xattrs(tmp_path)
    if xattrs:
        os.setxattr(outside, "user.startable", b"original")
    probes = [
        *METADATA,
        *(XATTRS if xattrs else []),
        "c-chmod-outside",
        "c-chattr-outside",
        "c-io-uring",
        "child-chmod-outside",
    ]
    verdicts, mechanisms = await probe(
        tmp_path,
        [*probes, "capabilities"],
        Permissions(subprocesses=True),  # programs it starts are held to the same
        STARTABLE_TEST_OUTSIDE=str(outside),
    )
    for name in probes:
        assert verdicts[name].startswith("DENIED"), verdicts[name]
    unchanged(outside)
    if xattrs:
        assert os.getxattr(outside, "user.startable") == b"original"
    assert any(m.startswith("seccomp: file mode, owner, times and attributes") for m in mechanisms)
    assert "no_new_privs" in mechanisms
    assert "NoNewPrivs=1" in verdicts["status"]


async def test_outside_the_write_grants_python_may_change_no_metadata_inside_it_may(
    tmp_path: Path, outside: Path, scratch: Path
) -> None:
    xattrs = has_xattrs(tmp_path)
    if xattrs:
        os.setxattr(outside, "user.startable", b"original")
    refused = [*METADATA, *(XATTRS if xattrs else []), "link-outside-in", "rename-inside-out"]
    granted = ["chmod-scratch", "utime-scratch", *(["setxattr-scratch"] if xattrs else [])]
    verdicts, _ = await probe(
        tmp_path,
        [*refused, "rmtree-outside", *granted],
        Permissions(write=[str(scratch)]),
        STARTABLE_TEST_OUTSIDE=str(outside),
        STARTABLE_TEST_SCRATCH=str(scratch),
    )
    for name in [*refused, "rmtree-outside"]:
        # A PermissionError, not Landlock's EXDEV for the link and the rename.
        assert verdicts[name].startswith(f"DENIED {name}: [Errno 13]"), verdicts[name]
    for name in granted:
        assert allowed(verdicts[name]), verdicts[name]
    unchanged(outside)
    assert (scratch / "ok.txt").exists() and not (scratch / "linked").exists()
    assert stat.S_IMODE((scratch / "ok.txt").stat().st_mode) == 0o600
    assert (scratch / "ok.txt").stat().st_mtime == 0


@as_root
async def test_root_in_a_container_has_no_capability_left(tmp_path: Path, scratch: Path) -> None:
    verdicts, mechanisms = await probe(
        tmp_path,
        ["capabilities", "chown-scratch-to-another-user"],
        Permissions(write=[str(scratch)]),
        STARTABLE_TEST_SCRATCH=str(scratch),
    )
    status = verdicts["status"]
    for field in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
        assert f"{field}=0000000000000000" in status
    # Inside its grants, but giving a file away needs CAP_CHOWN.
    assert verdicts["chown-scratch-to-another-user"].startswith("DENIED")
    assert (scratch / "ok.txt").stat().st_uid == 0
    assert "capabilities: all dropped" in mechanisms


def free_low_port() -> int:
    for port in range(1023, 900, -1):
        with socket.socket() as taken:
            try:
                taken.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024 on 127.0.0.1")


@as_root
async def test_with_network_a_root_service_keeps_binding_low_ports_and_looks_names_up(
    tmp_path: Path,
) -> None:
    lookups = ["getaddrinfo", "gethostbyname", "gethostbyaddr", "getnameinfo"]
    verdicts, mechanisms = await probe(
        tmp_path,
        ["capabilities", "tcp-server", "low-port-server", *lookups],
        Permissions(network=True),
        STARTABLE_TEST_LOW_PORT=str(free_low_port()),
    )
    assert "CapEff=0000000000000400" in verdicts["status"]  # CAP_NET_BIND_SERVICE alone
    assert "CapBnd=0000000000000400" in verdicts["status"]
    assert allowed(verdicts["tcp-server"]), verdicts["tcp-server"]
    # In use since we looked is not a refusal; a PermissionError would be.
    assert verdicts["low-port-server"].startswith("ALLOWED"), verdicts["low-port-server"]
    for name in lookups:  # the resolver's files are readable
        assert allowed(verdicts[name]), verdicts[name]
    assert "capabilities: all dropped but net_bind_service" in mechanisms


@needs_seccomp
async def test_without_network_programs_it_starts_and_c_code_get_no_socket(
    tmp_path: Path,
) -> None:
    verdicts, mechanisms = await probe(
        tmp_path,
        ["child-udp", "c-udp", "c-unix-datagram", "socketpair", "tcp-server"],
        Permissions(subprocesses=True),
    )
    assert verdicts["child-udp"].startswith("DENIED"), verdicts["child-udp"]
    assert verdicts["c-udp"].startswith("DENIED c-udp: [Errno 13]"), verdicts["c-udp"]
    assert verdicts["c-unix-datagram"].startswith("DENIED"), verdicts["c-unix-datagram"]
    assert allowed(verdicts["socketpair"]), verdicts["socketpair"]
    # A PermissionError, where it was `OSError: [Errno None] None`.
    assert verdicts["tcp-server"].startswith("DENIED tcp-server: [Errno 13]")
    assert any(m.startswith("seccomp") and "sockets but Unix stream" in m for m in mechanisms)


async def test_without_network_every_name_lookup_is_a_permission_error(tmp_path: Path) -> None:
    lookups = ["getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"]
    # /etc readable: the lookups would find localhost in /etc/hosts.
    verdicts, _ = await probe(tmp_path, lookups, Permissions(read=["/etc"]))
    for name in lookups:
        assert verdicts[name].startswith(f"DENIED {name}: [Errno 13]"), verdicts[name]


@needs_landlock
async def test_signals_reach_only_the_service_and_what_it_starts(tmp_path: Path) -> None:
    verdicts, mechanisms = await probe(
        tmp_path, ["signal-parent", "signal-own-child"], Permissions(subprocesses=True)
    )
    assert verdicts["signal-parent"].startswith("DENIED"), verdicts["signal-parent"]
    assert allowed(verdicts["signal-own-child"]), verdicts["signal-own-child"]
    assert any(m.startswith("landlock") and "signals" in m for m in mechanisms)


FOREIGN_CALL = """
import ctypes
from startable.cluster._ipc.messages import PermissionSpec
from startable.cluster._sandbox.permissions import apply
apply(PermissionSpec())
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall(0x40000000 | 39)  # getpid, through the x32 table
print("still alive")
"""


@needs_seccomp
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the x32 table is x86-64's")
def test_a_system_call_through_another_table_kills_the_process() -> None:
    result = subprocess.run(
        [sys.executable, "-c", FOREIGN_CALL], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == -signal.SIGSYS, result
    assert "still alive" not in result.stdout


HOOK_ONLY = """
import os, sys
from startable.cluster._ipc.messages import PermissionSpec
from startable.cluster._sandbox.audit import audit_hook
outside, scratch = sys.argv[1:]
sys.addaudithook(audit_hook(PermissionSpec(write=(scratch,)), False, ()))
for name, call in [
    ("mkdir-existing", lambda: os.mkdir(outside)),
    ("remove-missing", lambda: os.remove(os.path.join(outside, "missing"))),
    ("mkdir", lambda: os.mkdir(os.path.join(outside, "new"))),
    ("remove", lambda: os.remove(os.path.join(outside, "victim.txt"))),
    ("chmod-by-descriptor", lambda: os.chmod(os.open(outside, os.O_RDONLY), 0o700)),
    ("remove-relative-to-descriptor", lambda: os.remove("victim.txt", dir_fd=os.open(outside, 0))),
    ("symlink-in-scratch", lambda: os.symlink(outside, os.path.join(scratch, "link"))),
    ("chmod-through-symlink", lambda: os.chmod(os.path.join(scratch, "link"), 0o700)),
    ("remove-symlink", lambda: os.remove(os.path.join(scratch, "link"))),
]:
    try:
        call()
        print(name, "done")
    except OSError as exc:
        print(name, type(exc).__name__)
"""


def test_the_hook_lets_the_kernel_answer_first_and_follows_descriptors(
    outside: Path, scratch: Path
) -> None:
    """EEXIST and ENOENT stay what they are; descriptors and symlinks are resolved."""
    result = subprocess.run(
        [sys.executable, "-c", HOOK_ONLY, str(outside.parent), str(scratch)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert dict(line.split(" ", 1) for line in result.stdout.splitlines()) == {
        "mkdir-existing": "FileExistsError",
        "remove-missing": "FileNotFoundError",
        "mkdir": "PermissionError",
        "remove": "PermissionError",
        "chmod-by-descriptor": "PermissionError",
        "remove-relative-to-descriptor": "PermissionError",
        "symlink-in-scratch": "done",
        "chmod-through-symlink": "PermissionError",
        "remove-symlink": "done",
    }
    unchanged(outside)


HOOK_SOCKETS = """
import socket, sys
from startable.cluster._ipc.messages import PermissionSpec
from startable.cluster._sandbox.audit import audit_hook
listener = socket.create_server(("127.0.0.1", 0))  # (before the hook: given to the service)
peer = socket.create_connection(listener.getsockname())
ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
sys.addaudithook(audit_hook(PermissionSpec(), False, ()))
for name, call in [
    ("new-inet-socket", lambda: socket.socket(socket.AF_INET)),
    ("accept-on-a-given-listener", lambda: listener.accept()),
    ("adopt-a-descriptor", lambda: socket.socket(fileno=listener.fileno()).detach()),
    ("sendto-inet", lambda: peer.sendto(b"x", listener.getsockname())),
    ("sendmsg-inet", lambda: peer.sendmsg([b"x"])),
    ("sendmsg-unix", lambda: socket.send_fds(ours, [b"x"], [0])),
]:
    try:
        call()
        print(name, "done")
    except OSError as exc:
        print(name, type(exc).__name__)
"""


def test_the_hook_refuses_new_network_sockets_not_those_held_or_unix_sends() -> None:
    """Without `network`: a listener the service was given accepts (as seccomp lets it),
    and a send on a unix socket is local; a new inet socket or an inet send is refused."""
    result = subprocess.run(
        [sys.executable, "-c", HOOK_SOCKETS], capture_output=True, text=True, timeout=60, check=True
    )
    assert dict(line.split(" ", 1) for line in result.stdout.splitlines()) == {
        "new-inet-socket": "PermissionError",
        "accept-on-a-given-listener": "done",
        "adopt-a-descriptor": "done",
        "sendto-inet": "PermissionError",
        "sendmsg-inet": "PermissionError",
        "sendmsg-unix": "done",
    }


def test_forks_are_granted_once_and_never_to_a_fork() -> None:
    """What a zygote forks runs the service's code: it cannot grant itself forks again."""
    code = """
import os, sys
from startable.cluster._ipc.messages import PermissionSpec
from startable.cluster._sandbox.audit import audit_hook, allow_forks_here
sys.addaudithook(audit_hook(PermissionSpec(), False, ()))
allow_forks_here()
pid = os.fork()
if pid == 0:
    try:
        allow_forks_here()
        os._exit(3)
    except PermissionError:
        pass
    try:
        os.fork()
        os._exit(4)
    except PermissionError:
        os._exit(0)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "0", result.stderr
