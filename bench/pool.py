"""Benchmarks of worker pools, each against a baseline measured in the same run.

    uv run python bench/pool.py            # full run (about two minutes)
    uv run python bench/pool.py --quick    # a smoke run; figures are not meaningful
    uv run python bench/pool.py --check    # exit 1 if a bar is missed

1. Throughput through a pool's shared port: the HTTP worker of
   examples/pool/app.py (each request on a connection of its own), loaded by
   `wrk` for a few seconds, with 2 replicas against 1. Bar: >= 1.6x. For
   context, gunicorn's sync workers serving the same answer from a WSGI app
   (bench/_wsgi.py), with as many workers, under the same load.
2. Dev reload: a save of the pool's source to its new replica STARTED,
   under `startable up --dev`'s watcher, against reload_delay plus one spawn
   of a replica (a scale from 1 to 2, measured in the same run). Bar: <= 1x.
3. Memory: the RSS of one replica of a pool of 4, against a bare interpreter
   with anyio and trio imported (for context); and the memory a replica
   forked from its zygote (`preload`) does not share with other processes
   (USS), against a cold replica's. Bar: <= 0.5x.

Needs `wrk` on $PATH (Debian: apt install wrk) for the first part, which is
skipped without it. Figures are the best of several rounds, interleaved.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import attrs
import psutil
from _report import Best, Row, arguments, report

import startable
from startable.cli._dev import reload_on_change
from startable.cluster import ServicesManager, ServiceSpec, load_cluster

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "pool"
BARE = [sys.executable, "-c", "import anyio, trio, time; time.sleep(5)"]


class Quiet:
    """A narrator that keeps what it is told (dev mode's reloads say things)."""

    def __init__(self) -> None:
        self.said: list[str] = []

    def enter(self, phase: object) -> None:
        pass

    def say(self, text: str, *, failed: bool = False, error: BaseException | None = None) -> None:
        self.said.append(text if error is None else f"{text}: {error}")


def pool_cluster(replicas: int, directory: Path = EXAMPLE) -> list[ServiceSpec]:
    """The example's agent and web pool, on a free port, with `replicas` workers."""
    specs = load_cluster(directory / "pool.toml").services
    return [
        attrs.evolve(
            spec,
            listen=["127.0.0.1:0"],
            replicas=replicas,
            pool=True,
            container_options={"resources_interval": 0},
        )
        if spec.name == "web"
        else spec
        for spec in specs
    ]


# -- throughput ------------------------------------------------------------------


def wrk(port: int, seconds: int) -> tuple[float, str]:
    """Requests per second `wrk` gets from the port, and what it said of errors."""
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rate is not None, out
    errors = re.search(r"Socket errors:.*|Non-2xx.*", out)
    return float(rate[1]), errors[0] if errors else ""


async def pool_throughput(replicas: int, seconds: int) -> tuple[float, str]:
    manager = ServicesManager(pool_cluster(replicas), name="bench")
    async with startable.running(manager):
        port = manager["web"].listeners[0].socket.getsockname()[1]
        await anyio.to_thread.run_sync(wrk, port, 1)  # warm up
        return await anyio.to_thread.run_sync(wrk, port, seconds)


def gunicorn_throughput(workers: int, seconds: int) -> tuple[float, str]:
    with socket_port() as port:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                str(workers),
                "--worker-class",
                "sync",
                "--bind",
                f"127.0.0.1:{port}",
                "--log-level",
                "warning",
                "--chdir",
                str(ROOT / "bench"),
                "_wsgi:app",
            ]
        )
        try:
            deadline = time.monotonic() + 30
            while not _accepts(port):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("gunicorn did not start")
                time.sleep(0.05)
            time.sleep(0.5)  # every worker booted
            wrk(port, 1)  # warm up
            return wrk(port, seconds)
        finally:
            server.terminate()
            server.wait(10)


class socket_port:
    """A free TCP port on 127.0.0.1 (closed again: the server binds it)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        pass


def _accepts(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# -- dev reload --------------------------------------------------------------------


async def dev_reload(delay: float) -> tuple[float, float]:
    """Seconds from a save to the new replica STARTED, and one spawn (scale 1 -> 2)."""
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        for name in ("app.py", "pool.toml"):
            shutil.copy(EXAMPLE / name, directory / name)
        manager = ServicesManager(pool_cluster(1, directory), name="bench")
        narrator = Quiet()
        stop = anyio.Event()
        async with startable.running(manager), anyio.create_task_group() as group:
            web = manager["web"]
            group.start_soon(
                reload_on_change, manager, narrator, {"web": str(directory)}, delay, stop
            )
            await anyio.sleep(0.5)  # the watcher is watching
            before = web.replicas[0]
            app = directory / "app.py"
            began = time.perf_counter()
            app.write_text(app.read_text() + "\n# saved\n")
            while web.replicas[0] is before or startable.of(web.replicas[0]).state is not (  # noqa: ASYNC110 - a poll 2 ms apart is the clock here
                startable.State.STARTED
            ):
                await anyio.sleep(0.002)
            reload = time.perf_counter() - began
            began = time.perf_counter()
            await manager.scale("web", 2)
            spawn = time.perf_counter() - began
            stop.set()
            group.cancel_scope.cancel()
        return reload, spawn


# -- memory ------------------------------------------------------------------------


async def replica_memory(preload: bool) -> tuple[int, int]:
    """The RSS and the USS (memory no other process shares) of the lightest
    replica of a pool of 4, cold or forked from its zygote."""
    specs = [
        attrs.evolve(spec, preload=preload) if spec.name == "web" else spec
        for spec in pool_cluster(4)
    ]
    manager = ServicesManager(specs, name="bench")
    async with startable.running(manager):
        await anyio.sleep(0.5)
        pids = [c.pid for c in manager["web"].containers if c.pid is not None]
        found = [psutil.Process(pid).memory_full_info() for pid in pids]
        return min(m.rss for m in found), min(m.uss for m in found)


def bare_rss() -> int:
    process = subprocess.Popen(BARE)
    try:
        time.sleep(1.0)
        return psutil.Process(process.pid).memory_info().rss
    finally:
        process.kill()
        process.wait()


def main() -> int:
    args = arguments(__doc__).parse_args()
    rounds = 1 if args.quick else 3
    seconds = 1 if args.quick else 5
    delay = 0.5
    have_wrk = shutil.which("wrk") is not None
    best = Best()
    errors: dict[str, str] = {}
    for _ in range(rounds):
        if have_wrk:
            for replicas in (1, 2):
                rate, said = anyio.run(pool_throughput, replicas, seconds, backend="trio")
                best.keep(f"pool{replicas}", rate, max)
                errors[f"pool{replicas}"] = said
                rate, said = gunicorn_throughput(replicas, seconds)
                best.keep(f"gunicorn{replicas}", rate, max)
                errors[f"gunicorn{replicas}"] = said
        reload, spawn = anyio.run(dev_reload, delay, backend="trio")
        best.keep("reload", reload)
        best.keep("spawn", spawn)
        rss, uss = anyio.run(replica_memory, False, backend="trio")
        best.keep("rss", rss)
        best.keep("uss", uss)
        best.keep("forked uss", anyio.run(replica_memory, True, backend="trio")[1])
        best.keep("bare_rss", bare_rss())

    rows: list[Row] = []
    if have_wrk:
        one, two = best["pool1"], best["pool2"]
        rows.append(
            (
                "shared port, 2 replicas vs 1",
                f"{two:,.0f} vs {one:,.0f} req/s {errors['pool2']}".strip(),
                f"{two / one:.2f}x",
                two / one >= 1.6,
            )
        )
        # On a 2-core machine the load generator takes a core: how far a second
        # worker can scale there, shown by gunicorn under the same load.
        g1, g2 = best["gunicorn1"], best["gunicorn2"]
        rows.append(
            (
                "  (for context) gunicorn, 2 workers vs 1",
                f"{g2:,.0f} vs {g1:,.0f} req/s, {os.cpu_count()} cores with wrk on them",
                f"{g2 / g1:.2f}x",
                None,
            )
        )
        for replicas in (1, 2):
            ours, theirs = best[f"pool{replicas}"], best[f"gunicorn{replicas}"]
            rows.append(
                (
                    f"pool of {replicas} vs gunicorn -w {replicas}",
                    f"{ours:,.0f} vs {theirs:,.0f} req/s {errors[f'gunicorn{replicas}']}".strip(),
                    f"{ours / theirs:.2f}x",
                    None,
                )
            )
    else:
        print("(wrk is not on $PATH: the throughput figures are skipped)")
    floor = delay + best["spawn"]
    rows.append(
        (
            "dev reload: save to new replica STARTED",
            f"{best['reload'] * 1e3:.0f} ms vs reload_delay {delay * 1e3:.0f} ms "
            f"+ one spawn {best['spawn'] * 1e3:.0f} ms",
            f"{best['reload'] / floor:.2f}x",
            best["reload"] <= floor,
        )
    )
    rows.append(
        (
            "RSS of a replica (pool of 4) vs bare interpreter",
            f"{best['rss'] / 2**20:.1f} MiB vs {best['bare_rss'] / 2**20:.1f} MiB",
            f"{best['rss'] / best['bare_rss']:.2f}x",
            None,
        )
    )
    rows.append(
        (
            "memory of a replica forked from its zygote vs a cold one",
            f"USS {best['forked uss'] / 2**20:.1f} MiB vs {best['uss'] / 2**20:.1f} MiB "
            "(memory not shared with another process)",
            f"{best['forked uss'] / best['uss']:.2f}x",
            best["forked uss"] / best["uss"] <= 0.5,
        )
    )
    missed = report("bench/pool.py", rounds, args.quick, rows)
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
