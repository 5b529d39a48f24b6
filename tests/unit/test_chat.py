"""core.chat on a tiny Llama: template, truncation, sampling settings, streaming and stop."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from core.chat import (
    ChatError,
    build_prompt,
    generation_kwargs,
    normalise_messages,
    render_ids,
    stream_reply,
)
from core.config import ConfigError, GenerationSettings
from core.models import LoadedModel, load_causal_lm


@pytest.fixture(scope="module")
def tiny_lm(tiny_models: dict[str, Path]) -> LoadedModel:
    lm = load_causal_lm(str(tiny_models["llama"]), device="cpu", dtype="float32")
    # A random tiny model would often hit EOS after a few tokens; streaming and stop tests need long replies.
    lm.model.generation_config.eos_token_id = None
    lm.context_length = 8192  # rope extrapolates; lets stop tests ask for thousands of tokens
    return lm


def _generate_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "demoforge-generate" and t.is_alive()]


def test_render_uses_template_with_system_first_and_generation_prompt(tiny_lm: LoadedModel) -> None:
    msgs = normalise_messages([{"role": "user", "content": "good movie"}], "the film")
    text = tiny_lm.tokenizer.decode(render_ids(tiny_lm.tokenizer, msgs))
    assert text.index("system") < text.index("user")
    assert text.rstrip().endswith("assistant")


def test_fallback_template_for_tokenizer_without_one(tiny_models: dict[str, Path]) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    tok.chat_template = None
    ids = render_ids(tok, [{"role": "user", "content": "good"}])
    assert tok.chat_template  # a fallback template was set
    assert "good" in tok.decode(ids)


def test_history_system_messages_replaced_by_setting_and_roles_checked() -> None:
    msgs = normalise_messages(
        [{"role": "system", "content": "old"}, {"role": "user", "content": "hi"}], system_prompt="new"
    )
    assert msgs == [{"role": "system", "content": "new"}, {"role": "user", "content": "hi"}]
    with pytest.raises(ChatError, match="role 'robot'"):
        normalise_messages([{"role": "robot", "content": "x"}], None)
    with pytest.raises(ChatError, match="empty"):
        normalise_messages([{"role": "user", "content": "   "}], None)
    with pytest.raises(ChatError, match="end with a user message"):
        normalise_messages([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], None)


def test_truncation_drops_oldest_turns_keeps_system_and_last_message(tiny_lm: LoadedModel) -> None:
    tok = tiny_lm.tokenizer
    history = []
    for i in range(12):
        history += [{"role": "user", "content": f"w{i} " * 10}, {"role": "assistant", "content": f"r{i} " * 10}]
    history.append({"role": "user", "content": "good movie"})
    msgs = normalise_messages(history, "the film")
    full = len(render_ids(tok, msgs))
    plan = build_prompt(tok, msgs, context_length=full // 2 + 16, max_new_tokens=16)
    assert plan.dropped_messages > 0
    assert plan.notice and "oldest" in plan.notice and str(plan.dropped_messages) in plan.notice
    assert len(plan.input_ids) <= full // 2
    text = tok.decode(plan.input_ids)
    assert "the film" in text and "good movie" in text  # system prompt and last message kept
    assert "w0" not in text  # oldest turn gone
    # The kept history starts with a user turn, never a dangling assistant reply.
    first_turn = text.split("<|im_start|>")[2]
    assert first_turn.strip().startswith("user")


def test_no_notice_when_everything_fits(tiny_lm: LoadedModel) -> None:
    msgs = normalise_messages([{"role": "user", "content": "good"}], None)
    plan = build_prompt(tiny_lm.tokenizer, msgs, context_length=256, max_new_tokens=16)
    assert plan.dropped_messages == 0 and plan.notice is None


def test_single_message_longer_than_context_is_a_clear_error(tiny_lm: LoadedModel) -> None:
    msgs = normalise_messages([{"role": "user", "content": "good " * 500}], None)
    with pytest.raises(ChatError, match=r"too long.*reads at most 240") as err:
        build_prompt(tiny_lm.tokenizer, msgs, context_length=256, max_new_tokens=16)
    assert "Shorten" in str(err.value)


def test_max_new_tokens_larger_than_context_is_a_clear_error(tiny_lm: LoadedModel) -> None:
    msgs = normalise_messages([{"role": "user", "content": "good"}], None)
    with pytest.raises(ChatError, match="Lower max new tokens"):
        build_prompt(tiny_lm.tokenizer, msgs, context_length=256, max_new_tokens=256)


def test_generation_kwargs_greedy_vs_sampling(tiny_lm: LoadedModel) -> None:
    greedy = generation_kwargs(GenerationSettings(temperature=0.0, max_new_tokens=5), tiny_lm.tokenizer)
    assert greedy["do_sample"] is False and greedy["temperature"] is None and greedy["max_new_tokens"] == 5
    sample = generation_kwargs(
        GenerationSettings(temperature=1.3, top_p=0.5, top_k=7, repetition_penalty=1.2), tiny_lm.tokenizer
    )
    assert sample["do_sample"] is True
    assert (sample["temperature"], sample["top_p"], sample["top_k"], sample["repetition_penalty"]) == (
        1.3,
        0.5,
        7,
        1.2,
    )


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"temperature": 3.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"top_k": -1}, "top_k"),
        ({"repetition_penalty": 5.0}, "repetition_penalty"),
        ({"seed": -3}, "seed"),
    ],
)
def test_impossible_sampling_settings_are_rejected(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        GenerationSettings(**kwargs)


def _reply(lm: LoadedModel, settings: GenerationSettings) -> str:
    *_, last = stream_reply(lm, [{"role": "user", "content": "good movie"}], settings)
    assert last.done and last.stats is not None
    return last.text


def test_greedy_is_deterministic_and_seed_fixes_sampling(tiny_lm: LoadedModel) -> None:
    greedy = GenerationSettings(temperature=0.0, max_new_tokens=12)
    assert _reply(tiny_lm, greedy) == _reply(tiny_lm, greedy)
    seeded = GenerationSettings(temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=12, seed=123)
    assert _reply(tiny_lm, seeded) == _reply(tiny_lm, seeded)
    others = {
        _reply(tiny_lm, GenerationSettings(temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=12, seed=s))
        for s in range(4)
    }
    assert len(others) > 1


def test_stream_yields_growing_pieces_and_stats(tiny_lm: LoadedModel) -> None:
    pieces = list(
        stream_reply(
            tiny_lm, [{"role": "user", "content": "good"}], GenerationSettings(temperature=0.0, max_new_tokens=20)
        )
    )
    texts = [p.text for p in pieces if not p.done]
    assert len(texts) >= 5
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    stats = pieces[-1].stats
    assert stats.new_tokens == 20 and stats.prompt_tokens > 0 and not stats.stopped
    assert stats.first_token_s is not None and stats.decode_tokens_per_s > 0
    assert "tok/s" in stats.summary()


def test_closing_the_stream_ends_the_generate_thread(tiny_lm: LoadedModel) -> None:
    gen = stream_reply(
        tiny_lm, [{"role": "user", "content": "good"}], GenerationSettings(temperature=0.0, max_new_tokens=4000)
    )
    for _, _piece in zip(range(3), gen):
        pass
    assert _generate_threads(), "generation should be running while the stream is open"
    start = time.perf_counter()
    gen.close()  # what Gradio does when the user presses Stop
    deadline = time.perf_counter() + 2.0
    while _generate_threads() and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert not _generate_threads()
    assert time.perf_counter() - start < 2.0


def test_stop_event_ends_reply_early_and_marks_it_stopped(tiny_lm: LoadedModel) -> None:
    stop = threading.Event()
    last = None
    for i, piece in enumerate(
        stream_reply(
            tiny_lm,
            [{"role": "user", "content": "good"}],
            GenerationSettings(temperature=0.0, max_new_tokens=4000),
            stop=stop,
        )
    ):
        if i == 3:
            stop.set()
        last = piece
    assert last.done and last.stats.stopped
    # One more token step may finish after the flag is seen, never hundreds.
    assert last.stats.new_tokens < 30


def test_generation_error_is_raised_not_swallowed(tiny_lm: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(tiny_lm.model, "generate", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        list(stream_reply(tiny_lm, [{"role": "user", "content": "good"}], GenerationSettings(max_new_tokens=4)))
    assert not _generate_threads()
