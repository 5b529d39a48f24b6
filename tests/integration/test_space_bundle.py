"""A published bundle starts as a Space starts it and answers like the builder's app.

Build the bundle, copy it to a scratch folder, run ``python app.py`` there with ``SPACE_ID`` set,
``GRADIO_SERVER_NAME=0.0.0.0``, a fresh DemoForge home and no network; chat through gradio_client with the
published adapter. The greedy answer must equal the builder's engine's answer with the same adapter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gradio_client import Client

from core import adapters
from core.config import AppConfig, DemoProfile, GenerationSettings
from core.engine import Engine
from core.publish import build_bundle
from tests.helpers import free_port

pytestmark = pytest.mark.integration
QUESTION = "What is the capital of Japan?"


def _real_adapter(folder: Path) -> None:
    """A random LoRA on the embedded SmolLM2 (no training needed: the test compares two servers' answers)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.models import embedded_chat_path

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(embedded_chat_path())
    lora = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(folder)
    card = {"name": folder.name, "task": "sft", "base_model": "default", "created": "2026-01-01T00:00:00+00:00"}
    (folder / adapters.CARD).write_text(json.dumps(card), encoding="utf-8")


def test_bundle_serves_as_a_space_and_answers_like_the_builder(tmp_path: Path) -> None:
    _real_adapter(adapters.adapters_dir() / "space-tuned")
    try:
        profile = DemoProfile(
            title="Space check",
            audience_adapters=["space-tuned"],
            default_adapter="space-tuned",
            temperature=0.0,
            max_new_tokens=24,
        )
        engine = Engine(AppConfig(profile=profile))
        settings = GenerationSettings(temperature=0.0, max_new_tokens=24)
        history = [{"role": "user", "content": QUESTION}]
        *_, last = engine.chat_stream(history, settings, profile.system_prompt, adapter="space-tuned")
        builder_answer = last.text

        publish_start = time.perf_counter()
        bundle = build_bundle(["space-tuned"], profile, tmp_path / "bundle")
        space = tmp_path / "space"
        shutil.copytree(bundle.path, space)
        port = free_port()
        env = {
            **os.environ,
            "SPACE_ID": "acme/space-check",
            "GRADIO_SERVER_NAME": "0.0.0.0",
            "GRADIO_SERVER_PORT": str(port),
            "DEMOFORGE_HOME": str(tmp_path / "fresh-home"),
            "HF_HUB_OFFLINE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env.pop("DEMOFORGE_AUTH", None)
        log = (tmp_path / "space.log").open("w")
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 400
            while "DemoForge (audience mode)" not in (tmp_path / "space.log").read_text():
                assert proc.poll() is None, (tmp_path / "space.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "space.log").read_text()
                time.sleep(0.5)
            serving_s = time.perf_counter() - publish_start
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            answer = client.predict(QUESTION, "space-tuned", api_name="/chat")
            text = (tmp_path / "space.log").read_text()
            assert "Adapters from the bundle: space-tuned" in text
            assert "Builder: not served" in text  # no builder credentials on this Space
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        print(
            f"\nbundle {bundle.size_bytes / 1e6:.0f} MB built in {bundle.seconds:.1f}s; "
            f"publish-to-serving {serving_s:.1f}s"
        )
        assert answer == builder_answer, (answer, builder_answer)
    finally:
        shutil.rmtree(adapters.adapters_dir() / "space-tuned", ignore_errors=True)
