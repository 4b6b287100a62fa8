"""Specs of services that the tests run in child processes."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from startable.cluster import ServiceSpec

ROOT = Path(__file__).resolve().parent.parent
#: Short enough for tests, long enough for a loaded machine.
OPTIONS: Mapping[str, object] = {"close_timeout": 5, "term_timeout": 2, "resources_interval": 0}


def process(
    name: str,
    entry: str,
    *depends_on: str,
    options: Mapping[str, object] = OPTIONS,
    **fields: Any,
) -> ServiceSpec:
    """`name`, running `entry` in a child process from the project's root.

    `entry` is `"module:attr"`, or a class of tests/remote_services.py.
    """
    if ":" not in entry:
        entry = f"tests.remote_services:{entry}"
    return ServiceSpec(
        name=name,
        entry=entry,
        depends_on=depends_on,
        cwd=str(ROOT),
        container_options=dict(options),
        **fields,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a program that must be
    told its port before it starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
