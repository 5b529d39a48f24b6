"""Test helpers shared by the UI and browser tests: a real Gradio server on a free port."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from core.config import AppConfig
from demo import build_app, launch_options


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(engine, config: AppConfig | None = None) -> Iterator[str]:  # noqa: ANN001 - Engine or a test double
    """Build the app on ``engine``, launch it on loopback without blocking, yield its URL, close it after."""
    config = config or AppConfig()
    app = build_app(engine, config)
    options = {**launch_options(config), "server_name": "127.0.0.1", "server_port": free_port()}
    app.launch(**options, prevent_thread_lock=True, quiet=True)
    try:
        yield app.local_url
    finally:
        app.close()
