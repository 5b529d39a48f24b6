"""Chat backends without llama.cpp: the engine routes through its backend, the selector falls back to transformers
with a notice, the fallback wrapper takes over a failing or unable fast engine, and peft adapters are written as
GGUF LoRAs whose weights reproduce peft's update exactly."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from core import adapters
from core.backends import ChatBackend, FallbackBackend, lora_gguf
from core.backends.transformers_backend import TransformersBackend
from core.chat import ChatError, ReplyStats, StreamPiece
from core.config import AppConfig, ConfigError, GenerationSettings
from core.engine import Engine

GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=6, repetition_penalty=1.0)
HELLO = [{"role": "user", "content": "good movie"}]


class FakeBackend(ChatBackend):
    """Answers with fixed words, or fails the way it is told to (after ``fail_after`` pieces)."""

    def __init__(self, name: str, fail: BaseException | None = None, fail_after: int = 0, refuse: str | None = None):
        self.name, self.fail, self.fail_after, self.refuse = name, fail, fail_after, refuse
        self.calls: list[str | None] = []
        self.switched: list[str | None] = []
        self.forgotten: list[str] = []

    def stream(self, messages, settings, system_prompt=None, adapter=None, stop=None) -> Iterator[StreamPiece]:
        self.calls.append(adapter)
        text = ""
        for i, word in enumerate(["one", " two", " three"]):
            if self.fail is not None and i == self.fail_after:
                raise self.fail
            text += word
            yield StreamPiece(text=f"{self.name}:{text}")
        yield StreamPiece(text=f"{self.name}:{text}", stats=ReplyStats(new_tokens=3), done=True)

    @property
    def label(self) -> str:
        return f"fake {self.name}"

    @property
    def context_length(self) -> int:
        return 128

    def cannot_serve(self, adapter: str) -> str | None:
        return self.refuse

    def switch_adapter(self, name: str | None) -> float:
        self.switched.append(name)
        return 0.0

    def forget_adapter(self, name: str) -> None:
        self.forgotten.append(name)


def _wrap(primary: FakeBackend) -> tuple[FallbackBackend, list[str], FakeBackend]:
    why: list[str] = []
    slow = FakeBackend("slow")

    def make(reason: str) -> ChatBackend:
        why.append(reason)
        return slow

    return FallbackBackend(primary, make), why, slow


def test_fast_engine_serves_when_it_works_and_the_slow_one_is_never_built() -> None:
    wrapped, why, _ = _wrap(FakeBackend("fast"))
    pieces = list(wrapped.stream(HELLO, GREEDY))
    assert pieces[-1].text == "fast:one two three" and pieces[-1].done
    assert all(p.notice is None for p in pieces)
    assert why == []  # transformers (the torch model) is not even loaded
    assert wrapped.label == "fake fast"


def test_run_time_failure_mid_reply_restarts_it_on_transformers_with_a_notice() -> None:
    wrapped, why, slow = _wrap(FakeBackend("fast", fail=RuntimeError("llama_decode returned 1"), fail_after=1))
    pieces = list(wrapped.stream(HELLO, GREEDY))
    assert pieces[0].text == "fast:one"  # what the fast engine had already streamed ...
    assert pieces[-1].text == "slow:one two three" and pieces[-1].done  # ... is replaced by the full reply
    assert "transformers" in pieces[-1].notice and "llama_decode returned 1" in pieces[-1].notice
    assert len(why) == 1 and slow.calls == [None]


def test_a_wrong_request_is_not_retried_on_transformers() -> None:
    wrapped, why, _ = _wrap(FakeBackend("fast", fail=ChatError("Your message is too long"), fail_after=0))
    with pytest.raises(ChatError, match="too long"):
        list(wrapped.stream(HELLO, GREEDY))
    assert why == []


def test_an_adapter_the_fast_engine_cannot_apply_goes_to_transformers() -> None:
    primary = FakeBackend("fast", refuse="DoRA adapters have no GGUF LoRA form")
    wrapped, why, slow = _wrap(primary)
    last = list(wrapped.stream(HELLO, GREEDY, adapter="dora-bot"))[-1]
    assert last.text == "slow:one two three"
    assert "DoRA" in last.notice
    assert primary.calls == [] and slow.calls == ["dora-bot"]
    assert list(wrapped.stream(HELLO, GREEDY))[-1].text.startswith("fast:")  # the base stays on the fast engine
    wrapped.switch_adapter("dora-bot")
    assert slow.switched == ["dora-bot"] and primary.switched == []
    wrapped.forget_adapter("dora-bot")
    assert primary.forgotten == slow.forgotten == ["dora-bot"]


def test_engine_routes_chat_label_and_adapters_through_its_backend(tiny_models: dict[str, Path]) -> None:
    engine = Engine(AppConfig(model=str(tiny_models["llama"]), device="cpu", dtype="float32"))
    fake = FakeBackend("fast")
    engine._backend = fake
    assert engine.chat_label() == "fake fast"
    assert list(engine.chat_stream(HELLO, GREEDY, adapter="x"))[-1].text == "fast:one two three"
    assert fake.calls == ["x"]
    engine.switch_adapter("y")
    engine.forget_adapter("y")
    assert fake.switched == ["y"] and fake.forgotten == ["y"]
    assert engine._chat is None  # the torch model was never loaded for any of it


def test_transformers_engine_is_the_reference_path(tiny_models: dict[str, Path]) -> None:
    engine = Engine(AppConfig(model=str(tiny_models["llama"]), device="cpu", dtype="float32", engine="transformers"))
    assert isinstance(engine.backend, TransformersBackend)
    assert engine.chat_label().endswith("· transformers")
    pieces = list(engine.chat_stream(HELLO, GREEDY))
    assert pieces[-1].done and pieces[-1].stats.new_tokens > 0
    stop = threading.Event()
    stop.set()  # a stop before the first step still ends with a last piece marked stopped
    assert list(engine.backend.stream(HELLO, GREEDY, stop=stop))[-1].stats.stopped


def test_fast_engine_unavailable_falls_back_with_a_visible_notice(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("core.backends.select.llama_cpp_missing", lambda: None)  # installed or not
    config = AppConfig(model=str(tiny_models["llama"]), device="cpu", dtype="float32", engine="llamacpp")
    engine = Engine(config)  # a safetensors folder: llama.cpp serves GGUF only
    assert isinstance(engine.backend, TransformersBackend)
    assert "fast engine off" in engine.chat_label() and "GGUF" in engine.chat_label()

    monkeypatch.setattr("core.backends.select.llama_cpp_missing", lambda: "llama-cpp-python is not installed")
    engine = Engine(AppConfig(model="default", device="cpu", engine="auto"))
    assert isinstance(engine.backend, TransformersBackend)
    assert "llama-cpp-python is not installed" in engine.backend.notice


def test_engine_flag_is_checked() -> None:
    with pytest.raises(ConfigError, match="auto"):
        AppConfig(engine="vllm")


# --- GGUF LoRA conversion -------------------------------------------------------------------------------------------


def _tiny_adapter(base: Path, name: str, seed: int, **lora: object) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, **lora)
    )
    folder = adapters.adapters_dir() / name
    peft_model.save_pretrained(folder)
    (folder / "adapter_card.json").write_text(json.dumps({"name": name, "task": "sft", "base_model": str(base)}))
    return folder


def _tiny_base(base: Path) -> lora_gguf.BaseInfo:
    """What the tiny Llama's GGUF would report (ggml shapes are (in, out))."""
    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = model.config
    tensors = {}
    for i in range(cfg.num_hidden_layers):
        for short, gguf_name in [("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"), ("o", "attn_output")]:
            w = getattr(model.model.layers[i].self_attn, f"{short}_proj").weight
            tensors[f"blk.{i}.{gguf_name}.weight"] = (w.shape[1], w.shape[0])
        for short, gguf_name in [("gate", "ffn_gate"), ("up", "ffn_up"), ("down", "ffn_down")]:
            w = getattr(model.model.layers[i].mlp, f"{short}_proj").weight
            tensors[f"blk.{i}.{gguf_name}.weight"] = (w.shape[1], w.shape[0])
    return lora_gguf.BaseInfo("llama", cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, tensors)


def test_peft_adapter_becomes_a_gguf_lora_with_peft_scale_and_llama_row_order(
    tiny_models: dict[str, Path], demoforge_home: Path
) -> None:
    import gguf
    from safetensors.numpy import load_file

    base = tiny_models["llama"]
    folder = _tiny_adapter(base, "bot", 1, use_rslora=True)
    info = _tiny_base(base)
    path = lora_gguf.convert(folder, Path("unused.gguf"), info)
    assert path.parent == folder and path.name.endswith(".lora.gguf")
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 0.0
    got = {t.name: np.array(t.data).reshape([int(d) for d in reversed(t.shape)]) for t in reader.tensors}
    assert len(got) == 2 * len(info.tensors)  # every linear layer of every block, an A and a B each
    peft = load_file(str(folder / "adapter_model.safetensors"))
    scale = 8 / np.sqrt(4)  # rsLoRA: alpha / sqrt(r)
    for module, gguf_name, heads in [("self_attn.v_proj", "attn_v", None), ("self_attn.q_proj", "attn_q", 2)]:
        a = peft[f"base_model.model.model.layers.1.{module}.lora_A.weight"]
        b = peft[f"base_model.model.model.layers.1.{module}.lora_B.weight"]
        ga, gb = got[f"blk.1.{gguf_name}.weight.lora_a"], got[f"blk.1.{gguf_name}.weight.lora_b"]
        np.testing.assert_allclose(ga, a)
        want = (b * scale) if heads is None else lora_gguf._permute(b * scale, heads)
        np.testing.assert_allclose(gb, want, rtol=1e-6)
    # q's rows really move (a permutation that did nothing would hide a missing one)
    b_q = peft["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"]
    assert not np.allclose(lora_gguf._permute(b_q, 2), b_q)

    # Cached: a second use converts nothing; retrained weights get a fresh file and the stale one goes.
    mtime = path.stat().st_mtime_ns
    assert lora_gguf.convert(folder, Path("unused.gguf"), info) == path and path.stat().st_mtime_ns == mtime
    _tiny_adapter(base, "bot", 2)
    fresh = lora_gguf.convert(folder, Path("unused.gguf"), info)
    assert fresh != path and fresh.is_file() and not path.exists()


def test_adapters_without_a_gguf_lora_form_are_named_with_the_reason(
    tiny_models: dict[str, Path], demoforge_home: Path
) -> None:
    base = tiny_models["llama"]
    info = _tiny_base(base)
    dora = _tiny_adapter(base, "dora", 1, use_dora=True)
    assert "DoRA" in lora_gguf.unsupported_reason(dora, info)
    with pytest.raises(adapters.AdapterError, match="DoRA"):
        lora_gguf.convert(dora, Path("unused.gguf"), info)
    other_arch = lora_gguf.BaseInfo("qwen3moe", 2, 2, 2, info.tensors)
    assert "qwen3moe" in lora_gguf.unsupported_reason(_tiny_adapter(base, "plain", 1), other_arch)
    smaller = lora_gguf.BaseInfo("llama", 1, 2, 2, {k: v for k, v in info.tensors.items() if k.startswith("blk.0.")})
    with pytest.raises(adapters.AdapterError, match="another base model"):
        lora_gguf.convert(_tiny_adapter(base, "plain2", 1), Path("unused.gguf"), smaller)


def _feed(tuner, per_token: dict[int, float], steps: int) -> list[int]:
    """Run ``steps`` decode-only steps of 4 tokens where ``per_token[threads]`` seconds each token takes."""
    used = []
    for _ in range(steps):
        n = tuner.threads()
        used.append(n)
        tuner.record(per_token[n] * 4, 4, decode_only=True)
    return used


def test_thread_tuner_keeps_all_cores_on_a_quiet_machine_and_drops_to_one_when_they_are_contended() -> None:
    from core.backends.threads import ThreadTuner, candidates

    assert candidates(2) == (2, 1) and candidates(8) == (8, 4, 1) and candidates(1) == (1,)
    tuner = ThreadTuner(candidates(2))
    quiet = {2: 0.010, 1: 0.019}  # two threads ~1.9x faster, as measured on a quiet 2-core machine
    used = _feed(tuner, quiet, 200)
    assert tuner.current == 2 and tuner.switches == 0
    # the losing probes are short and back off: nearly every step ran on the faster count
    assert used.count(1) <= 20, used.count(1)
    busy = {2: 0.300, 1: 0.050}  # a descheduled thread stalls every barrier: two threads 6x slower than one
    used = _feed(tuner, busy, 60)
    assert tuner.current == 1 and tuner.switches == 1
    # found within a few windows, not after the backed-off probe interval; a later probe of two threads stops
    # after its first slow step
    assert used[:30].count(1) >= 20 and used[-30:].count(1) >= 29
    used = _feed(tuner, quiet, 400)  # the load goes away: a later probe finds two threads faster again
    assert tuner.current == 2 and used[-50:].count(2) >= 45


def test_thread_tuner_ignores_the_cold_first_steps_after_a_load() -> None:
    from core.backends.threads import ThreadTuner

    tuner = ThreadTuner((2, 1))
    # the first steps after a load run on cold caches (weights still paging in): 3x slower, whatever the count
    used = _feed(tuner, {2: 0.030, 1: 0.057}, tuner.warmup)
    assert used == [2] * tuner.warmup
    _feed(tuner, {2: 0.010, 1: 0.019}, 100)  # warm: two threads ~1.9x faster, as on a quiet 2-core machine
    assert tuner.current == 2 and tuner.switches == 0


def test_thread_tuner_ignores_prefill_steps_and_noise_within_its_margin() -> None:
    from core.backends.threads import ThreadTuner

    tuner = ThreadTuner((2, 1))
    for _ in range(100):
        tuner.record(5.0, 400, decode_only=False)  # prompt chunks: another shape, never compared
    assert tuner.threads() == 2 and tuner._recent == deque()
    _feed(tuner, {2: 0.010, 1: 0.0095}, 300)  # 5% apart: within the margin, no flip-flopping
    assert tuner.current == 2 and tuner.switches == 0
    with pytest.raises(ValueError, match=">= 1"):
        ThreadTuner((0,))
