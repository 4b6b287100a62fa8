"""What `startable up` writes: service text made harmless, and streams that never block.

Two guarantees for the operator's terminal:

- **escaping**: nothing a service writes (its output, its name, the text of
  its errors) reaches the terminal as a control character. Control
  characters (C0, DEL, C1), the line and paragraph separators and the
  bidirectional controls are shown as escapes (`\\x1b`, `\\r`, `\\u202e`),
  so no escape sequence (CSI, OSC, DCS...) can move the cursor, retitle the
  window or forge a line of startable's own. On the live display a
  service's colours (SGR sequences) are kept as colours.
- **no blocking**: the event loop never waits for a reader. `Outlet`
  queues what is written and a thread writes it out; when the reader falls
  too far behind, lines are dropped and counted, and a line says how many
  once the reader has caught up.
"""

from __future__ import annotations

import io
import os
import re
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, TextIO, cast

from rich.text import Text

#: Characters a terminal or a log viewer acts on instead of showing: C0
#: (but tab), DEL, C1, the Unicode line and paragraph separators, and the
#: bidirectional controls (which can reorder what a line seems to say).
_CONTROLS: Final = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_CONTROLS_BUT_NEWLINE: Final = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_NAMED: Final = {"\n": "\\n", "\r": "\\r"}
#: A colour or text attribute (SGR): `ESC [ params m`, nothing else.
_SGR: Final = re.compile(r"\x1b\[[0-9;:]{0,64}m")


def _escaped(match: re.Match[str]) -> str:
    char = match[0]
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape(text: str, *, newlines: bool = False) -> str:
    """`text` with every control character shown as an escape (`\\x1b`, `\\r`).

    Args:
        text: service-supplied text.
        newlines: keep `\\n` as it is (for multi-line text such as a
            traceback); otherwise it is escaped too, and the result is one line.
    """
    pattern = _CONTROLS_BUT_NEWLINE if newlines else _CONTROLS
    return pattern.sub(_escaped, text)


def output_line(text: str) -> str:
    """A line a service wrote, escaped: one line, whatever it holds.

    A final carriage return (a CRLF line ending) is dropped; any other is shown.
    """
    return escape(text.removesuffix("\r"))


def coloured_line(text: str) -> Text:
    """A line a service wrote, for the live display: its colours kept, all else escaped.

    SGR sequences become the colours and attributes of the text, which rich
    renders itself (and ends with the line); every other control character
    is escaped as `output_line` does.
    """
    text = text.removesuffix("\r")
    parts: list[str] = []
    end = 0
    for match in _SGR.finditer(text):
        parts.append(escape(text[end : match.start()]))
        parts.append(match[0])
        end = match.end()
    parts.append(escape(text[end:]))
    return Text.from_ansi("".join(parts))


# -- streams that never block -----------------------------------------------------

#: What may wait in an outlet before lines are dropped, in characters.
DEFAULT_LIMIT: Final = 1 << 20
#: Bounds on the last flush, when the program ends (see `Outlet.close`).
_CLOSE_STALL: Final = 2.0  # seconds without progress
_CLOSE_TOTAL: Final = 10.0  # seconds in all
_SLICE: Final = 16384  # characters per write


class Outlet(io.TextIOBase):
    """A text stream over `stream` (stdout or stderr) whose `write` never blocks.

    What is written is queued; a daemon thread writes it to `stream`'s file
    descriptor (or to `stream` itself if it has none). When more than
    `limit` characters wait, each write is dropped whole, its lines
    counted, until the thread has written everything queued; then the
    line `"startable: N lines of output dropped (stdout was not read fast
    enough)"` marks the gap. A reader that has gone away (`EPIPE`) makes the
    rest be discarded.
    """

    def __init__(self, stream: TextIO, *, limit: int = DEFAULT_LIMIT, name: str = "") -> None:
        super().__init__()
        self._stream = stream
        self._name = name or getattr(stream, "name", "output")
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation among them
            self._fd = None
        self._encoding = getattr(stream, "encoding", None) or "utf-8"
        self._limit = limit
        self._condition = threading.Condition()
        self._queue: deque[str] = deque()
        self._pending = 0  # characters queued or being written
        self._dropped = 0  # lines dropped since the last notice
        self._dropping = False
        self._closing = False
        self._broken = False
        self._thread = threading.Thread(
            target=self._run, name=f"startable {self._name} writer", daemon=True
        )
        self._thread.start()

    # -- the TextIO face -------------------------------------------------------

    @property
    def encoding(self) -> str:  # type: ignore[override]  # read-only in io.TextIOBase
        return self._encoding

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        if self._fd is None:
            raise io.UnsupportedOperation("fileno")
        return self._fd

    def flush(self) -> None:
        """Returns at once: the thread writes as soon as it can."""

    def write(self, text: str) -> int:
        """Queue `text`, or drop it if too much already waits; never blocks."""
        with self._condition:
            if self._broken or (self._closing and not self._thread.is_alive()):
                return len(text)
            # One write alone may be longer than the limit: it waits alone.
            if self._dropping or (self._pending and self._pending + len(text) > self._limit):
                self._dropping = True
                self._dropped += max(text.count("\n"), 1)
            else:
                self._queue.append(text)
                self._pending += len(text)
                self._condition.notify_all()
        return len(text)

    @property
    def dropped(self) -> int:
        """Lines dropped and not yet reported."""
        return self._dropped

    def close(self) -> None:
        """Write what is queued, then stop the thread; bounded when the reader is stuck.

        It waits while the queue drains, but no more than two seconds
        without progress and ten in all: what is still queued then is lost.
        Writes after this are discarded.
        """
        with self._condition:
            if self._closing:
                return
            self._closing = True
            self._condition.notify_all()
            began = last_progress = time.monotonic()
            seen = self._pending
            while self._thread.is_alive() and not self._broken:
                self._condition.wait(0.1)
                now = time.monotonic()
                if self._pending != seen:
                    seen, last_progress = self._pending, now
                if now - last_progress > _CLOSE_STALL or now - began > _CLOSE_TOTAL:
                    break
        super().close()

    # -- the writing thread ----------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._closing:
                    self._condition.wait()
                if not self._queue and not self._report_drops():  # nothing more will come
                    return
                text = "".join(self._queue)
                self._queue.clear()
            try:
                for start in range(0, len(text), _SLICE):
                    piece = text[start : start + _SLICE]
                    self._write(piece)
                    with self._condition:
                        self._pending -= len(piece)
                        self._condition.notify_all()
            except OSError:  # EPIPE: nobody reads any more; anything else: same outcome
                with self._condition:
                    self._broken = True
                    self._queue.clear()
                    self._pending = 0
                    self._condition.notify_all()
                return
            with self._condition:
                if not self._pending:
                    self._report_drops()

    def _report_drops(self) -> bool:
        """Queue the line that says how many lines were dropped, if any were (lock held)."""
        self._dropping = False
        if not self._dropped:
            return False
        lines = "line" if self._dropped == 1 else "lines"
        notice = (
            f"startable: {self._dropped} {lines} of output dropped "
            f"({self._name} was not read fast enough)\n"
        )
        self._dropped = 0
        self._queue.append(notice)
        self._pending += len(notice)
        return True

    def _write(self, text: str) -> None:
        if self._fd is None:
            self._stream.write(text)
            self._stream.flush()
            return
        data = memoryview(text.encode(self._encoding, "backslashreplace"))
        while data:
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:  # someone made it non-blocking: wait for room
                select.select([], [self._fd], [], 1.0)
                continue
            data = data[written:]


@contextmanager
def nonblocking_std_streams() -> Iterator[tuple[Outlet, Outlet]]:
    """`sys.stdout` and `sys.stderr` replaced by `Outlet`s for the block; yields them.

    Everything written to them meanwhile, by print, logging or rich, goes
    through the outlets. On exit they are closed (see `Outlet.close`) and
    the streams put back.
    """
    saved = sys.stdout, sys.stderr
    for stream in saved:
        stream.flush()  # nothing of ours may wait in their buffers
    out = Outlet(sys.stdout, name="stdout")
    err = Outlet(sys.stderr, name="stderr")
    sys.stdout, sys.stderr = cast(TextIO, out), cast(TextIO, err)
    try:
        yield out, err
    finally:
        sys.stdout, sys.stderr = saved
        out.close()
        err.close()
