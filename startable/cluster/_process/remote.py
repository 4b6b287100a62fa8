"""The remote: the child-process side of a container (run as `startable.cluster._child`).

In order:

1. ask the kernel to kill this process when the thread that started it dies
   (the controller starts children from a thread that lives as long as its
   process), and check that the parent is still there;
2. say `remoteReady` on the inherited socket, and wait for `RunEntry`, with
   blocking I/O: no event loop and no thread exist yet;
3. apply the permissions (Landlock restricts the calling thread and those it
   starts afterwards, so this comes before any thread);
4. run the entry as a lifecycle under trio, reporting every move, uncaught
   errors and resource samples, until a close request or its own stop;
5. when the port reaches EOF (the controller is gone), kill this process
   group at once, taking any processes the service started with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.machinery
import importlib.util
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from typing import Any, NoReturn, TypeAlias

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec
import trio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ... import Startable, State, StateChange, StateError, __version__, of, open_owner
from ...program import lifecycle_object
from .._data.client import ServiceClient, set_process_client
from .._data.contract import AnyMessage
from .._data.link import PortLink
from .._errors import ClusterError, FrameError, MessageError, PortClosed, PortError, RemoteError
from .._ipc.messages import (
    PROTOCOL,
    CloseRequest,
    ErrorInfo,
    FromRemote,
    PermissionSpec,
    Ping,
    Pong,
    Protected,
    RemoteReady,
    Resources,
    Role,
    RunEntry,
    StateChanged,
    ToRemote,
    Uncaught,
)
from .._ipc.port import ConnectionPort, from_socket
from .._ipc.wire import FrameCodec, FrameReader
from .._names import entry_file, now_and_then
from .descendants import become_subreaper, end_own_descendants
from .listen import place_listeners

ENV_PORT = "STARTABLE_PORT_FD"
ENV_PARENT = "STARTABLE_PARENT_PID"
ENV_DATA_PORT = "STARTABLE_DATA_FD"  # the data plane's socket, when the manager gives one
ENV_SERVICE = "STARTABLE_SERVICE"  # the service's name in its cluster
ENV_REPLICA = "STARTABLE_REPLICA"  # a pool's replica: its index...
ENV_REPLICAS = "STARTABLE_REPLICAS"  # ...and the pool's size
#: Set in a replica forked by a pool's zygote: the permission mechanisms it applied.
ENV_PRELOADED = "STARTABLE_PRELOADED"

#: The remote's side of the control port, and the queue of what it is to send on it.
ControlPort: TypeAlias = ConnectionPort[ToRemote]
Outbox: TypeAlias = MemoryObjectSendStream[FromRemote]
Pending: TypeAlias = MemoryObjectReceiveStream[FromRemote]

#: Exit codes of the remote process.
EXIT_OK = 0  # the service stopped cleanly
EXIT_FAILED = 1  # its start failed, it stopped with a reason, or its stop failed
EXIT_SETUP = 2  # started without a port, or the controller vanished before the entry came
EXIT_ENTRY = 3  # the entry could not be loaded

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Die with the parent (the manager, or a pool's zygote), which must still be there."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        become_subreaper()  # what the service starts stays in this process's tree
    expected = os.environ.pop(ENV_PARENT, None)
    if expected is not None and os.getppid() != int(expected):
        os._exit(EXIT_SETUP)  # the parent died before the signal was armed


class _Blocking:
    """Frames over the socket with blocking calls, for before the event loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = FrameReader(FrameCodec())
        self.encoder = msgspec.msgpack.Encoder()

    def send(self, message: msgspec.Struct) -> None:
        self.sock.sendall(self.reader.codec.encode(self.encoder.encode(message)))

    def receive(self) -> ToRemote:
        decoder: msgspec.msgpack.Decoder[ToRemote] = msgspec.msgpack.Decoder(ToRemote)
        try:
            while (payload := self.reader.next()) is None:
                data = self.sock.recv(65536)
                if not data:
                    os._exit(EXIT_SETUP)  # the controller went away before sending the entry
                self.reader.feed(data)
            return decoder.decode(payload)
        except Exception as exc:  # a bad frame, or a message of another schema
            self.fail(
                f"cannot read the controller's message ({exc}): does the manager run the same "
                f"startable as {sys.executable} (startable {__version__}, control protocol "
                f"{PROTOCOL})?"
            )

    def fail(self, problem: str) -> NoReturn:
        """End the setup with `problem`, said to the controller if it can hear, and on stderr."""
        print(f"startable: {problem}", file=sys.stderr, flush=True)
        info = ErrorInfo(type="startable.cluster.ClusterError", message=problem, traceback="")
        with contextlib.suppress(Exception):
            self.send(Uncaught(info, "setup"))
        os._exit(EXIT_SETUP)


def _code_paths(entry: str) -> list[str]:
    """The directory of the entry's top-level package, found without running it."""
    path = entry_file(entry)
    if path is not None:
        return [os.path.dirname(os.path.abspath(path))]
    module = entry.partition(":")[0].split(".")[0]
    spec = importlib.machinery.PathFinder.find_spec(module)
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        return []
    if spec.submodule_search_locations is not None:
        return list(spec.submodule_search_locations)
    return [os.path.dirname(spec.origin or "")]


def _load(request: RunEntry) -> object:
    """The service object the entry names (calling it if it is a factory)."""
    if request.code is not None:
        namespace: dict[str, Any] = {"__name__": "__startable_entry__"}
        exec(compile(request.code, "<entry code>", "exec"), namespace)
        try:
            found = namespace[request.entry]
        except KeyError:
            raise NameError(f"the entry code defines no {request.entry!r}") from None
        return lifecycle_object(found, request.entry)
    module_name, sep, attribute = request.entry.rpartition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"an entry is 'package.module:attribute', not {request.entry!r}")
    path = entry_file(request.entry)
    if path is None:
        target: object = importlib.import_module(module_name)
    else:  # a file, imported by its path
        path = os.path.abspath(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        other = importlib.machinery.PathFinder.find_spec(stem) if stem.isidentifier() else None
        # Named after the file, unless that would shadow another module.
        free = stem.isidentifier() and stem not in sys.modules
        name = stem if free and (other is None or other.origin == path) else "__startable_entry__"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path!r}: not a Python file", path=path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        target = module
    for part in attribute.split("."):
        target = getattr(target, part)
    return lifecycle_object(target, request.entry)


def main() -> NoReturn:
    die_with_parent()
    try:  # first: the listeners go to 3, 4... before anything opens a descriptor
        place_listeners(os.environ, keep=(ENV_PORT, ENV_DATA_PORT))
    except (ValueError, OSError) as exc:
        print(f"startable: {exc}", file=sys.stderr)
        sys.exit(EXIT_SETUP)
    fd = os.environ.pop(ENV_PORT, None)
    if fd is None:
        print("startable.cluster._remote is started by a ServiceController", file=sys.stderr)
        sys.exit(EXIT_SETUP)
    sock = socket.socket(fileno=int(fd))
    sock.setblocking(True)
    data_fd = os.environ.pop(ENV_DATA_PORT, None)
    data = socket.socket(fileno=int(data_fd)) if data_fd is not None else None
    channel = _Blocking(sock)
    python = sys.version.split()[0]
    channel.send(RemoteReady(os.getpid(), python, protocol=PROTOCOL, version=__version__))
    request = channel.receive()
    if isinstance(request, CloseRequest):
        os._exit(EXIT_OK)  # asked to stop before anything started
    if not isinstance(request, RunEntry):
        channel.fail(f"the controller's first message was {type(request).__name__}, not run")
    preloaded = os.environ.pop(ENV_PRELOADED, None)
    if preloaded is not None:  # forked by a zygote that applied them already...
        mechanisms = _preloaded(preloaded)
        if request.permissions is not None:  # ...but for its own /proc/<pid>
            from .._sandbox.permissions import narrow_to_this_process  # (the zygote's)

            paths = [] if request.code is not None else _code_paths(request.entry)
            narrow_to_this_process(request.permissions, paths)
    else:
        mechanisms = prepare(
            request.entry, request.code, request.permissions, request.resources_interval
        )
    code = anyio.run(_serve, sock, data, request, mechanisms, backend="trio")
    end_own_descendants()  # nothing the service started outlives it
    sys.exit(code)


def _preloaded(text: str) -> tuple[str, ...]:
    """The mechanisms a zygote says it applied (a JSON list of strings)."""
    try:
        found = json.loads(text)
    except ValueError:
        found = None
    if not isinstance(found, list) or not all(isinstance(m, str) for m in found):
        return ("applied by the zygote",)
    return tuple(found)


def prepare(
    entry: str,
    code: str | None,
    permissions: PermissionSpec | None,
    resources_interval: float,
    *,
    forks: bool = False,
) -> tuple[str, ...]:
    """Apply `permissions` to this process (after warming up what needs it); the
    mechanisms applied. `forks`: for a zygote (see `permissions.apply`)."""
    if permissions is None:
        return ()
    # Loaded only where it is used: a child with no permissions never pays for it.
    from .._sandbox.permissions import apply

    _warm_up(resources_interval)
    paths = [] if code is not None else _code_paths(entry)
    return apply(permissions, paths, forks=forks)


def _warm_up(resources_interval: float) -> None:
    """Import and initialise what this process needs before the sandbox closes.

    Trio probes the system when it is first imported (it looks for the
    pthread library with `ctypes.util.find_library`, which runs the compiler
    in a temporary directory); a sandboxed process could not.
    """
    anyio.run(anyio.lowlevel.checkpoint, backend="trio")
    if resources_interval > 0:
        import psutil

        psutil.Process().cpu_percent(None)


async def _serve(
    sock: socket.socket, data: socket.socket | None, request: RunEntry, mechanisms: tuple[str, ...]
) -> int:
    port = from_socket(sock, receives=ToRemote, name="remote port")
    client = None
    if data is not None:  # its link to the other services (the controller never sees it)
        name = os.environ.get(ENV_SERVICE, "")
        data_port = from_socket(data, receives=AnyMessage, name=f"{name} data port")
        replica, replicas = _place_in_pool(os.environ)
        # A replica of a pool holds the singleton role only once the pool gives it.
        singleton = ENV_REPLICA not in os.environ
        client = ServiceClient(
            name, PortLink(data_port), replica=replica, replicas=replicas, singleton=singleton
        )
        set_process_client(client)
    outbox, pending = anyio.create_memory_object_stream[FromRemote](10_000)
    code = EXIT_OK
    async with open_owner():
        await of(port).start()
        await port.send(Protected(mechanisms))
        async with anyio.create_task_group() as forwarding:
            forwarding.start_soon(_forward, pending, port)
            _report_thread_errors(outbox)
            if client is not None:
                await of(client).start()
            async with anyio.create_task_group() as tasks:  # listening, sampling
                try:
                    code = await _run(request, port, outbox, tasks, client)
                finally:
                    tasks.cancel_scope.cancel()
            if client is not None:
                await of(client).stop()
            outbox.close()  # the forwarder sends what is left, then returns
        await of(port).stop()
    return code


def _place_in_pool(environ: Mapping[str, str]) -> tuple[int, int]:
    """This process's replica index and its pool's size (0 and 1: not a pool)."""
    index, size = environ.get(ENV_REPLICA, "0"), environ.get(ENV_REPLICAS, "1")
    numbers = all(n.isascii() and n.isdigit() and len(n) <= 4 for n in (index, size))
    if numbers and int(index) < int(size):
        return int(index), int(size)
    print(
        f"startable: bad {ENV_REPLICA}={index[:20]!r}, {ENV_REPLICAS}={size[:20]!r}",
        file=sys.stderr,
    )
    return 0, 1


async def _forward(pending: Pending, port: ControlPort) -> None:
    async with pending:
        async for message in pending:
            try:
                await port.send(message)
            except FrameError:
                pass  # too large to send (the port is fine): it is lost, not the others
            except (PortError, StateError):
                pass  # the controller cannot hear any more: what is left is dropped


def _report_thread_errors(outbox: Outbox) -> None:
    """Report errors that end threads, without ever making the raising thread wait.

    The event loop may be blocked on that very thread (a `join()` in a
    service), so the report is handed to the loop to send when it can.
    """
    token = trio.lowlevel.current_trio_token()

    def deliver(message: Uncaught) -> None:
        with contextlib.suppress(anyio.WouldBlock, anyio.ClosedResourceError):
            outbox.send_nowait(message)

    def excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None:
            return
        where = f"thread {args.thread.name if args.thread else '?'}"
        message = Uncaught(ErrorInfo.of(args.exc_value).bounded(), where)
        try:
            token.run_sync_soon(deliver, message)
        except trio.RunFinishedError:  # the loop is gone: say it where it can be read
            threading.__excepthook__(args)

    threading.excepthook = excepthook


class _Ending:
    """When and why the service is to stop: asked to by the controller, or on its own."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.asked = False
        self.reason: BaseException | None = None  # the close request's
        self.failed = False  # the control port broke: not a clean stop
        self.starting = anyio.CancelScope()  # cancelled to abandon a start in flight

    def ask(self, reason: BaseException | None, *, failed: bool = False) -> None:
        if not self.asked:
            self.asked, self.reason, self.failed = True, reason, failed
            self.done.set()
            self.starting.cancel(
                "the control port broke" if failed else "the controller asked it to stop"
            )


async def _run(
    request: RunEntry,
    port: ControlPort,
    outbox: Outbox,
    tasks: anyio.abc.TaskGroup,
    client: ServiceClient | None,
) -> int:
    try:
        service = _load(request)
    except BaseException as exc:
        await outbox.send(Uncaught(ErrorInfo.of(exc).bounded(), "loading the entry"))
        return EXIT_ENTRY
    if client is not None:
        client.serve(service)
    lifecycle = of(service)

    def report(change: StateChange) -> None:
        reason = ErrorInfo.of(change.reason).bounded() if change.reason is not None else None
        outbox.send_nowait(StateChanged(change.current.name, change.cycle, reason))  # type: ignore[arg-type]

    lifecycle.subscribe(report)
    ending = _Ending()
    tasks.start_soon(_listen, port, ending, client)  # a close request is heard during the start too
    try:
        # An owner of its own: the stop of an abandoned start runs in a task of
        # it, and if that stop fails, the error comes out here to be reported.
        async with open_owner():
            return await _lifetime(lifecycle, client, request, outbox, tasks, ending)
    except Exception as exc:
        await outbox.send(Uncaught(ErrorInfo.of(exc).bounded(), "raw stop"))
        return EXIT_FAILED


async def _lifetime(
    lifecycle: Startable,
    client: ServiceClient | None,
    request: RunEntry,
    outbox: Outbox,
    tasks: anyio.abc.TaskGroup,
    ending: _Ending,
) -> int:
    stopped_with: list[BaseException | None] = []

    def on_stopping(reason: BaseException | None) -> None:
        stopped_with.append(reason)
        ending.done.set()

    with ending.starting:
        try:
            await lifecycle.start(on_stopping)
        except Exception as exc:
            await outbox.send(Uncaught(ErrorInfo.of(exc).bounded(), "raw start"))
            return EXIT_FAILED
    if ending.starting.cancelled_caught:
        # Abandoned: its raw stop runs in a task of the owner, with the reason why.
        await lifecycle.wait_state(State.STOPPED)
        return EXIT_FAILED if ending.failed else EXIT_OK
    if client is not None:
        # A service that can no longer reach the cluster stops, with the reason
        # (its client stops on its own when the link to the manager breaks).
        await of(client).start(lifecycle.stop_nowait)
    if request.resources_interval > 0:
        tasks.start_soon(_sample, outbox, request.resources_interval)
    await ending.done.wait()
    code = EXIT_FAILED if ending.failed else EXIT_OK
    reason = stopped_with[0] if stopped_with else None
    if reason is not None:
        await outbox.send(Uncaught(ErrorInfo.of(reason).bounded(), "stop reason"))
        code = EXIT_FAILED
    try:
        await lifecycle.stop(ending.reason)
    except Exception as exc:
        await outbox.send(Uncaught(ErrorInfo.of(exc).bounded(), "raw stop"))
        code = EXIT_FAILED
    return code


async def _listen(port: ControlPort, ending: _Ending, client: ServiceClient | None) -> None:
    dropped = 0
    while True:
        try:
            message = await port.receive()
        except MessageError as exc:  # the port's contract: dropped, the port stays
            dropped += 1
            if now_and_then(dropped):
                print(f"startable: {exc} ({dropped} so far)", file=sys.stderr, flush=True)
            continue
        except PortClosed:
            _controller_gone()
        except PortError as exc:  # a bad frame: the controller can no longer be heard
            error = ClusterError(f"the control port broke: {exc}")
            print(f"startable: {error}; stopping the service", file=sys.stderr, flush=True)
            ending.ask(error, failed=True)
            return
        if isinstance(message, CloseRequest):
            reason = message.reason
            ending.ask(RemoteError(reason, "stop reason") if reason is not None else None)
            return
        if isinstance(message, Ping):
            await port.send(Pong(message.payload))
        elif isinstance(message, Role) and client is not None:
            client.hold_singleton()


def _controller_gone() -> NoReturn:
    """The controller is gone: end this process group now, with all it started."""
    end_own_descendants(deadline=0.5)  # those in sessions of their own first
    if os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(EXIT_FAILED)


async def _sample(outbox: Outbox, interval: float) -> None:
    import psutil

    process = psutil.Process()
    process.cpu_percent(None)  # the first call only sets the reference point
    while True:
        await anyio.sleep(interval)
        await outbox.send(Resources.of(process))
