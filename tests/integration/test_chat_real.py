"""The real embedded SmolLM2: loads offline, answers on topic, and the cached second load beats the first."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.chat import stream_reply
from core.config import GenerationSettings
from core.models import load_causal_lm

pytestmark = pytest.mark.integration

SYSTEM = "You are a helpful, concise assistant."


def _answer(lm, question: str) -> str:
    *_, last = stream_reply(
        lm, [{"role": "user", "content": question}], GenerationSettings(temperature=0.0, max_new_tokens=48), SYSTEM
    )
    return last.text


def test_first_load_converts_then_cached_load_is_faster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMOFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    first = load_causal_lm("default")
    assert first.source == "converted"
    assert (tmp_path / "home" / "models").is_dir()
    assert list((tmp_path / "home" / "models").rglob("model.safetensors"))
    second = load_causal_lm("default")
    assert second.source == "cache"
    assert second.load_seconds < first.load_seconds / 2, (first.load_seconds, second.load_seconds)
    assert second.name == "SmolLM2-135M-Instruct" and second.context_length == 8192
    # The cached copy is the same model: same greedy answer.
    assert _answer(first, "What is the capital of Japan?") == _answer(second, "What is the capital of Japan?")


@pytest.fixture(scope="module")
def smollm():
    return load_causal_lm("default")


@pytest.mark.parametrize(
    "question, expected",
    [
        ("What is the capital of Japan?", "tokyo"),
        ("How many legs does a spider have?", "8"),
        ("What is the opposite of hot?", "cold"),
    ],
)
def test_answers_plain_questions_on_topic(smollm, question: str, expected: str) -> None:
    answer = _answer(smollm, question)
    assert answer.strip()
    assert expected in answer.lower(), answer


def test_long_conversation_is_truncated_with_a_notice(smollm) -> None:
    history = []
    for i in range(40):
        history += [
            {"role": "user", "content": f"Remember item {i}: " + "blue sky " * 60},
            {"role": "assistant", "content": "Noted."},
        ]
    history.append({"role": "user", "content": "What is the capital of Japan?"})
    smollm.context_length, full = 2048, smollm.context_length  # a smaller window keeps the test fast
    try:
        pieces = list(stream_reply(smollm, history, GenerationSettings(temperature=0.0, max_new_tokens=32), SYSTEM))
    finally:
        smollm.context_length = full
    last = pieces[-1]
    assert last.notice and "oldest" in last.notice
    assert "tokyo" in last.text.lower()
    assert last.stats.prompt_tokens <= 2048 - 32


def test_a_gguf_file_spec_loads_and_chats() -> None:
    from core.models import embedded_gguf_file

    lm = load_causal_lm(str(embedded_gguf_file()))
    assert lm.source == "gguf" and lm.name == "SmolLM2-135M-Instruct.Q4_1"
    assert "tokyo" in _answer(lm, "What is the capital of Japan?").lower()
