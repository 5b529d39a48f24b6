"""Test helpers shared by the UI and browser tests: a real Gradio server on a free port."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.config import AppConfig
from demo import build_app, launch_options


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(engine, config: AppConfig | None = None) -> Iterator[str]:
    """Build the app on ``engine``, launch it on loopback without blocking, yield its URL, close it after."""
    config = config or AppConfig()
    app = build_app(engine, config)
    options = {**launch_options(config), "server_name": "127.0.0.1", "server_port": free_port()}
    app.launch(**options, prevent_thread_lock=True, quiet=True)
    try:
        yield app.local_url
    finally:
        app.close()


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
