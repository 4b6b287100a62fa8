"""Owners: who holds the tasks of a lifecycle, and who stops what is left.

An owner is either a running cycle of a service (so a service owns what its
raw start starts) or an `open_owner()` block. All tasks physically live in
the anyio task group of the outermost `open_owner()`; each has its own
cancel scope so an owner can cancel and await exactly its own tasks.
"""

from __future__ import annotations

import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio
import anyio.abc
import anyio.lowlevel
import sniffio

from ._exceptions import StateError
from ._lifecycle import State

if TYPE_CHECKING:
    from ._startable import Startable

#: The chain of cycles whose raw start or raw stop the current code runs
#: inside, innermost first: (cycle, outer chain) or None.
RawChain: TypeAlias = "tuple[Owner, RawChain] | None"

#: What the current code runs under: the owner that lifecycles it starts
#: belong to, and its raw chain. One variable, so entering a raw hook costs
#: one set and one reset.
CONTEXT: ContextVar[tuple[Owner | None, RawChain]] = ContextVar(
    "startable_context", default=(None, None)
)


def current_owner() -> Owner | None:
    """The owner that a lifecycle started by the current code would belong to."""
    return CONTEXT.get()[0]


def inside_raw(owner: Owner) -> bool:
    """Whether the current code runs inside a raw start/stop of `owner`'s cycle."""
    chain = CONTEXT.get()[1]
    while chain is not None:
        if chain[0] is owner:
            return True
        chain = chain[1]
    return False


def combine(errors: list[Exception], message: str) -> Exception | None:
    """None, the only error, or an ExceptionGroup of several (each once)."""
    errors = list({id(error): error for error in errors}.values())
    if not errors:
        return None
    if len(errors) == 1:
        return errors[0]
    return ExceptionGroup(message, errors)


def contains(error: BaseException, target: BaseException) -> bool:
    """Whether `target` is `error` or one of the errors inside it (groups)."""
    if error is target:
        return True
    if isinstance(error, BaseExceptionGroup):
        return any(contains(inner, target) for inner in error.exceptions)
    return False


def attach(primary: BaseException, secondary: BaseException, what: str) -> None:
    """Attach `secondary`, raised while cleaning up after `primary`, to it.

    The primary error is what the caller gets, as itself; the secondary one
    is kept in a note with its whole traceback, so it is neither lost nor
    put in its place.
    """
    if contains(primary, secondary) or contains(secondary, primary):
        return
    # Its chain would only repeat the primary error, which is raised anyway.
    chain = secondary.__context__ is not primary and secondary.__cause__ is not primary
    text = "".join(traceback.format_exception(secondary, chain=chain)).rstrip()
    primary.add_note(f"{what}:\n{text}")


def raise_primary(
    primary: BaseException | None, secondary: Iterable[Exception], what: str, group: str
) -> None:
    """Raise the primary error with the others attached, or the others together.

    The rule of `running()` and `open_owner()`: an error that happened first
    (the primary) always comes out as itself, and errors raised while cleaning
    up after it are attached to it as notes. A cancellation (or any other
    BaseException that is not an Exception) is no error: errors from the
    clean-up take its place, as in a trio nursery. With no primary error,
    the clean-up's errors come out alone, or as an ExceptionGroup when there
    are several.
    """
    others = [error for error in secondary if primary is None or not contains(primary, error)]
    if isinstance(primary, Exception):
        for other in others:
            attach(primary, other, what)
        raise primary
    combined = combine(others, group)
    if combined is not None:
        raise combined
    if primary is not None:
        raise primary


class Task:
    """One task spawned for an owner."""

    __slots__ = ("cancelled", "runner", "scope")

    def __init__(self, runner: bool) -> None:
        self.runner = runner  # runs the stop of a lifecycle the owner holds
        self.cancelled = False
        self.scope: anyio.CancelScope | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


class _Status:
    """Passed to a task started with `start_task`; records `started()`."""

    __slots__ = ("_inner", "done")

    def __init__(self, inner: anyio.abc.TaskStatus[Any]) -> None:
        self._inner = inner
        self.done = False

    def started(self, value: Any = None) -> None:
        self.done = True
        self._inner.started(value)


def backend_checkpoint() -> Callable[[], Awaitable[None]]:
    """The current backend's checkpoint, resolved once.

    `anyio.lowlevel.checkpoint` looks the backend up on every call, which
    costs as much as the rest of a no-op lifecycle cycle on trio.
    """
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.checkpoint
    return anyio.lowlevel.checkpoint


class Owner:
    """Something that owns lifecycles and tasks."""

    __slots__ = (
        "_idle",
        "checkpoint",
        "children",
        "closed",
        "closing",
        "parent",
        "task_group",
        "tasks",
    )

    def __init__(
        self,
        parent: Owner | None,
        task_group: anyio.abc.TaskGroup,
        checkpoint: Callable[[], Awaitable[None]],
    ) -> None:
        self.parent = parent
        self.task_group = task_group
        self.checkpoint = checkpoint
        self.children: dict[Startable, None] | None = None
        self.tasks: dict[Task, None] | None = None
        self.closing = False  # no new background tasks
        self.closed = False  # no tasks at all: everything it held has ended
        self._idle: anyio.Event | None = None

    # -- what subclasses say about themselves -------------------------------

    def describe(self) -> str:
        raise NotImplementedError

    def crash(self, exc: Exception) -> None:
        """Handle an error from one of this owner's tasks."""
        raise NotImplementedError

    def record(self, exc: Exception) -> None:
        """Keep an error raised while this owner closes."""
        raise NotImplementedError

    # -- bookkeeping --------------------------------------------------------

    # -- tasks --------------------------------------------------------------

    def spawn(
        self,
        func: Callable[..., Awaitable[Any]],
        *args: Any,
        name: object = None,
        runner: bool = False,
        internal: bool = False,
    ) -> Task:
        """Run `func(*args)` as a task of this owner.

        Background tasks (neither `runner` nor `internal`) are refused once
        the owner is closing; the engine's own tasks (stop runners, async
        hooks) are taken until the owner has closed.
        """
        if self.closing and not (runner or internal):
            self._refuse_tasks()
        task = Task(runner)
        if self.tasks is None:
            self.tasks = {}
        self.tasks[task] = None
        self.task_group.start_soon(self._run, task, func, args, name=name)
        return task

    def _refuse_tasks(self) -> None:
        raise StateError(
            f"{self.describe()} is stopping and takes no new tasks",
            actual=State.STOPPING,
            expected=(State.STARTING, State.STARTED, State.STOPPING),
        )

    async def _run(
        self, task: Task, func: Callable[..., Awaitable[Any]], args: Iterable[Any]
    ) -> None:
        CONTEXT.set((self, None))
        try:
            with anyio.CancelScope() as task.scope:
                if task.cancelled:
                    task.scope.cancel()
                try:
                    await func(*args)
                except Exception as exc:
                    self.crash(exc)
        finally:
            self._done(task)

    async def start_task(
        self, func: Callable[..., Awaitable[Any]], *args: Any, name: object
    ) -> Any:
        """Run `func(*args, task_status=...)` and wait for it to call `started()`."""
        if self.closing:
            self._refuse_tasks()
        task = Task(False)
        if self.tasks is None:
            self.tasks = {}
        self.tasks[task] = None
        return await self.task_group.start(self._run_started, task, func, args, name=name)

    async def _run_started(
        self,
        task: Task,
        func: Callable[..., Awaitable[Any]],
        args: Iterable[Any],
        *,
        task_status: anyio.abc.TaskStatus[Any],
    ) -> None:
        CONTEXT.set((self, None))
        status = _Status(task_status)
        try:
            with anyio.CancelScope() as task.scope:
                if task.cancelled:
                    task.scope.cancel()
                try:
                    await func(*args, task_status=status)
                except Exception as exc:
                    if not status.done:
                        raise  # to the caller of start_task()
                    self.crash(exc)
        finally:
            self._done(task)

    def _done(self, task: Task) -> None:
        assert self.tasks is not None
        del self.tasks[task]
        if self._idle is not None:
            self._idle.set()

    async def _cancel_tasks(self, *, runners: bool) -> None:
        """Cancel this owner's tasks and wait for them to end.

        Without ``runners``, the tasks running stops of lifecycles this owner
        holds are neither cancelled nor waited for (those stops are awaited by
        ``close``, or belong to a forced close). The wait is shielded: every
        task waited for has been cancelled, so this is the wait a nursery does.
        """
        if not self.tasks:
            return
        with anyio.CancelScope(shield=True):
            while pending := [task for task in self.tasks if runners or not task.runner]:
                for task in pending:  # again on each pass: tasks may arrive meanwhile
                    task.cancel()
                self._idle = anyio.Event()
                await self._idle.wait()
        self._idle = None

    async def close(self, interrupted: BaseException | None) -> BaseException | None:
        """End everything this owner holds.

        Cancels the owner's tasks, then stops the lifecycles it holds that are
        still running, newest first, then waits for every task. Errors are
        kept with `record`. If the close runs (or becomes) cancelled,
        the stops are forced; the cancellation is returned so the caller can
        re-raise it once everything has ended.
        """
        cancelled = anyio.get_cancelled_exc_class()
        self.closing = True
        await self._cancel_tasks(runners=False)
        if self.children:
            for child in reversed(list(self.children)):
                try:
                    await child._stop_by_owner(self)
                except cancelled as exc:
                    interrupted = exc
                except Exception as exc:
                    exc.add_note(f"raised while {self.describe()} stopped {child!r}, left running")
                    self.record(exc)
        if interrupted is not None:
            await self._cancel_tasks(runners=True)
        else:
            await self._wait_all()  # every stop has finished: runners only have to return
        self.closed = True
        return interrupted

    async def _wait_all(self) -> None:
        """Cancel what is left but runners, and wait for every task, runners too."""
        await self._cancel_tasks(runners=False)
        if self.tasks:
            with anyio.CancelScope(shield=True):
                while self.tasks:
                    self._idle = anyio.Event()
                    await self._idle.wait()
            self._idle = None


def lives_within(owner: Owner, task_group: anyio.abc.TaskGroup) -> bool:
    """Whether `owner` ends before `task_group` does (its block is inside that one's)."""
    current: Owner | None = owner
    while current is not None:
        if current.task_group is task_group:
            return True
        current = (
            current.parent if current.parent is not None else getattr(current, "enclosing", None)
        )
    return False


class Root(Owner):
    """The owner opened by `open_owner()`."""

    __slots__ = ("body", "enclosing", "errors")

    def __init__(self, task_group: anyio.abc.TaskGroup, enclosing: Owner | None = None) -> None:
        super().__init__(None, task_group, backend_checkpoint())
        self.body = anyio.CancelScope()
        self.errors: list[Exception] = []
        self.enclosing = enclosing  # the owner in whose code this block was opened

    def describe(self) -> str:
        return "open_owner()"

    def crash(self, exc: Exception) -> None:
        self.errors.append(exc)
        self.body.cancel()

    def record(self, exc: Exception) -> None:
        self.errors.append(exc)


@asynccontextmanager
async def open_owner() -> AsyncIterator[None]:
    """Own every lifecycle started in the body, and its tasks.

    Lifecycles started inside the block (and not inside another service)
    belong to it: their stops that begin on their own, their background tasks
    and their async on_stopping hooks run in tasks of this block. On exit,
    whatever is still running is stopped, newest first, and every task is
    awaited. `startable.running` and `startable.run` open one for
    you; use this directly to start several services by hand.

    If a task of the block fails (for example a stop that began on its own
    raised and nobody was waiting for it), the body is cancelled and the error
    is raised on exit. An error raised by the body comes out as itself; errors
    raised while closing after it are attached to it as notes (with their
    tracebacks), never put in its place. With no error from the body, the
    errors of closing come out alone, or as an `ExceptionGroup` when there
    are several.

    Example:
        ```python
        async with startable.open_owner():
            await startable.of(db).start()
            await startable.of(web).start()
            ...
        # web, then db, have been stopped here
        ```
    """
    async with open_root() as root:
        with root.body:
            yield


@asynccontextmanager
async def open_root() -> AsyncIterator[Root]:
    """The task group and the `Root` of an owner block, closed on exit.

    The caller runs its body inside `root.body` (the scope a failing task
    cancels); `open_owner` is exactly that. `running()` leaves it for its own
    stop, which a crash reported to the block must not cancel.
    """
    cancelled = anyio.get_cancelled_exc_class()
    body_error: BaseException | None = None
    async with anyio.create_task_group() as task_group:
        outer = CONTEXT.get()
        root = Root(task_group, outer[0])
        token = CONTEXT.set((root, outer[1]))
        try:
            yield root
        except BaseException as exc:
            body_error = exc
        finally:
            CONTEXT.reset(token)
        interrupted = await root.close(body_error if isinstance(body_error, cancelled) else None)
    # Raised outside the task group, which would wrap them in an ExceptionGroup.
    raise_primary(
        body_error,
        root.errors,
        "open_owner() then also failed while closing",
        "errors in startable.open_owner()",
    )
    if interrupted is not None:
        raise interrupted
