"""End to end in headless Chromium (Debian's chromium driven by Playwright): what the Chat and Adapters tabs draw.

The real SmolLM2 only where the answer's content matters (send, stream, stop); a slow fake engine for timing
(busy Send, queue position, phone layout); the tiny Llama with real LoRA adapters for rename/delete/compare.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import AppConfig, DemoProfile
from core.engine import Engine
from demo.chat.column import BUSY, EMPTY
from demo.chat.common import INTERRUPTED
from tests.fakes import SlowEngine
from tests.helpers import CHROMIUM, browser_page, isolated_home, serve, set_number
from tests.lora import make_adapter

pytestmark = pytest.mark.e2e

# Set DEMOFORGE_SCREENSHOTS=assets to refresh the README's screenshots from this test.
SHOTS = os.environ.get("DEMOFORGE_SCREENSHOTS")
MARK = INTERRUPTED.strip().strip("*")  # "(reply interrupted)" as drawn
PHONE = (390, 844)


@pytest.fixture(scope="module", autouse=True)
def chromium() -> None:
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium`.")


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    engine = Engine(AppConfig())
    with serve(engine, AppConfig(profile=DemoProfile.load("default"))) as url:
        yield url


@pytest.fixture(scope="module")
def slow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fake engine writing 12 words in ~2.4 s, with the real model's label length."""
    engine = SlowEngine(words=12, step_s=0.2)
    engine.chat_label = lambda: "SmolLM2-135M-Instruct · bfloat16 · cpu (dynamic int8 linear)"
    with isolated_home(tmp_path_factory.mktemp("slow-home")), serve(engine, AppConfig(profile=DemoProfile())) as url:
        yield url


@pytest.fixture(scope="module")
def tiny_url(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tiny Llama with two real LoRA adapters, 'alpha' and 'beta', in a home of its own."""
    with isolated_home(tmp_path_factory.mktemp("tiny-home")):
        for seed, name in enumerate(("alpha", "beta"), start=1):
            make_adapter(tiny_models["llama"], name, seed)
        engine = Engine(AppConfig(model=str(tiny_models["llama"]), device="cpu", dtype="float32"))
        with serve(engine, AppConfig(model=str(tiny_models["llama"]))) as url:
            yield url


@pytest.fixture
def page(page_url: str):
    with browser_page(page_url, 1200, 900) as page:
        yield page


def _bot_text(page) -> str:
    bots = page.locator('#df-chatbot [data-testid="bot"]')
    return bots.last.inner_text() if bots.count() else ""


def _user_texts(page) -> list[str]:
    return [t.strip() for t in page.locator('#df-chatbot [data-testid="user"]').all_inner_texts()]


def _send(page, text: str) -> None:
    page.locator("#df-msg textarea").fill(text)
    page.locator("#df-send").click()


def _wait_status(page, text: str, timeout_ms: int = 60_000, where: str = "#df-status") -> None:
    page.wait_for_function(
        "([sel, t]) => document.querySelector(sel).innerText.includes(t)", arg=[where, text], timeout=timeout_ms
    )


def _error_badges(page) -> int:
    """Red 'Error' overlays drawn by Gradio's status trackers over components (a hidden tracker draws nothing)."""
    return page.locator('[data-testid="status-tracker"]:not(.hide) .error').count()


def _pick(page, dropdown: str, option: str) -> None:
    """Open the dropdown and choose ``option``. A choices update arriving just after the click re-renders the
    dropdown closed (seen once on a loaded CI machine right after a rename), so a list that shows no such option
    is opened again, as a user would."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(3):
        page.locator(f"{dropdown} input").click()
        try:
            page.locator(f'[role="option"][aria-label="{option}"]').first.click(timeout=10_000)
            return
        except PlaywrightTimeout:
            if attempt == 2:
                raise
            page.keyboard.press("Escape")


def _set_number(page, label: str, value: float) -> None:
    if not page.get_by_label(f"number input for {label}").is_visible():
        page.get_by_text("System prompt and sampling").click()
    set_number(page, label, value)


def test_send_see_streamed_reply_then_stop(page) -> None:
    assert "SmolLM2-135M-Instruct" in page.locator("#df-model-info").inner_text()
    _set_number(page, "Temperature (0 = greedy)", 0)
    _send(page, "What is the capital of Japan?")
    _wait_status(page, "tok/s")
    assert "Tokyo" in _bot_text(page)
    assert _user_texts(page)[-1] == "What is the capital of Japan?"
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "screenshot-chat.png"), full_page=True)

    # A long reply: watch it grow in several steps, then press Stop and check it stops growing.
    _set_number(page, "Max new tokens", 1024)
    _send(page, "Write a long story about a dragon who learns to bake bread.")
    lengths: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(set(lengths)) < 4:
        lengths.append(len(_bot_text(page)))
        time.sleep(0.3)
    assert len({n for n in lengths if n > 0}) >= 3, f"reply did not stream: {lengths}"
    page.locator("#df-stop").click()
    _wait_status(page, "Stopped", 10_000)
    time.sleep(0.5)
    after_stop = _bot_text(page)
    time.sleep(2.0)
    assert _bot_text(page) == after_stop, "the reply kept changing after Stop"
    assert len(after_stop) > len(MARK) and after_stop.rstrip().endswith(MARK), after_stop[-80:]

    # The app still answers after a stop, and Send works again.
    page.locator("#df-clear").click()
    _send(page, "How many legs does a spider have?")
    _wait_status(page, "tok/s")
    reply = _bot_text(page).lower()
    assert "8" in reply or "eight" in reply, reply


def test_empty_send_is_an_inline_note_and_the_chat_stays(slow_url: str) -> None:
    with browser_page(slow_url) as page:
        _send(page, "hello")
        _wait_status(page, "tok/s", 20_000)
        page.locator("#df-send").click()  # the box is empty now
        page.get_by_text(EMPTY).wait_for(timeout=10_000)
        assert page.locator("#df-msg").get_by_text(EMPTY).is_visible()  # drawn at the box, not as a modal
        time.sleep(0.5)
        assert _error_badges(page) == 0
        assert _user_texts(page) == ["hello"]
        assert page.locator('#df-chatbot [data-testid="bot"]').last.is_visible()


def test_second_message_while_streaming_never_cuts_the_first_reply(slow_url: str) -> None:
    with browser_page(slow_url) as page:
        _send(page, "first")
        page.wait_for_function("() => document.querySelector('#df-send').disabled", timeout=10_000)
        page.wait_for_function(
            "() => (document.querySelector('#df-chatbot [data-testid=\"bot\"]')?.innerText || '').includes('two')",
            timeout=10_000,
        )
        box = page.locator("#df-msg textarea")
        box.fill("second")
        box.press("Enter")  # Send is disabled; Enter is refused by the server-side check
        page.get_by_text(BUSY).wait_for(timeout=10_000)
        _wait_status(page, "tok/s", 20_000)
        assert _bot_text(page).split() == ["one", "two", "three", *(f"w{i}" for i in range(3, 12))]
        assert _user_texts(page) == ["first"]
        assert box.input_value() == "second"  # nothing typed is lost
        page.wait_for_function("() => !document.querySelector('#df-send').disabled", timeout=10_000)
        assert _error_badges(page) == 0


def test_a_failed_reply_gives_send_back(tmp_path: Path) -> None:
    """A reply that fails mid-stream keeps its text, marked interrupted, and Send works again: the page runs a
    .then only after a success, and Send stayed disabled after a failure (every Enter then said 'still answering')."""
    engine = SlowEngine(words=6, step_s=0.2, fail_after=3)
    with isolated_home(tmp_path), serve(engine, AppConfig(profile=DemoProfile())) as url, browser_page(url) as page:
        _send(page, "first")
        _wait_status(page, "Interrupted", 20_000)
        assert _bot_text(page).split()[:3] == ["one", "two", "three"] and MARK in _bot_text(page)
        page.wait_for_function("() => !document.querySelector('#df-send').disabled", timeout=10_000)
        _send(page, "second")  # the engine fails only its first reply
        _wait_status(page, "tok/s", 20_000)
        assert _user_texts(page) == ["first", "second"]
        assert _bot_text(page).split() == ["one", "two", "three", "w3", "w4", "w5"]


def test_a_waiting_visitor_sees_queue_position_and_estimate(slow_url: str) -> None:
    with browser_page(slow_url) as first:
        second = first.context.browser.new_page(viewport={"width": 1280, "height": 1000})
        second.goto(slow_url, wait_until="load")
        second.wait_for_selector("#df-msg textarea", timeout=60_000)
        _send(first, "measure one reply")
        _wait_status(first, "tok/s", 20_000)  # Gradio's estimate uses measured reply times
        _send(first, "a long one")
        first.wait_for_function("() => document.querySelector('#df-send').disabled", timeout=10_000)
        _send(second, "me too")
        second.wait_for_function(
            "() => /queue: 1\\/1/.test(document.querySelector('#df-status').innerText)", timeout=10_000
        )
        shown = second.locator("#df-status").inner_text()
        assert re.search(r"queue: 1/1 \| [\d.]+/[\d.]+s", shown), shown  # position and elapsed/estimated seconds
        assert second.locator("#df-chatbot").is_visible() and _user_texts(second) == ["me too"]
        _wait_status(second, "tok/s", 30_000)


def test_phone_width_keeps_the_chat_usable(slow_url: str, tmp_path: Path) -> None:
    width, height = PHONE
    with browser_page(slow_url, width, height) as page:
        page.screenshot(path=str(tmp_path / "phone.png"))
        if SHOTS:
            page.screenshot(path=str(Path(SHOTS) / "screenshot-phone.png"))
        info = page.locator("#df-model-info p").bounding_box()
        line = float(
            page.evaluate("() => parseFloat(getComputedStyle(document.querySelector('#df-model-info p')).lineHeight)")
        )
        assert info["height"] <= 2 * line + 2, f"model name takes {info['height'] / line:.1f} lines"
        picker = page.locator("#df-adapter input").bounding_box()
        assert picker["x"] >= 0 and picker["x"] + picker["width"] <= width, picker
        assert picker["width"] >= 150, picker  # room for "Base model (no adapter)"
        box = page.locator("#df-msg textarea").bounding_box()
        assert box["y"] + box["height"] <= height, f"input box ends at {box['y'] + box['height']} px"
        send, stop = (page.locator(s).bounding_box() for s in ("#df-send", "#df-stop"))
        assert abs(send["y"] - box["y"]) < box["height"] + 40 and abs(send["y"] - stop["y"]) < 2  # one row
        actions = [page.locator(s).bounding_box() for s in ("#df-retry", "#df-undo", "#df-clear")]
        assert len({round(b["y"]) for b in actions}) == 1, actions  # side by side, not stacked
        assert all(b["width"] < width / 2 for b in [send, stop, *actions])
        assert page.evaluate("() => document.documentElement.scrollWidth") <= width  # no sideways scrolling


def test_rename_reaches_chat_and_compare_and_failed_delete_leaves_no_overlay(tiny_url: str) -> None:
    with browser_page(tiny_url) as page:
        _pick(page, "#df-adapter", "alpha")
        _wait_status(page, "Using adapter", 20_000)

        page.get_by_role("tab", name="Adapters").click()
        _pick(page, "#df-lib-pick", "alpha")
        page.get_by_text("Rename or delete").click()
        page.locator("#df-lib-new-name textarea, #df-lib-new-name input").first.fill("gamma")
        page.locator("#df-lib-rename").click()
        _wait_status(page, "Renamed", 20_000, "#df-lib-status")

        # A wrong confirmation fails (a toast, no overlay), then a right one succeeds: no badges left behind.
        _pick(page, "#df-lib-pick", "beta")
        confirm = page.locator("#df-lib-confirm textarea, #df-lib-confirm input").first
        confirm.fill("bet")
        page.locator("#df-lib-delete").click()
        page.get_by_text("type its name exactly").first.wait_for(timeout=10_000)
        assert _error_badges(page) == 0
        confirm.fill("beta")
        page.locator("#df-lib-delete").click()
        _wait_status(page, "Deleted", 20_000, "#df-lib-status")
        time.sleep(0.5)
        assert _error_badges(page) == 0

        page.get_by_role("tab", name="Chat").click()
        assert page.locator("#df-adapter input").input_value() == "gamma"  # the picked adapter, renamed
        _set_number(page, "Max new tokens", 32)  # the tiny Llama reads 256 tokens at most
        _send(page, "good movie")
        _wait_status(page, "tok/s", 30_000)
        assert "No adapter named" not in page.locator("body").inner_text()
        page.get_by_text("Compare: base vs fine-tuned").click()
        page.locator("#df-compare-a input").click()
        options = [o.get_attribute("aria-label") for o in page.locator('[role="option"]').all()]
        assert "gamma" in options and "alpha" not in options and "beta" not in options, options


def test_compare_columns_are_named_after_the_adapter_with_stats_apart(tiny_url: str) -> None:
    with browser_page(tiny_url) as page:
        _set_number(page, "Max new tokens", 32)
        page.get_by_text("Compare: base vs fine-tuned").click()
        page.locator("#df-compare-prompt textarea").fill("good movie")
        page.locator("#df-compare-a input").click()
        name = page.locator('[role="option"]').first.get_attribute("aria-label")
        _pick(page, "#df-compare-a", name)
        page.locator("#df-compare-out-a").get_by_text(name, exact=True).wait_for(timeout=10_000)
        page.locator("#df-compare-run").click()
        _wait_status(page, "tok/s", 30_000, "#df-compare-stats-a")
        assert "tok/s" in page.locator("#df-compare-stats-base").inner_text()
        assert "tok/s" not in page.locator("#df-compare-out-a textarea").input_value()
        assert "No adapter picked" in page.locator("#df-compare-stats-b").inner_text()
