"""Test helpers shared by the UI and browser tests: a real Gradio server on a free port, served the way app.py
serves it."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.config import AppConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(engine, config: AppConfig | None = None) -> Iterator[str]:
    """Serve the app for ``config`` on ``engine`` on loopback, yield its URL, stop it after.

    Through :func:`demo.server.build_server` and :func:`demo.server.running`, the path app.py takes (the FastAPI
    mount, the endpoint guard, the login throttle), not ``Blocks.launch``: a test that passes here passes for the
    server users get. A guard that refused the page's own unqueued events once broke the second chat message in
    app.py while every test, launched the other way, passed.
    """
    from demo.server import LoginThrottle, build_server, running

    config = config or AppConfig()
    served = build_server(engine, config, throttle=LoginThrottle(base_delay_s=0))
    with running(served, "127.0.0.1", free_port()) as url:
        yield url + "/"


CHROMIUM = os.environ.get("DEMOFORGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@contextmanager
def isolated_home(root: Path) -> Iterator[Path]:
    """Point DEMOFORGE_HOME at ``root`` (no runs or adapters from other tests) for the block; the converted
    SmolLM2 of the session's home is reused through a link, so it is not converted again."""
    shared_models = Path(os.environ["DEMOFORGE_HOME"]) / "models"
    if shared_models.is_dir() and not (root / "models").exists():
        (root / "models").symlink_to(shared_models, target_is_directory=True)
    old = os.environ["DEMOFORGE_HOME"]
    os.environ["DEMOFORGE_HOME"] = str(root)
    try:
        yield root
    finally:
        os.environ["DEMOFORGE_HOME"] = old


@contextmanager
def browser_page(url: str, width: int = 1280, height: int = 1000):
    """Debian's Chromium driven by Playwright, on ``url`` once the app has rendered (never `playwright install`)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            # Not "networkidle": the Fine-tune tab polls its run every second.
            page.goto(url, wait_until="load")
            page.wait_for_selector("#df-msg textarea", timeout=60_000)
            yield page
        finally:
            browser.close()


def set_number(page, label: str, value: float) -> None:
    """Type ``value`` into a slider's number box until it stays.

    An accordion mounts its sliders as it opens, and a value typed in that moment can be redrawn away: a test
    that went on with the default 256 new tokens failed on the tiny Llama's 256-token context.
    """
    box = page.get_by_label(f"number input for {label}")
    for _ in range(10):
        box.fill(f"{value:g}")
        box.press("Enter")
        time.sleep(0.3)
        if box.input_value() and float(box.input_value()) == value:
            return
    raise AssertionError(f"{label} would not take {value}: it shows {box.input_value()!r}")
