"""End to end in headless Chromium: pick the sample chat dataset, train with a small budget, chat with the adapter."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import AppConfig
from core.engine import Engine
from tests.helpers import browser_page, isolated_home, serve

pytestmark = pytest.mark.e2e

SHOTS = os.environ.get("DEMOFORGE_SCREENSHOTS")
BUDGET_MINUTES = "1"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # A home of its own: no adapters or runs from other tests; the converted SmolLM2 is reused via a link.
    home = tmp_path_factory.mktemp("e2e-home")
    with isolated_home(home), serve(Engine(AppConfig())) as url:
        yield url


def test_pick_sample_train_then_chat_with_the_adapter(app_url: str) -> None:
    with browser_page(app_url) as page:
        page.get_by_role("tab", name="Fine-tune").click()

        # Pick the bundled chat sample: the validation report and preview appear before anything trains.
        page.locator("#df-ft-sample input").click()
        page.get_by_role("option", name=re.compile("Acme Cloud support chat")).click()
        page.wait_for_function(
            "() => document.querySelector('#df-ft-report').innerText.includes('kept')", timeout=60_000
        )
        assert "sft" in page.locator("#df-ft-report").inner_text()
        assert page.locator("#df-ft-preview").inner_text().strip()
        assert page.locator("#df-ft-name input, #df-ft-name textarea").first.input_value() == "acme-support"

        budget = page.get_by_label("number input for Time budget (minutes)")
        budget.fill(BUDGET_MINUTES)
        budget.press("Enter")
        page.locator("#df-ft-start").click()

        # Live progress: the headline shows steps, the bar moves, the loss curve fills in.
        page.wait_for_function(
            "() => /step \\d+\\/\\d+/.test(document.querySelector('#df-ft-headline').innerText)", timeout=180_000
        )
        if SHOTS:
            time.sleep(8)  # a few more steps on the curve
            page.screenshot(path=str(Path(SHOTS) / "screenshot-finetune.png"), full_page=True)
        page.wait_for_function(
            "() => document.querySelector('#df-ft-headline').innerText.includes('is ready')", timeout=300_000
        )
        headline = page.locator("#df-ft-headline").inner_text()
        assert "acme-support" in headline

        # Use it in Chat: pick it in the adapter dropdown (refreshed when the run finished), then ask.
        page.get_by_role("tab", name="Chat").click()
        page.locator("#df-adapter input").click()
        page.get_by_role("option", name="acme-support").click()
        page.wait_for_function(
            "() => document.querySelector('#df-status').innerText.includes('acme-support')", timeout=60_000
        )
        page.locator("#df-msg textarea").fill("How do I deploy my app?")
        page.locator("#df-send").click()
        page.wait_for_function(
            "() => document.querySelector('#df-status').innerText.includes('tok/s')", timeout=120_000
        )
        reply = page.locator('#df-chatbot [data-testid="bot"]').last.inner_text()
        assert reply.strip()

        # Compare view: base and tuned side by side.
        page.get_by_text("Compare: base vs fine-tuned, side by side").click()
        page.locator("#df-compare-prompt textarea").fill("How do I reset my password?")
        page.locator("#df-compare-a input").click()
        page.get_by_role("option", name="acme-support").click()
        page.locator("#df-compare-run").click()
        page.wait_for_function(
            "() => document.querySelector('#df-compare-out-a textarea').value.includes('tok/s')", timeout=180_000
        )
        base = page.locator("#df-compare-out-base textarea").input_value()
        tuned = page.locator("#df-compare-out-a textarea").input_value()
        assert base.strip() and tuned.strip()
        if SHOTS:
            page.locator("#df-compare").scroll_into_view_if_needed()
            page.screenshot(path=str(Path(SHOTS) / "screenshot-compare.png"), full_page=True)
