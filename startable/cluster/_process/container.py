"""`ServiceContainer`: one service's execution environment, across restarts."""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from ... import State, as_raw_start, as_raw_stop, of
from .._errors import RemoteError
from .._ipc.messages import Resources
from .._sandbox.permissions import Permissions
from .controller import OutputLine, ServiceController
from .failfast import FailFast
from .listen import ListenSocket
from .options import ProcessOptions
from .zygote import Zygote


class ServiceContainer:
    """The environment one service runs in: a new child process on every start.

    Each start creates a new `ServiceController` (and so a new remote
    process), each stop destroys them; one service per container. A start
    fails with the remote's error (traceback included) if the entry cannot
    be loaded or its raw start raises. If the service stops on its own or its
    process dies, the container stops with that reason.

    Args:
        entry: `"package.module:attribute"` naming an object with a lifecycle
            or a zero-argument factory of one (with `code`: a name in it).
        code: source text the child runs to define the entry.
        permissions: what the service may do (see `Permissions`); None runs
            it unrestricted.
        env: environment variables for the service.
        cwd: its working directory.
        name: used in `repr()`, logs and errors; the entry by default.
        on_output: called with each line the service writes.
        history: how many incarnations to keep (`incarnations`).
        options: how each incarnation's process is run (`ProcessOptions`:
            the interpreter, timeouts, how much is kept); a mapping gives
            its fields by name.
        listeners: listening sockets every incarnation's process gets at
            descriptors 3, 4..., as socket activation passes them (the
            service takes them with `listen_sockets`). They stay bound
            across restarts: whoever bound them closes them.

    Example:
        ```python
        container = ServiceContainer(
            "myapp.cache:Cache",
            permissions=Permissions(write=["/var/cache/myapp"]),
            env={"CACHE_SIZE": "128"},
        )
        async with startable.running(container):
            print(container.pid, container.controller.mechanisms)
        ```
    """

    def __init__(
        self,
        entry: str,
        *,
        code: str | None = None,
        permissions: Permissions | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        name: str | None = None,
        on_output: Callable[[OutputLine], object] | None = None,
        history: int = 10,
        options: ProcessOptions | Mapping[str, object] | None = None,
        listeners: Sequence[ListenSocket] = (),
    ) -> None:
        if not isinstance(entry, str) or not entry:
            raise ValueError(f"a container needs an entry, not {entry!r}")
        if code is None and ":" not in entry:
            raise ValueError(f"an entry is 'package.module:attribute', not {entry!r}")
        if permissions is not None and not isinstance(permissions, Permissions):
            raise TypeError(f"permissions must be a Permissions, not {permissions!r}")
        self.entry = entry
        self.code = code
        self.permissions = permissions
        self.env = dict(env or {})
        self.cwd = cwd
        self.name = name or entry
        self.on_output = on_output
        #: How each incarnation's process is run.
        self.options = ProcessOptions.of(options)
        #: Listening sockets every incarnation gets (socket activation); this
        #: container never closes them: their owner does.
        self.listeners = tuple(listeners)
        #: The fork server each incarnation is forked from (None: each is a new
        #: interpreter); set by a pool that preloads (`preload = true`).
        self.zygote: Zygote | None = None
        #: The index of the pool's replica it runs (None: not a pool's); set by
        #: the pool, and given in every `OutputLine`.
        self.replica: int | None = None
        #: The controllers of past incarnations, newest last (the current one
        #: too): `history` at most, each past one retired (see
        #: `ServiceController.retire`).
        self.incarnations: deque[ServiceController] = deque(maxlen=history)
        self._sockets: dict[str, socket.socket] = {}
        self._starting = FailFast()

    def hand_over(self, variable: str, sock: socket.socket) -> None:
        """Give `sock` to the next incarnation: its process inherits it, the
        descriptor's number in the environment variable `variable` (see
        `ServiceController`'s `sockets`). Used once, then closed here; one
        handed over before and never used is closed now."""
        unused = self._sockets.pop(variable, None)
        if unused is not None:
            unused.close()
        self._sockets[variable] = sock

    def __repr__(self) -> str:
        return f"<ServiceContainer {self.name}: {of(self).state.name}>"

    @as_raw_start
    async def _start(self) -> None:
        sockets, self._sockets = self._sockets, {}
        controller = ServiceController(
            self.entry,
            code=self.code,
            permissions=self.permissions,
            env=self.env,
            cwd=self.cwd,
            name=self.name,
            on_output=self.on_output,
            sockets=sockets,
            options=self.options,
            listeners=self.listeners,
            zygote=self.zygote,
            replica=self.replica,
        )
        for past in self.incarnations:
            past.retire()
        self.incarnations.append(controller)
        # Fails as soon as the controller's start does: this container is STOPPING
        # while the stop ladder of the failed incarnation runs, not after it.
        await self._starting.start(of(self), of(controller), of(self).stop)

    @as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        controller = self.controller
        if controller is not None:
            await self._starting.stop(of(controller), err)

    # -- the current (or last) incarnation ------------------------------------

    @property
    def controller(self) -> ServiceController | None:
        """The controller of the current (or last) incarnation."""
        return self.incarnations[-1] if self.incarnations else None

    @property
    def pid(self) -> int | None:
        return self.controller.pid if self.controller else None

    @property
    def remote_state(self) -> State | None:
        return self.controller.remote_state if self.controller else None

    @property
    def output(self) -> list[OutputLine]:
        return list(self.controller.output) if self.controller else []

    @property
    def errors(self) -> list[RemoteError]:
        return list(self.controller.errors) if self.controller else []

    @property
    def resources(self) -> list[Resources]:
        return list(self.controller.resources) if self.controller else []

    @property
    def returncode(self) -> int | None:
        return self.controller.returncode if self.controller else None
