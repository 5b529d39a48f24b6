"""End to end in headless Chromium (Debian's chromium driven by Playwright): send, watch it stream, stop."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import AppConfig, DemoProfile
from core.engine import Engine
from tests.helpers import CHROMIUM, browser_page, serve

pytestmark = pytest.mark.e2e

# Set DEMOFORGE_SCREENSHOTS=assets to refresh the README's screenshots from this test.
SHOTS = os.environ.get("DEMOFORGE_SCREENSHOTS")


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium`.")
    engine = Engine(AppConfig())
    with serve(engine, AppConfig(profile=DemoProfile.load("default"))) as url:
        yield url


@pytest.fixture
def page(page_url: str):
    with browser_page(page_url, 1200, 900) as page:
        yield page


def _bot_text(page) -> str:
    bots = page.locator('#df-chatbot [data-testid="bot"]')
    return bots.last.inner_text() if bots.count() else ""


def _send(page, text: str) -> None:
    page.locator("#df-msg textarea").fill(text)
    page.locator("#df-send").click()


def test_send_see_streamed_reply_then_stop(page) -> None:
    assert "SmolLM2-135M-Instruct" in page.locator("#df-model-info").inner_text()
    page.get_by_text("System prompt and sampling").click()
    temperature = page.get_by_label("number input for Temperature (0 = greedy)")
    temperature.fill("0")
    temperature.press("Enter")
    _send(page, "What is the capital of Japan?")
    page.wait_for_function("() => document.querySelector('#df-status').innerText.includes('tok/s')", timeout=60_000)
    assert "Tokyo" in _bot_text(page)
    assert page.locator('#df-chatbot [data-testid="user"]').last.inner_text().strip() == "What is the capital of Japan?"
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "screenshot-chat.png"), full_page=True)

    # A long reply: watch it grow in several steps, then press Stop and check it stops growing.
    box = page.get_by_label("number input for Max new tokens")
    box.fill("1024")
    box.press("Enter")
    _send(page, "Write a long story about a dragon who learns to bake bread.")
    lengths: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(set(lengths)) < 4:
        lengths.append(len(_bot_text(page)))
        time.sleep(0.3)
    assert len({n for n in lengths if n > 0}) >= 3, f"reply did not stream: {lengths}"
    page.locator("#df-stop").click()
    page.wait_for_function("() => document.querySelector('#df-status').innerText.includes('Stopped')", timeout=10_000)
    time.sleep(0.5)
    after_stop = len(_bot_text(page))
    time.sleep(2.0)
    assert len(_bot_text(page)) == after_stop, "the reply kept growing after Stop"
    assert after_stop > 0

    # The app still answers after a stop.
    page.locator("#df-clear").click()
    _send(page, "How many legs does a spider have?")
    page.wait_for_function("() => document.querySelector('#df-status').innerText.includes('tok/s')", timeout=60_000)
    reply = _bot_text(page).lower()
    assert "8" in reply or "eight" in reply, reply
