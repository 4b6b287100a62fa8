"""``startable up``: the table it renders, and the command in a real child process."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
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
from startable.cli._up import LiveReporter, format_bytes, format_duration, render
from startable.cluster import OutputLine, RestartPolicy, ServicesManager, ServiceSpec

from .waiting import until

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
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


def test_live_output_lines_are_prefixed_and_keep_their_colours() -> None:
    console = Console(record=True, width=80, force_terminal=True)
    reporter = LiveReporter(5, {"db": "cyan"}, console)
    reporter.output("db", OutputLine("stdout", "plain words", 0.0))
    reporter.output("db", OutputLine("stderr", "\x1b[31mred\x1b[0m words", 0.0))
    assert console.export_text().splitlines() == ["db    │ plain words", "db    ┃ red words"]


# -- the command -------------------------------------------------------------------


def service(name: str, cls: str, *depends_on: str, extra: str = "") -> str:
    """A `[services.NAME]` table running `tests.up_services:CLS`."""
    env = {"PYTHONPATH": str(ROOT), "TALKER": name}
    env_table = ", ".join(f"{key} = {json.dumps(value)}" for key, value in env.items())
    return (
        f"[services.{name}]\n"
        f'entry = "tests.up_services:{cls}"\n'
        f"depends_on = {json.dumps(list(depends_on))}\n"
        f"env = {{ {env_table} }}\n"
        f"{extra}\n"
    )


def cluster_file(directory: Path, *services: str, stop_timeout: float = 20) -> Path:
    path = directory / "demo.toml"
    head = f'[cluster]\nname = "demo"\nstop_timeout = {stop_timeout}\n\n'
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
    ],
    ids=["unknown dependency", "bad entry"],
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
    stopped = [lines.index(f"{name}: STOPPED") for name in order]
    assert stopped == sorted(stopped), cli.out
    assert "kv     | kv: ready" in lines
    assert any(line.startswith("kv     | kv: closing with ") for line in lines), cli.out


async def test_the_shop_can_be_driven_from_python(
    anyio_backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("shop_drive", SHOP.with_name("drive.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with anyio.fail_after(120):
        await module.main()
    out = capsys.readouterr().out
    assert "read: {'value': 'hello', 'hit': False}" in out
    assert "again: {'value': 'hello', 'hit': True}" in out
    assert "refused before sending: cannot send a request to api.write" in out
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
