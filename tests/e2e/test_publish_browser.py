"""End to end in headless Chromium, the builder on a Space without persistent storage: the notice is drawn above
the tabs; the Adapters tab's Publish (no token) draws the error naming the bundle folder; the token box is a
password box; Download run card lists the HTML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import AppConfig
from core.engine import Engine
from tests.helpers import browser_page, serve
from tests.lora import make_adapter

pytestmark = pytest.mark.e2e


def test_builder_on_an_ephemeral_space_sees_the_notice_and_publish_names_the_bundle(
    tiny_models: dict[str, Path], demoforge_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPACE_ID", "acme/demo")  # the test home is not on /data
    make_adapter(tiny_models["llama"], "alpha", 1)
    # The builder's own (private) Space: mode 'auto' would serve visitors the audience view at / on a Space.
    config = AppConfig(model=str(tiny_models["llama"]), device="cpu", dtype="float32", mode="builder")
    with serve(Engine(config), config) as url, browser_page(url, height=1400) as page:
        notice = page.locator("#df-storage-notice")
        assert notice.is_visible() and "Storage is not persistent" in notice.inner_text()
        assert notice.bounding_box()["y"] < page.locator("#df-msg").bounding_box()["y"]  # above the tabs
        page.get_by_role("tab", name="Adapters").click()
        page.wait_for_function("document.querySelector('#df-lib-pick input')?.value === 'alpha'")
        page.locator("#df-lib-card-download").click()
        page.wait_for_function("document.querySelector('#df-lib-zip')?.innerText.includes('run_card')", timeout=60_000)
        page.get_by_text("Publish to a Hugging Face Space").click()
        assert page.locator("#df-pub-token input").get_attribute("type") == "password"
        page.locator("#df-pub-id textarea").fill("acme/alpha-demo")
        page.locator("#df-pub-go").click()
        page.wait_for_function("document.body.innerText.includes('No Hugging Face token')", timeout=120_000)
        text = page.locator("body").inner_text()
        assert "The bundle is ready in bundles/" in text and str(demoforge_home) not in text
