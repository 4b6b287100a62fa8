"""Listening sockets handed over as systemd's socket activation does (LISTEN_FDS)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import startable
from startable.cluster import (
    ClusterError,
    ListenAddress,
    ListenSocket,
    ProcessOptions,
    RestartPolicy,
    ServiceContainer,
    ServiceDefinitionError,
    ServicesManager,
    ServiceSpec,
    bind_listener,
)
from startable.cluster._process.listen import (
    ENV_LISTEN,
    ENV_LISTEN_NAMES,
    MAX_LISTEN,
    parse_environment,
    place_listeners,
)

from .. import specs

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:8000", "127.0.0.1", 8000),
        ("[::1]:0", "::1", 0),
        ("localhost:65535", "localhost", 65535),
        ("0.0.0.0:80", "0.0.0.0", 80),
    ],
)
def test_an_address_is_host_and_port(text: str, host: str, port: int) -> None:
    address = ListenAddress.parse(text)
    assert (address.host, address.port) == (host, port)
    assert str(address) == text


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("8000", "write it as 'HOST:PORT'"),
        (":8000", "write it as 'HOST:PORT'"),
        ("host:", "the port is a number"),
        ("host:65536", "the port is a number"),
        ("host:-1", "the port is a number"),
        ("host:8O", "the port is a number"),
        ("host:٣", "the port is a number"),
        ("::1:80", "put an IPv6 host in brackets"),
        ("[::1:80", "an IPv6 host ends with ']'"),
        ("[nope]:80", "is not IPv6"),
        ("a b:80", "is not a host name"),
        ("a\0b:80", "is not a host name"),
    ],
)
def test_a_bad_address_is_refused_naming_it(text: str, says: str) -> None:
    with pytest.raises(ValueError, match="listen address") as caught:
        ListenAddress.parse(text)
    assert says in str(caught.value)


def test_an_address_is_a_string() -> None:
    with pytest.raises(TypeError, match="a listen address is a 'HOST:PORT' string, not 8000"):
        ListenAddress.parse(8000)


def test_a_socket_name_is_one_socket_activation_can_carry() -> None:
    assert ListenAddress.parse("[::1]:8000").name == "[__1]_8000"
    with socket.socket() as sock:
        for bad in ("", "a:b", "x" * 256, "a\nb"):
            with pytest.raises(ValueError, match="cannot name a socket"):
                ListenSocket(bad, sock)


def test_a_bound_socket_accepts_connections() -> None:
    with bind_listener(ListenAddress.parse("127.0.0.1:0")) as listener:
        assert not listener.get_inheritable()
        with socket.create_connection(listener.getsockname(), timeout=10):
            accepted, _ = listener.accept()
            accepted.close()


def test_an_address_in_use_is_refused_naming_it() -> None:
    with bind_listener(ListenAddress.parse("127.0.0.1:0")) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ClusterError, match=rf"cannot listen on 127\.0\.0\.1:{port}: "):
            bind_listener(ListenAddress(host="127.0.0.1", port=port))
    with pytest.raises(ClusterError, match=r"cannot listen on no-such-host\.invalid:80"):
        bind_listener(ListenAddress.parse("no-such-host.invalid:80"))


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({"LISTEN_FDS": "abc"}, "LISTEN_FDS is a count of descriptors, not 'abc'"),
        ({"LISTEN_FDS": "-1"}, "LISTEN_FDS is a count"),
        ({"LISTEN_FDS": "1e3"}, "LISTEN_FDS is a count"),
        ({"LISTEN_FDS": "9" * 40}, "LISTEN_FDS is a count"),
        ({"LISTEN_FDS": str(MAX_LISTEN + 1)}, f"takes {MAX_LISTEN} at most"),
        ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "web"}, "names 1 sockets, LISTEN_FDS 2"),
        ({"LISTEN_FDS": "0", "LISTEN_FDNAMES": "web"}, "names 1 sockets, LISTEN_FDS 0"),
        ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:"}, "'' is not a socket name"),
        ({"LISTEN_FDS": "1", "LISTEN_FDNAMES": "a\x1bb"}, "is not a socket name"),
        ({"LISTEN_FDS": "1", "LISTEN_PID": "me"}, "LISTEN_PID is a process id"),
        ({"LISTEN_FDS": "1", "LISTEN_PID": "1" * 20}, "LISTEN_PID is a process id"),
    ],
)
def test_a_malformed_environment_is_refused_naming_the_variable(
    environ: dict[str, str], says: str
) -> None:
    with pytest.raises(ValueError) as caught:
        parse_environment(environ, pid=100)
    assert says in str(caught.value)


def test_sockets_for_another_process_or_none_at_all_are_left_alone() -> None:
    assert parse_environment({}, pid=100) is None
    assert parse_environment({"LISTEN_FDS": "1", "LISTEN_PID": "101"}, pid=100) is None
    assert parse_environment({"LISTEN_FDS": "2", "LISTEN_PID": "100"}, 100) == ["unknown"] * 2
    named = {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:admin"}
    assert parse_environment(named, pid=100) == ["web", "admin"]


CHILD = """
import json, os, startable.cluster as c
found = c.listen_sockets()
again = c.listen_sockets()
left = [v for v in ("LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID") if v in os.environ]
names = [s.name for s in found]
fds = [s.socket.fileno() for s in found]
inheritable = [s.socket.get_inheritable() for s in found]
print(json.dumps([names, fds, inheritable, left, again == found]), flush=True)
for s in found:
    conn, _ = s.socket.accept()
    conn.sendall(s.name.encode())
    conn.close()
"""


#: Moves the descriptors it is given to 3, 4..., says they are for its own
#: pid, and becomes `python -c CODE` (the same process).
LAUNCHER = """
import os, sys
for i, fd in enumerate(int(f) for f in sys.argv[1].split(",")):
    os.dup2(fd, 3 + i)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-c", sys.argv[2]])
"""


def launch(fds: list[int], code: str) -> list[str]:
    return [sys.executable, "-c", LAUNCHER, ",".join(map(str, fds)), code]


def spawn_with_sockets(
    listeners: list[socket.socket], environ: dict[str, str], code: str = CHILD
) -> subprocess.Popen[str]:
    """A real child whose descriptors 3, 4... are `listeners`."""
    fds = [s.fileno() for s in listeners]
    return subprocess.Popen(
        launch(fds, code),
        pass_fds=fds,
        env={**os.environ, **environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.processes
def test_a_child_takes_its_sockets_and_serves_on_them() -> None:
    listeners = [bind_listener(ListenAddress.parse("127.0.0.1:0")) for _ in range(2)]
    child = spawn_with_sockets(listeners, {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:admin"})
    try:
        assert child.stdout is not None
        names, fds, inheritable, left, same = json.loads(child.stdout.readline())
        assert (names, fds, inheritable, left, same) == (
            ["web", "admin"],
            [3, 4],
            [False, False],  # a program it starts does not inherit them
            [],  # nor takes them for its own
            True,
        )
        for listener, name in zip(listeners, names, strict=True):
            with socket.create_connection(listener.getsockname(), timeout=30) as conn:
                conn.settimeout(30)
                assert conn.recv(100) == name.encode()
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
        child.communicate(timeout=30)  # (closes its pipes)
        for listener in listeners:
            listener.close()


@pytest.mark.processes
def test_a_descriptor_that_is_not_a_socket_is_refused() -> None:
    read, write = os.pipe()  # a pipe is not a socket
    code = "import startable.cluster as c; c.listen_sockets()"
    child = subprocess.run(
        launch([read], code),
        pass_fds=[read],
        env={**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    os.close(read)
    os.close(write)
    assert child.returncode == 1
    assert "ValueError: LISTEN_FDS: descriptor 3 ('web') is not a socket" in child.stderr


@pytest.mark.processes
def test_the_example_serves_on_the_socket_it_is_given() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "socket_activation.py"
    code = f"import runpy; runpy.run_path({str(example)!r}, run_name='__main__')"
    with bind_listener(ListenAddress.parse("127.0.0.1:0")) as listener:
        child = subprocess.run(
            launch([listener.fileno()], code),
            pass_fds=[listener.fileno()],
            env={**os.environ, "LISTEN_FDS": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert child.returncode == 0, child.stderr
    assert "socket given: True" in child.stdout
    assert "heard: hello from the greeter" in child.stdout


async def greeting(address: tuple[str, int]) -> str:
    async with await anyio.connect_tcp(*address) as client:
        return (await client.receive()).decode().strip()


@pytest.mark.anyio
@pytest.mark.processes
async def test_a_container_gives_its_listeners_to_every_incarnation() -> None:
    with (
        bind_listener(ListenAddress.parse("127.0.0.1:0")) as web,
        bind_listener(ListenAddress.parse("127.0.0.1:0")) as admin,
    ):
        container = ServiceContainer(
            "tests.remote_services:Greeter",
            cwd=str(ROOT),
            options=ProcessOptions(resources_interval=0),
            listeners=[ListenSocket("web", web), ListenSocket("admin", admin)],
        )
        pids = []
        with anyio.fail_after(60):
            for _ in range(2):  # a second incarnation gets the same sockets
                async with startable.running(container):
                    said = [line.text for line in container.output]
                    assert "greeter: given ['web', 'admin'] at [3, 4]" in said
                    pid, name = (await greeting(web.getsockname())).split()
                    assert name == "web" and int(pid) == container.pid
                    assert (await greeting(admin.getsockname())).endswith(" admin")
                    pids.append(container.pid)
            assert pids[0] != pids[1]
        assert web.fileno() >= 0 and admin.fileno() >= 0  # still open: not the container's


@pytest.mark.anyio
@pytest.mark.processes
async def test_a_service_keeps_its_port_across_a_crash_and_restart() -> None:
    """The manager holds the socket: a client that connects while the service is
    down is queued by the kernel and answered by the next process, never refused."""
    spec = specs.process(
        "web",
        "Greeter",
        listen=["127.0.0.1:0"],
        restart=RestartPolicy(mode="always", backoff=0.05, max_backoff=0.05),
    )
    manager = ServicesManager([spec])
    node = manager["web"]
    with anyio.fail_after(60):
        async with startable.running(manager):
            (listener,) = node.listeners
            address = listener.socket.getsockname()
            first = node.pid
            assert (await greeting(address)) == f"{first} 127.0.0.1_0"
            os.kill(first, signal.SIGKILL)  # type: ignore[arg-type]
            for _ in range(20):  # while it is down, and after: every connection is served
                pid, _ = (await greeting(address)).split()
                assert int(pid) != first
            assert node.restarts >= 1 and node.listeners == (listener,)
        assert node.listeners == ()  # the manager stopped: the port is let go
        with pytest.raises(OSError):
            await anyio.connect_tcp(*address)


def test_listen_is_checked_as_the_spec_is_made() -> None:
    spec = ServiceSpec(name="web", entry="a.b:C", listen=["127.0.0.1:8000", "[::1]:8000"])
    assert [str(a) for a in spec.listen] == ["127.0.0.1:8000", "[::1]:8000"]
    with pytest.raises(ServiceDefinitionError, match="an address is listed twice in listen"):
        ServiceSpec(name="web", entry="a.b:C", listen=["127.0.0.1:1", "127.0.0.1:1"])
    with pytest.raises(
        ServiceDefinitionError, match="pool and preload are for services in a child"
    ):
        ServiceSpec(name="web", factory=object, listen=["127.0.0.1:1"])
    with pytest.raises(ValueError, match="bad listen address '8000'"):
        ServiceSpec(name="web", entry="a.b:C", listen=["8000"])
    with pytest.raises(TypeError, match=r"not the string '127\.0\.0\.1:1'"):
        ServiceSpec(name="web", entry="a.b:C", listen="127.0.0.1:1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "environ",
    [
        {ENV_LISTEN: "x", ENV_LISTEN_NAMES: "web"},
        {ENV_LISTEN: "9" * 20, ENV_LISTEN_NAMES: "web"},
        {ENV_LISTEN: "", ENV_LISTEN_NAMES: ""},
        {ENV_LISTEN: "7,8", ENV_LISTEN_NAMES: "web"},
        {ENV_LISTEN: "7,7", ENV_LISTEN_NAMES: "a:b"},
        {ENV_LISTEN: ",".join(["7"] * (MAX_LISTEN + 1)), ENV_LISTEN_NAMES: "a"},
    ],
)
def test_the_remote_refuses_listeners_it_cannot_place(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=ENV_LISTEN):
        place_listeners(dict(environ), keep=())


def test_no_listeners_leaves_the_environment_alone() -> None:
    environ = {"OTHER": "1"}
    place_listeners(environ, keep=("OTHER",))
    assert environ == {"OTHER": "1"}
