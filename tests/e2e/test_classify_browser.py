"""End to end in headless Chromium: open the Classify tab, upload a CSV, score it, download the scored CSV."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import AppConfig
from core.engine import Engine
from tests.helpers import CHROMIUM, CHROMIUM_FLAGS, browser_page, isolated_home, serve
from tests.ui.test_classify_ui import _make_adapter

pytestmark = pytest.mark.e2e

SHOTS = os.environ.get("DEMOFORGE_SCREENSHOTS")
LABELS = ["billing", "bug", "feature_request", "account_access", "how_to"]
SAMPLE = Path(__file__).resolve().parents[2] / "assets" / "data" / "ticket_triage_test.csv"
EMOJI = re.compile("[\u2600-\u27bf\U0001f000-\U0001faff]")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("e2e-classify-home")
    with isolated_home(home):
        _make_adapter(home / "adapters" / "ticket-lora")  # for 'Use in Classify'
        with serve(Engine(AppConfig())) as url:
            yield url


def test_upload_score_and_download_the_scored_csv(app_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with SAMPLE.open(encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["label"]][:12]
    rows.append({"text": '=HYPERLINK("http://example.com")', "label": "bug"})
    upload = tmp_path / "tickets.csv"
    with upload.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, ["text", "label"])
        writer.writeheader()
        writer.writerows(rows)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
        page.goto(app_url, wait_until="load")
        page.wait_for_selector("#df-msg textarea", timeout=60_000)
        page.get_by_role("tab", name="Classify").click()

        # One text: probabilities, then the word highlights, then a line naming the method and the latency.
        page.locator("#df-cls-text textarea").fill("I forgot my password and cannot log in to my account")
        page.locator("#df-cls-run").click()
        page.wait_for_function(
            "() => document.querySelector('#df-cls-info').innerText.includes('explanation')", timeout=60_000
        )
        assert "account_access" in page.locator("#df-cls-label").inner_text()
        assert "zero-shot" in page.locator("#df-cls-info").inner_text()
        assert "password" in page.locator("#df-cls-explain").inner_text()

        page.locator("#df-cls-upload input[type=file]").set_input_files(str(upload))
        # The column pickers fill in with guesses once the file is read.
        page.wait_for_function(
            "() => document.querySelector('#df-cls-textcol input')?.value === 'text'", timeout=30_000
        )
        assert page.locator("#df-cls-labelcol input").input_value() == "label"
        page.locator("#df-cls-score").click()
        page.wait_for_function(
            "() => document.querySelector('#df-cls-metrics').innerText.includes('Accuracy')", timeout=60_000
        )
        assert f"Scored {len(rows)} rows" in page.locator("#df-cls-metrics").inner_text()
        page.locator("#df-cls-confusion").wait_for(state="visible", timeout=30_000)
        page.wait_for_function(
            "() => document.querySelector('#df-cls-table').innerText.includes('corrected_label')", timeout=30_000
        )
        if SHOTS:
            page.screenshot(path=str(Path(SHOTS) / "screenshot-classify.png"), full_page=True)

        link = page.locator("#df-cls-download a").first
        link.wait_for(timeout=30_000)
        with page.expect_download(timeout=30_000) as info:
            link.click()
        target = tmp_path / "downloaded.csv"
        info.value.save_as(target)
        browser.close()

    with target.open(encoding="utf-8", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert len(got) == len(rows)
    assert [r["text"] for r in got[:-1]] == [r["text"] for r in rows[:-1]]
    assert got[-1]["text"] == "'" + rows[-1]["text"]  # formula escaped
    for r in got:
        assert r["predicted_label"] in LABELS
        assert sum(float(r[f"p_{x}"]) for x in LABELS) == pytest.approx(1.0, abs=1e-3)


def test_use_in_classify_from_the_library(app_url: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(app_url, wait_until="load")
        page.wait_for_selector("#df-msg textarea", timeout=60_000)
        page.get_by_role("tab", name="Adapters").click()
        page.wait_for_function(
            "() => document.querySelector('#df-lib-pick input')?.value === 'ticket-lora'", timeout=30_000
        )
        page.locator("#df-lib-use-classify").click()
        # The Classify tab opens with the fine-tuned method and the adapter picked.
        page.locator("#df-cls-adapter input").wait_for(state="visible", timeout=30_000)
        page.wait_for_function(
            "() => document.querySelector('#df-cls-adapter input')?.value === 'ticket-lora'", timeout=30_000
        )
        page.wait_for_timeout(1000)  # the method's change event has run too: the pick stays
        assert page.locator("#df-cls-adapter input").input_value() == "ticket-lora"
        assert page.get_by_role("radio", name="Fine-tuned adapter").is_checked()
        page.locator("#df-cls-text textarea").fill("The export button crashes the app")
        page.locator("#df-cls-run").click()
        page.wait_for_function(
            "() => document.querySelector('#df-cls-info').innerText.includes('explanation')", timeout=60_000
        )
        assert "fine-tuned · ticket-lora" in page.locator("#df-cls-info").inner_text()
        browser.close()


def test_finetune_on_corrections_shows_progress_here_and_in_the_finetune_tab(app_url: str, tmp_path: Path) -> None:
    with SAMPLE.open(encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["label"]][:23]
    rows.insert(0, {"text": '<svg id="pwn"></svg> the export button crashes', "label": "bug"})  # a visible row
    upload = tmp_path / "ladder.csv"
    with upload.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, ["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    with browser_page(app_url) as page:
        page.get_by_role("tab", name="Classify").click()
        page.locator("#df-cls-upload input[type=file]").set_input_files(str(upload))
        page.wait_for_function(
            "() => document.querySelector('#df-cls-textcol input')?.value === 'text'", timeout=30_000
        )
        page.locator("#df-cls-score").click()
        page.wait_for_function(
            "() => document.querySelector('#df-cls-metrics').innerText.includes('Scored')", timeout=120_000
        )
        page.wait_for_function(
            "() => document.querySelector('#df-cls-table').innerText.includes('the export button crashes')",
            timeout=30_000,
        )
        assert page.locator("#pwn").count() == 0  # the cell is text, not markup

        name = page.locator("#df-cls-ft-name input, #df-cls-ft-name textarea").first
        name.fill("ladder-e2e")
        minutes = page.locator("#df-cls-ft-minutes input[type=number]")
        minutes.fill("1")
        minutes.press("Enter")
        page.locator("#df-cls-finetune").click()

        # Progress shows in the Classify tab itself: a status badge and a bar, no emoji.
        page.locator("#df-cls-ft-status .df-run").wait_for(timeout=60_000)
        status = page.locator("#df-cls-ft-status").inner_text()
        run_id = re.search(r"run (\S+-ladder-e2e)", status).group(1)
        assert not EMOJI.search(status + page.locator("#df-cls-ladder-status").inner_text())
        assert "Fine-tune" in page.locator("#df-cls-ladder-status").inner_text()

        # The Fine-tune tab follows the newest run (it was on no run, or an older one, before).
        page.get_by_role("tab", name="Fine-tune").click()
        page.wait_for_function(
            f"() => document.querySelector('#df-ft-headline').innerText.includes({run_id!r})", timeout=30_000
        )

        # Back in Classify: when the adapter is ready it is picked, and Compare scores both methods.
        page.get_by_role("tab", name="Classify").click()
        page.wait_for_function(
            "() => document.querySelector('#df-cls-ft-status').innerText.includes('is ready')", timeout=600_000
        )
        assert page.locator("#df-cls-adapter input").input_value() == "ladder-e2e"
        assert page.get_by_role("radio", name="Fine-tuned adapter").is_checked()
        if SHOTS:
            page.screenshot(path=str(Path(SHOTS) / "screenshot-classify-ladder.png"), full_page=True)
        page.locator("#df-cls-compare").click()
        page.wait_for_function(
            "() => document.querySelector('#df-cls-ladder-status').innerText.includes('Fine-tuned vs zero-shot')",
            timeout=180_000,
        )
        table = page.locator("#df-cls-comparison").inner_text()
        assert "zero-shot" in table and "fine-tuned" in table


def test_choosing_the_fine_tuned_method_picks_an_adapter(app_url: str) -> None:
    """The picker comes up with the newest adapter chosen: an empty one read as 'there are no adapters'."""
    with browser_page(app_url) as page:
        page.get_by_role("tab", name="Classify").click()
        page.get_by_role("radio", name="Fine-tuned adapter").check()
        page.locator("#df-cls-adapter input").wait_for(state="visible", timeout=30_000)
        # the newest adapter: ticket-lora, or one the module's other tests trained since
        page.wait_for_function("() => document.querySelector('#df-cls-adapter input')?.value", timeout=30_000)
        picked = page.locator("#df-cls-adapter input").input_value()
        page.locator("#df-cls-text textarea").fill("The export button crashes the app")
        page.locator("#df-cls-run").click()
        page.wait_for_function(
            "() => document.querySelector('#df-cls-info').innerText.includes('explanation')", timeout=60_000
        )
        assert f"fine-tuned · {picked}" in page.locator("#df-cls-info").inner_text()
