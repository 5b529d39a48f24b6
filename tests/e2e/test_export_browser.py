"""End to end in headless Chromium: the Adapters tab's export draws a progress bar while it runs, then lists the
GGUF and the Modelfile to download; "Serve on backend" draws the command lines."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from core import export_gguf
from core.config import AppConfig
from core.engine import Engine
from tests.helpers import browser_page, serve
from tests.lora import make_adapter
from tests.unit import test_export_gguf

pytestmark = pytest.mark.e2e
bpe_llama = test_export_gguf.bpe_llama  # the session fixture: a tiny Llama with a byte-level BPE (GGUF-exportable)


def test_export_draws_progress_then_the_files_and_the_serve_commands(
    bpe_llama: Path, demoforge_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(bpe_llama).encode(export_gguf._CHKTXT)
    monkeypatch.setitem(export_gguf._KNOWN_PRE, hashlib.sha256(str(ids).encode()).hexdigest(), "gpt-2")
    real = export_gguf.write_gguf

    def slow_write(*args, on_progress=export_gguf._noop, **kwargs):  # the tiny model writes too fast to watch
        for i in range(10):
            on_progress(i / 10, f"Writing tensor {i}")
            time.sleep(0.4)
        return real(*args, on_progress=on_progress, **kwargs)

    monkeypatch.setattr(export_gguf, "write_gguf", slow_write)
    make_adapter(bpe_llama, "alpha", 1)
    config = AppConfig(model=str(bpe_llama), device="cpu", dtype="float32")
    with serve(Engine(config), config) as url, browser_page(url, height=1400) as page:
        page.get_by_role("tab", name="Adapters").click()
        page.get_by_text("Export for llama.cpp and Ollama").click()
        page.get_by_text("GGUF Q8_0 (merged, half the size)").click()
        page.locator("#df-lib-export").click()
        page.wait_for_function("document.body.innerText.includes('Writing tensor')", timeout=30_000)
        assert page.locator(".progress-level").count() >= 1  # a bar, not just a spinner
        page.wait_for_function("document.body.innerText.includes('Exported alpha')", timeout=60_000)
        files = page.locator("#df-lib-exported").inner_text()
        assert "alpha-q8_0" in files and "Modelfile" in files
        page.get_by_text("Serve on backend (vLLM, llama.cpp, Ollama)").click()
        page.locator("#df-lib-serve").click()
        page.wait_for_function("document.body.innerText.includes('--lora-modules alpha=adapters/alpha')")
        assert str(demoforge_home) not in page.locator("#df-lib-serve-help").inner_text()
