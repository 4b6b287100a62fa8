"""The WSGI app gunicorn serves in bench/pool.py: the answer examples/pool/app.py gives."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable


def app(environ: dict[str, object], start_response: Callable[..., object]) -> Iterable[bytes]:
    body = f"hello from the pool: replica 0 (pid {os.getpid()})\n".encode()
    start_response("200 OK", [("Content-Length", str(len(body))), ("Connection", "close")])
    return [body]
