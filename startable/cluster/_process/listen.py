"""Listening sockets handed to a process, the way systemd's socket activation hands them.

The giving side binds each address once (`ListenAddress.parse`, `bind_listener`); the
process that gets them finds them at file descriptors 3, 4, ... with three
environment variables: `LISTEN_FDS` (how many), `LISTEN_FDNAMES` (their
names, separated by `:`) and `LISTEN_PID` (the process they are for). The
receiving side is `listen_sockets()`. A server that accepts an inherited
socket (uvicorn's `--fd`, hypercorn's `fd://`) can use the same descriptors.

Everything read from the environment is checked before a descriptor is
touched: a bad count, a name list of the wrong length or a descriptor that
is not a socket is refused with an error that names the variable.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
from collections.abc import Mapping, MutableMapping, Sequence

import attrs

from .._errors import ClusterError

#: The first descriptor of socket activation (after stdin, stdout, stderr).
LISTEN_FDS_START = 3
#: Sockets one process may be given at most; a larger `LISTEN_FDS` is refused.
MAX_LISTEN = 64
_VARIABLES = ("LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID")


@attrs.frozen
class ListenAddress:
    """A TCP address to listen on: `"127.0.0.1:8000"`, `"[::1]:8000"`, `"localhost:0"`.

    Port 0 asks the system for a free port (`bind_listener` returns the socket; its
    `getsockname()` says which).
    """

    host: str
    port: int

    @classmethod
    def parse(cls, text: object) -> ListenAddress:
        """The address `text` writes as `HOST:PORT` (an IPv6 host in brackets).

        Raises:
            ValueError: naming `text` and what is wrong with it.
            TypeError: `text` is not a string.
        """
        if not isinstance(text, str):
            raise TypeError(f"a listen address is a 'HOST:PORT' string, not {text!r}")
        host, colon, port = text.rpartition(":")
        if not colon or not host:
            raise ValueError(f"bad listen address {text!r}: write it as 'HOST:PORT'")
        if host.startswith("["):
            if not host.endswith("]"):
                raise ValueError(f"bad listen address {text!r}: an IPv6 host ends with ']'")
            host = host[1:-1]
            import ipaddress  # (here: a child process that only takes sockets never needs it)

            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"bad listen address {text!r}: {host!r} is not IPv6") from None
        elif ":" in host:
            raise ValueError(f"bad listen address {text!r}: put an IPv6 host in brackets")
        elif not host.isprintable() or any(c.isspace() for c in host) or len(host) > 253:
            raise ValueError(f"bad listen address {text!r}: {host!r} is not a host name")
        if not (port.isascii() and port.isdigit()) or int(port) > 65535:
            raise ValueError(f"bad listen address {text!r}: the port is a number, 0 to 65535")
        return cls(host, int(port))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def name(self) -> str:
        """The name its socket is given (`LISTEN_FDNAMES`): the address, each `:`
        written `_`, since a name cannot hold a colon (`"127.0.0.1_8000"`)."""
        return str(self).replace(":", "_")


def bind_listener(address: ListenAddress, *, backlog: int = 1024) -> socket.socket:
    """A TCP socket bound to `address` and listening (not inheritable here).

    Raises:
        ClusterError: the address cannot be resolved or bound (in use, not
            ours); the message names it.
    """
    try:
        found = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ClusterError(f"cannot listen on {address}: {exc.strerror}") from None
    family, kind, proto, _, where = found[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ClusterError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    return sock


def bind_all(addresses: Sequence[ListenAddress]) -> tuple[ListenSocket, ...]:
    """Bind every address (each socket named after its address); none is left
    bound if one fails.

    Raises:
        ClusterError: as `bind_listener`, for the first that fails.
    """
    bound: list[ListenSocket] = []
    try:
        for address in addresses:
            bound.append(ListenSocket(address.name, bind_listener(address)))
    except BaseException:
        for listener in bound:
            listener.socket.close()
        raise
    return tuple(bound)


def check_socket_name(name: object) -> str:
    """`name` if it can name a socket in `LISTEN_FDNAMES` (1 to 255 printable
    characters, no `:`); raise `ValueError` otherwise."""
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= 255
        or not name.isprintable()
        or ":" in name
    ):
        raise ValueError(f"{name!r} cannot name a socket: 1 to 255 printable characters, no ':'")
    return name


@attrs.frozen
class ListenSocket:
    """One listening socket, and its name (`LISTEN_FDNAMES`).

    Raises:
        ValueError: a name `LISTEN_FDNAMES` cannot carry (empty, over 255
            characters, not printable, or holding a `:`).
    """

    name: str = attrs.field(validator=lambda _, __, value: check_socket_name(value))
    socket: socket.socket


_taken: list[ListenSocket] | None = None


def listen_sockets() -> list[ListenSocket]:
    """The listening sockets this process was given, in order (empty: none).

    The first call takes them: it checks the environment, wraps descriptors
    3, 4, ... as sockets (close-on-exec, so a program this process starts
    does not inherit them) and removes the three variables, so that a child
    process does not take them for its own; later calls return the same
    list. Sockets meant for another process (`LISTEN_PID` is not this one)
    are left alone, as systemd's `sd_listen_fds` does.

    Raises:
        ValueError: the environment is malformed (the message names the
            variable), or a descriptor is not a socket.
    """
    global _taken
    if _taken is None:
        _taken = _take(os.environ)
    return list(_taken)


def _take(environ: MutableMapping[str, str]) -> list[ListenSocket]:
    found = parse_environment(environ, os.getpid())
    if found is None:
        return []
    fds = range(LISTEN_FDS_START, LISTEN_FDS_START + len(found))
    for fd, name in zip(fds, found, strict=True):  # every one checked before any is taken
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            raise ValueError(f"LISTEN_FDS: descriptor {fd} is not open") from None
        if not stat.S_ISSOCK(mode):
            raise ValueError(f"LISTEN_FDS: descriptor {fd} ({name!r}) is not a socket")
    for variable in _VARIABLES:
        environ.pop(variable, None)
    taken = []
    for fd, name in zip(fds, found, strict=True):
        os.set_inheritable(fd, False)
        taken.append(ListenSocket(name, socket.socket(fileno=fd)))
    return taken


def parse_environment(environ: Mapping[str, str], pid: int) -> list[str] | None:
    """The names of the sockets `environ` gives process `pid` (None: it gives none).

    Raises:
        ValueError: naming the variable that is malformed.
    """
    count = environ.get("LISTEN_FDS")
    if count is None:
        return None
    owner = environ.get("LISTEN_PID")
    if owner is not None:
        if not (owner.isascii() and owner.isdigit() and 0 < len(owner) <= 10):
            raise ValueError(f"LISTEN_PID is a process id, not {owner[:40]!r}")
        if int(owner) != pid:
            return None  # for another process (a parent's, passed down)
    if not (count.isascii() and count.isdigit() and len(count) <= 4):
        raise ValueError(f"LISTEN_FDS is a count of descriptors, not {count[:40]!r}")
    number = int(count)
    if number > MAX_LISTEN:
        raise ValueError(f"LISTEN_FDS is {number}: a process takes {MAX_LISTEN} at most")
    names_text = environ.get("LISTEN_FDNAMES")
    if names_text is None:
        return ["unknown"] * number  # systemd's name for an unnamed one
    names = names_text.split(":") if number else []
    if len(names) != number or (not number and names_text):
        raise ValueError(
            f"LISTEN_FDNAMES names {len(names_text.split(':'))} sockets, LISTEN_FDS {number}"
        )
    for name in names:
        if not name or len(name) > 255 or not name.isprintable():
            raise ValueError(f"LISTEN_FDNAMES: {name[:40]!r} is not a socket name")
    return names


#: Set by a controller for its remote: the descriptors of the listening
#: sockets the child inherits (as numbered in the child), in order, and their
#: names; the remote moves them to 3, 4, ... (`place_listeners`).
ENV_LISTEN = "STARTABLE_LISTEN_FDS"
ENV_LISTEN_NAMES = "STARTABLE_LISTEN_NAMES"


def place_listeners(environ: MutableMapping[str, str], keep: tuple[str, ...]) -> None:
    """Move the sockets `environ` says this process inherited to 3, 4, ..., and say so.

    Run by the remote first thing, before anything else opens a descriptor.
    The descriptors named by the variables in `keep` (the remote's own
    sockets) are moved out of the way if they sit where a listener goes, and
    their variables updated. Then `LISTEN_FDS`, `LISTEN_FDNAMES` and
    `LISTEN_PID` (this process) are set, for `listen_sockets` or any server
    that understands socket activation.

    Raises:
        ValueError: the variables are malformed (a controller of another
            version, or not a controller at all).
        OSError: a descriptor they name is not open.
    """
    given = environ.pop(ENV_LISTEN, None)
    names_text = environ.pop(ENV_LISTEN_NAMES, None)
    if given is None:
        return
    parts = given.split(",")
    numbers = all(p.isascii() and p.isdigit() and len(p) <= 9 for p in parts)
    if not 0 < len(parts) <= MAX_LISTEN or not numbers:
        raise ValueError(f"{ENV_LISTEN} lists descriptors, not {given[:40]!r}")
    sources = [int(part) for part in parts]
    names = (names_text or "").split(":")
    if len(names) != len(sources) or len(set(sources)) != len(sources):
        raise ValueError(f"{ENV_LISTEN} and {ENV_LISTEN_NAMES} do not match")
    end = LISTEN_FDS_START + len(sources)
    places = range(LISTEN_FDS_START, end)

    def away(fd: int) -> int:
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, end)
        os.close(fd)
        return moved

    for variable in keep:
        own = environ.get(variable)
        if own is not None and own.isascii() and own.isdigit() and int(own) in places:
            environ[variable] = str(away(int(own)))
    sources = [away(fd) if fd in places else fd for fd in sources]
    for place, fd in zip(places, sources, strict=True):
        os.dup2(fd, place)  # inheritable, as socket activation passes them
        os.close(fd)
    environ["LISTEN_FDS"] = str(len(sources))
    environ["LISTEN_FDNAMES"] = ":".join(names)
    environ["LISTEN_PID"] = str(os.getpid())
