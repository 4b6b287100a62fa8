"""``startable up``: the table it renders, and the command in a real child process."""

from __future__ import annotations

import fcntl
import importlib.util
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import psutil
import pytest
from anyio.streams.text import TextReceiveStream
from rich.console import Console

import startable
from startable import State
from startable.cli._humanise import format_bytes, format_duration, in_order
from startable.cli._reporters import LiveReporter
from startable.cli._table import render
from startable.cluster import (
    OutputLine,
    Permissions,
    RestartPolicy,
    ServicesManager,
    ServiceSpec,
)

from ..up_services import FORGERIES
from ..waiting import until

#: Every test here spawns child processes (`-m "not processes"` skips them).
pytestmark = [pytest.mark.anyio, pytest.mark.processes]
ROOT = Path(__file__).resolve().parents[2]
# The command runs its own event loop; the test's backend only reads pipes.
trio_only = pytest.mark.parametrize("anyio_backend", ["trio"])


# -- humanising and rendering, in this process ---------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (int(23.4 * 2**20), "23.4 MiB")],
)
def test_format_bytes(size: int, text: str) -> None:
    assert format_bytes(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0s"), (59.9, "59s"), (65, "1m 05s"), (3 * 3600 + 120, "3h 02m"), (90000, "1d 01h")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


class Quiet:
    @startable.as_raw_start
    async def _start(self) -> None:
        pass

    @startable.as_raw_stop
    async def _stop(self, err: BaseException | None) -> None:
        pass


class CrashesOnce(Quiet):
    """Stops itself with `error` when `crash` is set, in its first cycle only."""

    def __init__(self, error: Exception, crash: anyio.Event, crashes: list[int]) -> None:
        self.error = error
        self.crash = crash
        self.crashes = crashes

    @startable.as_raw_start
    async def _start(self) -> None:
        if not self.crashes:
            self.crashes.append(1)
            startable.of(self).start_soon(self._crash)

    async def _crash(self) -> None:
        await self.crash.wait()
        startable.of(self).stop_nowait(self.error)


def rows(text: str) -> dict[str, str]:
    """The table's rows, by the service name that begins them."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        words = line.split()
        if words:
            found.setdefault(words[0], line)
    return found


async def test_the_table_shows_state_restarts_and_last_error() -> None:
    crash = anyio.Event()
    flaky: list[int] = []
    gone: list[int] = []
    long_error = RuntimeError("the disk is full " + "x" * 100 + "\nand a second line")
    manager = ServicesManager(
        [
            ServiceSpec(name="db", factory=Quiet),
            ServiceSpec(
                name="flaky",
                factory=lambda: CrashesOnce(
                    ConnectionError("lost the upstream\nsecond"), crash, flaky
                ),
                depends_on=["db"],
                restart=RestartPolicy(backoff=0),
            ),
            ServiceSpec(
                name="gone",
                factory=lambda: CrashesOnce(long_error, crash, gone),
                restart=RestartPolicy(mode="never"),
            ),
        ],
        name="demo",
    )
    with anyio.fail_after(30):
        async with startable.running(manager):
            flaky_node, gone_node = manager["flaky"], manager["gone"]
            crash.set()  # now that the manager is STARTED and supervises them
            await until(
                manager,
                lambda: (
                    flaky_node.restarts == 1 and startable.of(flaky_node).state is State.STARTED
                ),
            )
            await until(manager, lambda: startable.of(gone_node).state is State.STOPPED)
            await anyio.wait_all_tasks_blocked()  # the supervisor has taken the failure in
            console = Console(record=True, width=120)
            console.print(render(manager.nodes.values(), title="demo", phase="running"))
            narrow = Console(record=True, width=80)
            in_file_order = in_order(manager.nodes.values(), ["gone", "flaky", "db"])
            narrow.print(render(in_file_order, title="demo", phase="running"))
    check_narrow_table(narrow.export_text())
    text = console.export_text()
    header, *_ = (line for line in text.splitlines() if "name" in line)
    assert header.split() == [
        "name",
        "state",
        "pid",
        "CPU",
        "memory",
        "restarts",
        "uptime",
        "last",
        "error",
    ]
    assert "demo running" in text
    assert "2/3 started" in text
    table = rows(text)
    assert table["db"].split()[:6] == ["db", "STARTED", "-", "-", "-", "0"]
    assert table["flaky"].split()[:6] == ["flaky", "STARTED", "-", "-", "-", "1"]
    for name in ("db", "flaky"):  # uptime: whole seconds, however loaded the machine
        assert re.fullmatch(r"\d+s", table[name].split()[6]), table[name]
    assert "ConnectionError: lost the upstream" in table["flaky"]
    assert "second" not in table["flaky"]
    assert table["gone"].split()[:7] == ["gone", "STOPPED", "-", "-", "-", "0", "-"]
    assert "RuntimeError: the disk is full xxx" in table["gone"]
    assert table["gone"].rstrip().endswith("…")


def check_narrow_table(text: str) -> None:
    """At 80 columns: rows in the order given, the last errors below, each 80 wide."""
    lines = text.splitlines()
    header = next(line for line in lines if "name" in line)
    assert header.split() == ["name", "state", "pid", "CPU", "memory", "restarts", "uptime"]
    names = [line.split()[0] for line in lines[lines.index(header) + 2 :] if line.strip()]
    assert names[:4] == ["gone", "flaky", "db", "last"], text
    errors = lines[lines.index(" last errors") + 1 :]
    assert errors[0].startswith(" gone   RuntimeError: the disk is full xxxx")
    assert len(errors[0]) == 80 and errors[0].endswith("…")
    assert errors[1] == " flaky  ConnectionError: lost the upstream"


async def test_the_table_shows_pid_cpu_and_memory_of_a_process() -> None:
    spec = ServiceSpec(
        name="talker",
        entry="tests.up_services:Talker",
        cwd=str(ROOT),
        container_options={"resources_interval": 0.05},
    )
    manager = ServicesManager([spec], name="demo")
    node = manager["talker"]
    with anyio.fail_after(60):
        async with startable.running(manager):
            assert node.container is not None
            while not node.container.resources:  # noqa: ASYNC110 - sampled in another process
                await anyio.sleep(0.05)
            console = Console(record=True, width=120)
            console.print(render(manager.nodes.values(), title="demo", phase="running"))
            pid = node.pid
    row = rows(console.export_text())["talker"]
    assert re.fullmatch(
        rf"talker STARTED {pid} \d+\.\d% \d+\.\d [KMG]iB 0 \d+s", " ".join(row.split())
    ), row


async def test_a_pool_is_one_row_with_a_row_per_replica_under_it() -> None:
    spec = ServiceSpec(
        name="web",
        entry="tests.up_services:PoolMember",
        cwd=str(ROOT),
        env={"PYTHONPATH": str(ROOT)},
        replicas=2,
        restart=RestartPolicy(backoff=30, max_backoff=30),  # the killed one stays down
        container_options={"resources_interval": 0.05},
    )
    manager = ServicesManager([spec], name="demo")
    node = manager["web"]
    with anyio.fail_after(60):
        async with startable.running(manager):
            first, second = node.replicas
            while not second.container.resources:  # noqa: ASYNC110 - sampled in another process
                await anyio.sleep(0.05)
            os.kill(first.pid, signal.SIGKILL)  # type: ignore[arg-type]
            await startable.of(first).wait_state(State.STOPPED)
            console = Console(record=True, width=120)
            console.print(render(manager.nodes.values(), title="demo", phase="running"))
            pid = second.pid
    lines = [" ".join(line.split()) for line in console.export_text().splitlines()]
    at = next(i for i, line in enumerate(lines) if line.startswith("web "))
    pool, zero, one = lines[at : at + 3]
    assert re.fullmatch(r"web STARTED 1/2 - - - 0 \d+s", pool), pool
    assert re.fullmatch(r"#0 STOPPED - - - 0 - RemoteExited: .*", zero), zero
    assert re.fullmatch(rf"#1 STARTED {pid} \d+\.\d% \d+\.\d [KMG]iB 0 \d+s", one), one


def test_live_output_lines_are_prefixed_and_keep_their_colours() -> None:
    console = Console(record=True, width=80, force_terminal=True)
    reporter = LiveReporter(5, {"db": "cyan"}, console)
    reporter.output("db", OutputLine("stdout", "plain words", 0.0))
    reporter.output("db", OutputLine("stderr", "\x1b[31mred\x1b[0m words", 0.0))
    assert console.export_text().splitlines() == ["db    │ plain words", "db    ┃ red words"]


# -- the command -------------------------------------------------------------------


def service(
    name: str, cls: str, *depends_on: str, extra: str = "", env: dict[str, str] | None = None
) -> str:
    """A `[services.NAME]` table running `tests.up_services:CLS`."""
    env = {"PYTHONPATH": str(ROOT), "TALKER": name, **(env or {})}
    env_table = ", ".join(f"{key} = {json.dumps(value)}" for key, value in env.items())
    return (
        f"[services.{name}]\n"
        f'entry = "tests.up_services:{cls}"\n'
        f"depends_on = {json.dumps(list(depends_on))}\n"
        f"env = {{ {env_table} }}\n"
        f"{extra}\n"
    )


def cluster_file(
    directory: Path, *services: str, stop_timeout: float = 20, cluster: str = ""
) -> Path:
    """demo.toml in `directory`, with `services` and `cluster` (more [cluster] keys)."""
    path = directory / "demo.toml"
    head = f'[cluster]\nname = "demo"\nstop_timeout = {stop_timeout}\n{cluster}\n'
    path.write_text(head + "".join(services))
    return path


class Up:
    """A running ``startable up --no-live``, and what it printed so far."""

    def __init__(self, process: anyio.abc.Process) -> None:
        assert process.stdout is not None
        assert process.stderr is not None
        self.process = process
        self._stdout = TextReceiveStream(process.stdout)
        self._stderr = TextReceiveStream(process.stderr)
        self.out = ""
        self.err = ""

    async def wait_for(self, marker: str) -> None:
        while marker not in self.out:
            try:
                self.out += await self._stdout.receive()
            except anyio.EndOfStream:
                raise AssertionError(
                    f"{marker!r} never came\nstdout:\n{self.out}\nstderr:\n{self.err}"
                ) from None

    async def finish(self) -> int:
        async def read_err() -> None:
            async for chunk in self._stderr:
                self.err += chunk

        async with anyio.create_task_group() as readers:
            readers.start_soon(read_err)
            async for chunk in self._stdout:
                self.out += chunk
        return await self.process.wait()

    def pid_of(self, service: str) -> int:
        match = re.search(rf"^{service}: STARTED \(pid (\d+)\)$", self.out, re.MULTILINE)
        assert match is not None, self.out
        return int(match[1])


@asynccontextmanager
async def up(path: Path, *options: str) -> AsyncIterator[Up]:
    process = await anyio.open_process(
        [sys.executable, "-m", "startable", "up", str(path), "--no-live", *options],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    try:
        yield Up(process)
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.move_on_after(10, shield=True):
                await process.wait()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@trio_only
async def test_up_runs_in_order_multiplexes_output_and_stops_in_reverse_on_sigint(
    tmp_path: Path,
) -> None:
    path = cluster_file(tmp_path, service("db", "Talker"), service("web", "Talker", "db"))
    with anyio.fail_after(60):
        async with up(path) as cli:
            for marker in ("db: STARTED", "web: STARTED", "db  | hello from db"):
                await cli.wait_for(marker)
            cli.process.send_signal(signal.SIGINT)
            code = await cli.finish()
    assert code == 0, (cli.out, cli.err)
    lines = cli.out.splitlines()
    assert lines.index("db: STARTING") < lines.index("web: STARTING")
    assert lines.index("web: STOPPED") < lines.index("db: STOPPED")
    for line in (
        "db  | hello from db",
        "db  | a line on stderr",
        "web | hello from web",
        "web | goodbye",
        "db  | goodbye",
        "demo: stopped",
    ):
        assert line in lines, cli.out
    assert cli.pid_of("db") != cli.pid_of("web")
    assert "SIGINT received: stopping demo" in cli.out


@trio_only
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (service("web", "Talker", "db"), "demo.toml: services.web.depends_on: "),
        ('[services.web]\nentry = "no colon"\n', "demo.toml: services.web.entry: "),
        (
            '[services.web]\nentry = "nowhere:App"\n',
            "demo.toml: services.web.entry: cannot find the module 'nowhere'",
        ),
        (service("web", "Talker", extra='cwd = "www"'), "demo.toml: services.web.cwd: "),
        (
            service("web", "Talker", extra='python = "bin/python"'),
            "demo.toml: services.web.python: ",
        ),
        (
            service("web", "Talker", extra="[services.web.permissions]\nwrite = ['data']"),
            "demo.toml: services.web.permissions.write: ",
        ),
        (
            service(
                "web", "Talker", extra="[services.web.permissions]\nmemory = 18446744073709551616"
            ),
            "demo.toml: services.web.permissions.memory: must be less than 2**63",
        ),
        (
            service("web", "Talker", extra="env = { A = " + "[" * 5000 + "]" * 5000 + " }"),
            "demo.toml: invalid TOML: arrays or tables nested too deeply",
        ),
    ],
    ids=[
        "unknown dependency",
        "bad entry",
        "missing module",
        "missing cwd",
        "missing python",
        "missing write directory",
        "memory beyond setrlimit",
        "deep nesting",
    ],
)
async def test_a_bad_file_exits_2_naming_the_key(tmp_path: Path, body: str, message: str) -> None:
    path = cluster_file(tmp_path, body)
    with anyio.fail_after(60):
        async with up(path) as cli:
            code = await cli.finish()
    assert code == 2
    assert cli.err.startswith("startable: error: ")
    assert message in cli.err
    assert cli.out == ""


@trio_only
async def test_a_failed_start_exits_1_with_the_remote_error(tmp_path: Path) -> None:
    path = cluster_file(tmp_path, service("db", "Talker"), service("api", "FailsToStart", "db"))
    with anyio.fail_after(60):
        async with up(path) as cli:
            code = await cli.finish()
    assert code == 1, (cli.out, cli.err)
    assert "demo failed to start" in cli.err
    assert "while starting service 'api'" in cli.err
    assert "ConnectionRefusedError: the database said no" in cli.err
    assert "Remote traceback" in cli.err
    # What had started is stopped, and its raw stop is told why.
    assert "db: STOPPED (ConnectionRefusedError: the database said no)" in cli.out.splitlines()


@trio_only
async def test_a_service_that_fails_too_often_stops_everything_and_exits_1(
    tmp_path: Path,
) -> None:
    restart = "restart = { intensity = 1, backoff = 0 }"
    path = cluster_file(
        tmp_path, service("db", "Talker"), service("worker", "Crashes", "db", extra=restart)
    )
    with anyio.fail_after(60):
        async with up(path, "--backend", "asyncio") as cli:
            code = await cli.finish()
    assert code == 1, (cli.out, cli.err)
    assert "worker: restarting in 0s" in cli.out
    assert "worker: failed too often" in cli.out
    # Every service's raw stop gets the manager's reason.
    assert any(
        line.startswith("db: STOPPED (EscalationError: worker failed 2")
        for line in cli.out.splitlines()
    )
    assert "demo stopped on its own: EscalationError: worker failed 2 times" in cli.err


@trio_only
async def test_a_stop_longer_than_stop_timeout_exits_1(tmp_path: Path) -> None:
    hangs = service("stuck", "HangsOnStop", extra="timeouts = { close = 30 }")
    path = cluster_file(tmp_path, hangs, stop_timeout=0.5)
    with anyio.fail_after(60):
        async with up(path) as cli:
            await cli.wait_for("stuck: STARTED")
            cli.process.send_signal(signal.SIGTERM)
            code = await cli.finish()
        pid = cli.pid_of("stuck")
        while not gone(pid):  # noqa: ASYNC110 - killed on the way out, not left behind
            await anyio.sleep(0.05)
    assert code == 1, (cli.out, cli.err)
    assert "demo took more than 0.5s to stop" in cli.err


@trio_only
async def test_a_second_sigint_forces_the_stop(tmp_path: Path) -> None:
    path = cluster_file(
        tmp_path, service("stuck", "HangsOnStop", extra="timeouts = { close = 30 }")
    )
    with anyio.fail_after(60):
        async with up(path) as cli:
            await cli.wait_for("stuck: STARTED")
            cli.process.send_signal(signal.SIGINT)
            await cli.wait_for("stopping, slowly")
            cli.process.send_signal(signal.SIGINT)
            code = await cli.finish()
    assert code == 130, (cli.out, cli.err)
    assert "forcing the stop" in cli.err


# -- the README's main job --------------------------------------------------------------

SHOP = ROOT / "examples" / "shop" / "shop.toml"


def test_the_readme_main_job_is_startable_up_on_the_shop() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("```console", 1)[1].split("```")[0]
    assert quick_start.strip().splitlines() == [
        "uv run startable up examples/shop/shop.toml",
        "uv run pytest",
    ]


async def test_the_shop_example_runs_serves_and_stops_in_reverse(anyio_backend: str) -> None:
    with anyio.fail_after(120):  # bounds against hangs, not speed limits
        async with up(SHOP, "--backend", anyio_backend) as cli:
            await cli.wait_for("shop: 4 services STARTED")
            await cli.wait_for("stored, read back (miss, then hit)")  # worker -> api -> cache/kv
            cli.process.send_signal(signal.SIGINT)
            code = await cli.finish()
    assert code == 0, (cli.out, cli.err)
    lines = cli.out.splitlines()
    order = ["worker", "api", "cache", "kv"]

    def stopped_at(name: str) -> int:
        # The worker crashes on purpose after its first order; on a loaded machine
        # that can come before the SIGINT, and its line then carries the crash.
        found = [
            i for i, line in enumerate(lines) if re.fullmatch(rf"{name}: STOPPED( \(.*\))?", line)
        ]
        assert found, (name, cli.out[-3000:])
        return found[-1]

    stopped = [stopped_at(name) for name in order]
    assert stopped == sorted(stopped), cli.out
    assert "kv     | kv: ready" in lines
    assert any(line.startswith("kv     | kv: closing with ") for line in lines), cli.out


async def drive(script: Path) -> None:
    """Run the `main()` of an example's drive script, in this process."""
    spec = importlib.util.spec_from_file_location(f"drive_{script.parent.name}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    await module.main()


async def test_the_shop_can_be_driven_from_python(
    anyio_backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with anyio.fail_after(120):
        await drive(SHOP.with_name("drive.py"))
    out = capsys.readouterr().out
    assert "read: {'value': 'hello', 'hit': False}" in out
    assert "again: {'value': 'hello', 'hit': True}" in out
    assert "refused before sending: cannot send a request to api.write" in out
    assert "stopped: STOPPED" in out


async def test_the_pool_example_reloads_and_scales_without_a_failed_request(
    anyio_backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with anyio.fail_after(120):
        await drive(ROOT / "examples" / "pool" / "drive.py")
    out = capsys.readouterr().out
    assert "one answer: hello from the pool" in out
    assert "replicas answering: [0, 1, 2, 3]" in out
    assert "reload: every process new: True; failed requests: 0" in out
    assert "served during the reload: some" in out
    assert "after scale to 2: 2 replicas" in out
    assert "stopped: STOPPED" in out


@trio_only
async def test_a_service_created_at_run_time_shows_its_output_under_its_own_name(
    tmp_path: Path,
) -> None:
    parent = service("parent", "Parent", extra="may_create_services = true")
    path = cluster_file(tmp_path, parent)
    with anyio.fail_after(60):
        async with up(path) as cli:
            await cli.wait_for("kid: STARTED")
            await cli.wait_for("kid    | hello from kid")
            cli.process.send_signal(signal.SIGINT)
            code = await cli.finish()
    assert code == 0, (cli.out, cli.err)
    assert "parent | hello from kid" not in cli.out
    lines = cli.out.splitlines()
    assert lines.index("kid: STOPPED") < lines.index("parent: STOPPED")


# -- what a service writes cannot take over the terminal ------------------------------


@trio_only
async def test_plain_output_shows_escape_sequences_instead_of_passing_them_on(
    tmp_path: Path,
) -> None:
    path = cluster_file(tmp_path, service("forger", "Forger"), service("liar", "Liar", "forger"))
    with anyio.fail_after(60):
        async with up(path) as cli:
            code = await cli.finish()
    assert code == 1, (cli.out, cli.err)
    for stream in (cli.out, cli.err):
        assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]", stream), repr(stream)
    lines = cli.out.splitlines()
    for line in (
        r"forger | \x1b]0;pwned\x07retitled",
        r"forger | \x1b[2J\x1b[Hcleared",
        r"forger | ok\rdemo: stopped",
        r"forger | \x9b2Jc1",
        r"forger | \x1bP1$qm\x1b\dcs",
        r"forger | abc\u202edetacilpmoc",
        r"forger | \x1b[31mred\x1b[0m",
        "forger | kv: STOPPED",
        "forger | forged",
    ):
        assert line in lines, cli.out
    # The error's text is shown escaped wherever it goes: the event line, the report.
    assert r"liar: STOPPING (ConnectionError: \x1b]0;pwned\x07no\x1b[2J)" in lines
    report = cli.err.splitlines()
    assert report[0] == "demo failed to start:"
    assert r"  ConnectionError: \x1b]0;pwned\x07no\x1b[2J" in report
    assert "  kv: STOPPED" in report  # the message's second line, indented
    assert all(line.startswith("  ") for line in report[1:] if line), cli.err
    assert not any(line.startswith("kv:") for line in lines + report)


def test_live_output_escapes_all_but_colours() -> None:
    raw = io.StringIO()
    console = Console(file=raw, width=80, force_terminal=True, color_system="standard")
    reporter = LiveReporter(6, {"forger": "cyan"}, console)
    for text in FORGERIES:
        reporter.output("forger", OutputLine("stdout", text, 0.0))
    reporter.say("demo failed to start: \x1b]0;pwned\x07", error=False)
    written = raw.getvalue()
    assert "\x1b]" not in written
    assert "\x1b[2J" not in written
    assert "\r" not in written
    assert "\x9b" not in written
    assert "\u202e" not in written
    assert "\x1b[31mred" in written  # the service's colour, as rich writes it
    plain = re.sub(r"\x1b\[[0-9;]*m", "", written).splitlines()
    assert plain == [
        r"forger │ \x1b]0;pwned\x07retitled",
        r"forger │ \x1b[2J\x1b[Hcleared",
        r"forger │ ok\rdemo: stopped",
        r"forger │ \x9b2Jc1",
        r"forger │ \x1bP1$qm\x1b\dcs",
        r"forger │ abc\u202edetacilpmoc",
        "forger │ red",
        "forger │ kv: STOPPED",
        r"demo failed to start: \x1b]0;pwned\x07",
    ]


def test_a_long_live_line_wraps_under_its_text_not_under_the_prefix() -> None:
    console = Console(record=True, width=40, force_terminal=True)
    reporter = LiveReporter(6, {}, console)
    words = " ".join(f"word{i}" for i in range(12)) + " kv: STOPPED"
    reporter.output("web", OutputLine("stderr", words, 0.0))
    lines = console.export_text().splitlines()
    assert len(lines) > 1
    assert lines[0].startswith("web    ┃ word0")
    for line in lines[1:]:
        assert line.startswith(" " * 9) and line[9] != " ", lines
    assert " ".join(line[9:].strip() for line in lines) == words


# -- a reader that stops reading --------------------------------------------------------

CHATTY_LINES = 30_000  # about 3 MB: more than the pipe and the outlet hold


def chatty_file(directory: Path) -> tuple[Path, Path]:
    done = directory / "done"
    env = {"CHATTY_LINES": str(CHATTY_LINES), "CHATTY_DONE": str(done)}
    return cluster_file(directory, service("chatty", "Chatty", env=env)), done


@trio_only
async def test_a_stalled_stdout_leaves_supervision_and_signals_working(tmp_path: Path) -> None:
    path, done = chatty_file(tmp_path)
    with anyio.fail_after(60):
        async with up(path) as cli:
            await cli.wait_for("chatty: STARTED")
            # From here on nobody reads stdout: the pipe fills and stays full.
            while not done.exists():  # noqa: ASYNC110 - written by another process
                await anyio.sleep(0.05)
            cli.process.send_signal(signal.SIGINT)
            code = await cli.process.wait()
    assert code == 0


@trio_only
async def test_lines_dropped_while_stdout_stalled_are_counted(tmp_path: Path) -> None:
    path, done = chatty_file(tmp_path)
    with anyio.fail_after(60):
        async with up(path) as cli:
            await cli.wait_for("chatty: STARTED")
            while not done.exists():  # noqa: ASYNC110 - written by another process
                await anyio.sleep(0.05)
            await cli.wait_for("lines of output dropped")  # reading again
            cli.process.send_signal(signal.SIGINT)
            code = await cli.finish()
    assert code == 0, cli.err
    notices = re.findall(
        r"^startable: (\d+) lines of output dropped \(stdout was not read fast enough\)$",
        cli.out,
        re.MULTILINE,
    )
    shown = re.findall(r"^chatty \| \d{8} x{91}$", cli.out, re.MULTILINE)
    assert len(shown) + sum(map(int, notices)) == CHATTY_LINES
    assert "demo: stopped" in cli.out.splitlines()


# -- on a terminal ----------------------------------------------------------------------


@trio_only
async def test_on_a_terminal_the_table_keeps_the_file_order_and_escapes_service_text(
    tmp_path: Path,
) -> None:
    path = cluster_file(
        tmp_path,
        service("forger", "Forger"),
        service("web", "Talker", "db"),  # before what it depends on
        service("db", "Talker"),
    )
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 80, 0, 0))
    os.set_blocking(controller, False)
    process = await anyio.open_process(
        [sys.executable, "-m", "startable", "up", str(path)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    shown = b""

    async def read_until(marker: bytes) -> None:
        nonlocal shown
        while marker not in shown:
            await anyio.wait_readable(controller)
            try:
                chunk = os.read(controller, 65536)
            except BlockingIOError:
                continue
            except OSError:  # EIO: the terminal's last writer has gone
                raise EOFError(shown.decode(errors="replace")) from None
            if not chunk:
                raise EOFError(shown.decode(errors="replace"))
            shown += chunk

    try:
        with anyio.fail_after(60):
            await read_until(b"3/3 started")
            await read_until(b"hello from db")
            process.send_signal(signal.SIGINT)
            with pytest.raises(EOFError):
                await read_until(b"never printed")
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
        os.close(controller)
    text = shown.decode()
    assert code == 0, text
    assert "\x1b]" not in text  # no OSC: the window keeps its title
    assert "\x1b[2J" not in text and "\x9b" not in text and "\u202e" not in text
    assert r"\x1b]0;pwned\x07retitled" in text
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    rows = re.findall(
        r"^ ?(forger|web|db) +(?:READY|STARTING|STARTED|STOPPING|STOPPED)\b",
        plain.replace("\r", "\n"),
        re.MULTILINE,
    )
    assert rows and rows == ["forger", "web", "db"] * (len(rows) // 3), rows


# -- entries that name a file ---------------------------------------------------------

TALKER_FILE = """
import startable


class Talker:
    @startable.as_raw_start
    async def _start(self) -> None:
        print(f"hello from {__name__}", flush=True)
"""


@trio_only
async def test_an_entry_can_name_a_file(tmp_path: Path) -> None:
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "json.py").write_text(TALKER_FILE)  # named like another module
    (tmp_path / "svc" / "talk.py").write_text(TALKER_FILE)
    limited = "[services.other.permissions]"  # Landlock: the file must stay readable
    path = cluster_file(
        tmp_path,
        '[services.talk]\nentry = "svc/talk.py:Talker"\n',
        f'[services.other]\nentry = "svc/json.py:Talker"\n{limited}\n',
    )
    with anyio.fail_after(60):
        async with up(path) as cli:
            await cli.wait_for("other: STARTED")
            await cli.wait_for("talk: STARTED")
            cli.process.send_signal(signal.SIGINT)
            code = await cli.finish()
    assert code == 0, (cli.out, cli.err)
    lines = cli.out.splitlines()
    assert "talk  | hello from talk" in lines
    assert "other | hello from __startable_entry__" in lines


async def test_a_service_spec_entry_can_name_a_file_outside_sys_path(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "talk.py").write_text(TALKER_FILE)
    (tmp_path / "run").mkdir()
    spec = ServiceSpec(
        name="talk",
        entry="../lib/talk.py:Talker",  # relative to its cwd
        cwd=str(tmp_path / "run"),
        permissions=Permissions(),  # under Landlock, the file's directory stays readable
    )
    manager = ServicesManager([spec], name="demo")
    said: list[str] = []
    heard = anyio.Event()

    def hear(line: OutputLine) -> None:
        said.append(line.text)
        heard.set()

    node = manager["talk"]
    assert node.container is not None
    node.container.on_output = hear
    with anyio.fail_after(60):
        async with startable.running(manager):
            await heard.wait()
    assert said == ["hello from talk"]


@trio_only
async def test_sighup_reloads_the_pools_and_ttin_ttou_scale_them(tmp_path: Path) -> None:
    path = cluster_file(tmp_path, service("web", "PoolMember", extra="replicas = 2"))
    with anyio.fail_after(90):
        async with up(path) as cli:
            await cli.wait_for("demo: 1 service STARTED")
            first = set(re.findall(r"replica \d of 2 up \(pid (\d+)\)", cli.out))
            assert len(first) == 2, cli.out
            cli.process.send_signal(signal.SIGHUP)
            await cli.wait_for("web: reloaded")
            cli.process.send_signal(signal.SIGTTIN)
            await cli.wait_for("replica 2 of 3 up")
            cli.process.send_signal(signal.SIGTTOU)
            await cli.wait_for("replica 2 down")
            cli.process.send_signal(signal.SIGINT)
            code = await cli.finish()
    assert code == 0, (cli.out, cli.err)
    assert f"pools web: kill -HUP {cli.process.pid} reloads them" in cli.out
    assert re.search(r"^web: STARTED \(2 replicas: pids \d+, \d+\)$", cli.out, re.M), cli.out
    assert "SIGHUP received: reloading web (2 replicas, one by one)" in cli.out
    assert "SIGTTIN received: web from 2 to 3 replicas" in cli.out
    assert "SIGTTOU received: web from 3 to 2 replicas" in cli.out
    ups = re.findall(r"web#(\d) +\| replica (\d) of (\d) up \(pid (\d+)\)", cli.out)
    # two first, two from the reload (new processes, their output shown), one from TTIN
    assert len(ups) == 5 and len({pid for *_, pid in ups}) == 5, cli.out
    assert all(label == index for label, index, *_ in ups), cli.out  # (which replica wrote it)
    for pid in first:
        assert f"down (pid {pid})" in cli.out


DEV_APP = """
import os

import anyio

import startable
from startable.cluster import this_service

VERSION = {version}


class Web:
    @startable.as_raw_start
    async def _start(self) -> None:
        me = this_service()
        print(f"web version {{VERSION}} up: replica {{me.replica}} of {{me.replicas}}", flush=True)
        if VERSION == 0:  # a bug that crashes it once it runs
            startable.of(self).start_soon(self._crash)

    async def _crash(self) -> None:
        await anyio.sleep(0.5)  # (STARTED by then)
        os._exit(1)


class Agent:
    @startable.as_raw_start
    async def _start(self) -> None:
        print(f"agent up (pid {{os.getpid()}})", flush=True)
"""


@trio_only
async def test_dev_mode_runs_one_replica_and_reloads_it_once_for_two_quick_saves(
    tmp_path: Path,
) -> None:
    app = tmp_path / "devapp.py"
    app.write_text(DEV_APP.format(version=1))
    path = tmp_path / "dev.toml"
    path.write_text(
        '[cluster]\nname = "demo"\nreload_delay = 1.0\n'
        '[services.agent]\nentry = "devapp:Agent"\n'
        '[services.web]\nentry = "devapp:Web"\ndepends_on = ["agent"]\nreplicas = 3\n'
    )
    with anyio.fail_after(60):
        async with up(path, "--dev") as cli:
            await cli.wait_for("demo: 2 services STARTED")
            assert f"dev mode: web reloads when a .py file under {tmp_path} changes" in cli.out
            app.write_text(DEV_APP.format(version=2))  # two saves within the delay...
            app.write_text(DEV_APP.format(version=3))
            await cli.wait_for("web: reloaded")  # ...one reload
            await cli.wait_for("web version 3 up")
            cli.process.send_signal(signal.SIGINT)
            code = await cli.finish()
    assert code == 0, (cli.out, cli.err)
    assert re.search(r"^web#0 +\| web version 1 up: replica 0 of 1$", cli.out, re.M)  # one replica
    assert "version 2 up" not in cli.out
    assert cli.out.count("changed: reloading web") == 1
    assert cli.out.count("agent up") == 1  # not a pool: never reloaded


@trio_only
async def test_dev_mode_starts_a_crashed_pool_again_on_the_next_save(tmp_path: Path) -> None:
    app = tmp_path / "devapp.py"
    app.write_text(DEV_APP.format(version=1))
    path = tmp_path / "dev.toml"
    path.write_text(
        '[cluster]\nname = "demo"\nreload_delay = 0.2\n'
        '[services.web]\nentry = "devapp:Web"\nreplicas = 2\n'
    )
    with anyio.fail_after(60):
        async with up(path, "--dev") as cli:
            await cli.wait_for("demo: 1 service STARTED")
            app.write_text(DEV_APP.format(version=0))  # the save brings the bug in...
            await cli.wait_for("web: STOPPED")  # ...and the replica crashes (no refork)
            app.write_text(DEV_APP.format(version=2))  # the fix
            await cli.wait_for("changed: starting web again")
            await cli.wait_for("web version 2 up")
            await cli.wait_for("web: reloaded")
            cli.process.send_signal(signal.SIGINT)
            code = await cli.finish()
    assert code == 0, (cli.out, cli.err)
