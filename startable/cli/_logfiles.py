"""Log files: each service's output in a file of its own, rotated by size.

`startable up` writes them when the cluster file has a `[cluster.logs]`
table. `<directory>/<service>.log` takes each line as it comes (a pool's
replicas share their service's file, each line naming its replica); once
a line would take it past `max_size` bytes, it becomes `<service>.log.1`,
the older ones move up (`.1` to `.2`...) and the oldest past `keep` is
removed. Files are created mode 0600 (the directory 0700), never through a
symbolic link. A write that fails (a full disk) loses that line, never the
service: the failure is logged, and counted in `LogFiles.lost`. Lines are
written as they come, one `write` each, in the event loop: the files are
meant for a local disk (a stalled network mount would stall `up`).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os

from ..cluster import OutputLine
from ..cluster._names import now_and_then
from ._output import output_line

logger = logging.getLogger("startable.cli")
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class LogFiles:
    """The log files of one cluster's services (see the module's docstring).

    Args:
        directory: where the files go (made, mode 0700, if missing).
        max_size: bytes a file may reach before it is rotated.
        keep: how many rotated files are kept (0: the file starts afresh).
    """

    def __init__(self, directory: str, max_size: int, keep: int) -> None:
        self.directory = directory
        self.max_size = max_size
        self.keep = keep
        #: Lines that could not be written, per service.
        self.lost: dict[str, int] = {}
        self._open: dict[str, tuple[int, int]] = {}  # service: (descriptor, size)

    def path(self, service: str, generation: int = 0) -> str:
        """The file of `service` (a rotated one: `generation` 1, 2...)."""
        name = f"{service}.log" + (f".{generation}" if generation else "")
        return os.path.join(self.directory, name)

    def write(self, service: str, line: OutputLine) -> None:
        """Add `line` to the file of `service` (rotating it first if it is full)."""
        stamp = datetime.datetime.fromtimestamp(line.time, datetime.UTC).isoformat(
            timespec="milliseconds"
        )
        replica = f" #{line.replica}" if line.replica is not None else ""
        data = f"{stamp} {line.stream}{replica} {output_line(line.text)}\n".encode()
        try:
            fd, size = self._file(service)
            if size and size + len(data) > self.max_size:
                self._rotate(service)
                fd, size = self._file(service)
            written = 0
            try:
                while written < len(data):  # (a short write: near a full disk)
                    written += os.write(fd, data[written:])
            finally:
                self._open[service] = (fd, size + written)
        except OSError as exc:
            lost = self.lost[service] = self.lost.get(service, 0) + 1
            if now_and_then(lost):  # a full disk cannot fill the log
                logger.warning(
                    "%s: a line could not be written to %s (%d lost so far): %s",
                    service,
                    self.path(service),
                    lost,
                    exc.strerror or exc,
                )
            self._close(service)  # opened afresh for the next line

    def _file(self, service: str) -> tuple[int, int]:
        opened = self._open.get(service)
        if opened is None:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            fd = os.open(self.path(service), _FLAGS, 0o600)
            opened = self._open[service] = (fd, os.fstat(fd).st_size)
        return opened

    def _rotate(self, service: str) -> None:
        self._close(service)
        if self.keep == 0:
            os.unlink(self.path(service))
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(service, self.keep))
        for generation in range(self.keep - 1, -1, -1):
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.path(service, generation), self.path(service, generation + 1))

    def _close(self, service: str) -> None:
        opened = self._open.pop(service, None)
        if opened is not None:
            os.close(opened[0])

    def close(self) -> None:
        """Close every file (a later `write` opens its file again)."""
        for service in list(self._open):
            self._close(service)
