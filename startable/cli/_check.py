"""`startable check FILE` and `startable graph FILE`: a cluster file, read and
resolved, without starting anything.

`check` (compose's `config`) prints what `startable up` would run: the
cluster's settings, the order the services start in (each step starts once
the ones before it are STARTED; the services of one step start together),
and each service as resolved (its entry, dependencies, restart policy,
replicas, permissions). `graph` prints the dependency graph: a mermaid
flowchart, or a text rendering for a terminal. Both exit 2 when the file
cannot be used, with the error `startable up` would give.
"""

from __future__ import annotations

import graphlib
import json
import shlex
import sys
from collections.abc import Sequence
from typing import Any, Literal

from ..cluster import ClusterFile, ServiceDefinitionError, ServiceSpec, load_cluster
from ..cluster._system.services import render_mermaid
from ..program import EXIT_OK, EXIT_USAGE
from ._output import escape


def steps(specs: Sequence[ServiceSpec]) -> list[list[str]]:
    """The services in start order, in steps: each step's services need only the
    ones of earlier steps (and start together), in the file's order within a step."""
    position = {spec.name: at for at, spec in enumerate(specs)}
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for spec in specs:
        sorter.add(spec.name, *spec.depends_on)
    sorter.prepare()
    found: list[list[str]] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        found.append(ready)
        sorter.done(*ready)
    return found


def _restart(spec: ServiceSpec) -> str:
    policy = spec.restart
    if policy.mode == "never":
        return "never"
    return f"{policy.mode} ({policy.intensity} in {policy.period:g}s, backoff {policy.backoff:g}s)"


def describe(spec: ServiceSpec) -> dict[str, Any]:
    """What `check --json` says of one service."""
    described: dict[str, Any] = {"name": spec.name}
    if spec.remote:
        described["remote"] = True
    elif spec.command is not None:
        described["command"] = list(spec.command)
        described["ready"] = spec.ready.describe()
        described["stop_signal"] = spec.stop_signal.name
    else:
        described["entry"] = spec.entry if spec.entry is not None else "(code)"
    if spec.health is not None:
        described["health"] = {
            "probe": spec.health.describe(),
            "interval": spec.health.interval,
            "timeout": spec.health.timeout,
            "retries": spec.health.retries,
        }
    described["depends_on"] = list(spec.depends_on)
    described["restart"] = {
        "mode": spec.restart.mode,
        "intensity": spec.restart.intensity,
        "period": spec.restart.period,
        "backoff": spec.restart.backoff,
        "max_backoff": spec.restart.max_backoff,
    }
    if not spec.remote:
        described["replicas"] = spec.replicas
        described["pool"] = spec.pool or spec.replicas > 1
        described["permissions"] = "all" if spec.permissions is None else "restricted"
        described["listen"] = [str(address) for address in spec.listen]
        described["env"] = dict(spec.env)
    return described


def _text(cluster: ClusterFile) -> str:
    lines = [f"cluster {cluster.name} ({cluster.path})"]
    settings = [
        f"on_service_exit = {cluster.on_service_exit}",
        f"stop_timeout = {cluster.stop_timeout:g}s",
    ]
    if cluster.redis is not None:
        settings += [f"redis = {cluster.redis}", f"registry_ttl = {cluster.registry_ttl:g}s"]
    if cluster.log_directory is not None:
        settings.append(
            f"logs in {cluster.log_directory} ({cluster.log_max_size} bytes, "
            f"{cluster.log_keep} kept)"
        )
    lines.append("  " + ", ".join(settings))
    lines.append("start order (a step starts once the steps before it are STARTED):")
    for number, step in enumerate(steps(cluster.services), 1):
        lines.append(f"  {number}. {', '.join(step)}")
    lines.append("services:")
    width = max(len(spec.name) for spec in cluster.services)
    for spec in cluster.services:
        if spec.remote:
            what = "remote (runs on another host)"
        elif spec.command is not None:
            what = f"command {shlex.join(spec.command)}, ready when {spec.ready.describe()}"
        else:
            what = f"entry {spec.entry or '(code)'}"
        parts = [what]
        if spec.depends_on:
            parts.append("needs " + ", ".join(spec.depends_on))
        parts.append(f"restart {_restart(spec)}")
        if not spec.remote:
            if spec.replicas > 1 or spec.pool:
                parts.append(f"{spec.replicas} replicas")
            if spec.permissions is not None:
                parts.append("restricted permissions")
            if spec.listen:
                parts.append("listens on " + ", ".join(str(a) for a in spec.listen))
            if spec.health is not None:
                check = spec.health
                parts.append(
                    f"health {check.describe()} every {check.interval:g}s "
                    f"({check.retries} failures stop it)"
                )
        lines.append(f"  {spec.name:<{width}}  " + "; ".join(parts))
    count = len(cluster.services)
    lines.append(f"ok: {count} service{'s' if count != 1 else ''}, nothing started")
    return escape("\n".join(lines), newlines=True) + "\n"


def _load(path: str) -> ClusterFile | None:
    try:
        cluster = load_cluster(path)
        cluster.manager_options()  # (the key file too)
    except ServiceDefinitionError as exc:  # ClusterFileError among them
        print(f"startable: error: {escape(str(exc), newlines=True)}", file=sys.stderr)
        return None
    return cluster


def check(path: str, *, as_json: bool = False) -> int:
    """Read and resolve the cluster file at `path`; print it; the exit code."""
    cluster = _load(path)
    if cluster is None:
        return EXIT_USAGE
    if as_json:
        document = {
            "cluster": cluster.name,
            "path": cluster.path,
            "on_service_exit": cluster.on_service_exit,
            "stop_timeout": cluster.stop_timeout,
            "redis": cluster.redis,
            "logs": None
            if cluster.log_directory is None
            else {
                "directory": cluster.log_directory,
                "max_size": cluster.log_max_size,
                "keep": cluster.log_keep,
            },
            "order": steps(cluster.services),
            "services": [describe(spec) for spec in cluster.services],
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(_text(cluster))
    return EXIT_OK


def render_text_graph(specs: Sequence[ServiceSpec]) -> str:
    """The dependency graph for a terminal: the steps of the start order, each
    service with an arrow to what it needs."""
    by_name = {spec.name: spec for spec in specs}
    lines = []
    for number, step in enumerate(steps(specs), 1):
        lines.append(f"step {number}")
        for name in step:
            needs = by_name[name].depends_on
            lines.append(f"  {name}" + (f" -> {', '.join(needs)}" if needs else ""))
    return escape("\n".join(lines), newlines=True) + "\n"


def graph(path: str, *, output: Literal["text", "mermaid"] = "text") -> int:
    """Print the dependency graph of the cluster file at `path`; the exit code."""
    cluster = _load(path)
    if cluster is None:
        return EXIT_USAGE
    render = render_mermaid if output == "mermaid" else render_text_graph
    sys.stdout.write(render(list(cluster.services)))
    return EXIT_OK
