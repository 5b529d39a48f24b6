"""The CUDA paths, on tiny models: device and precision choice, LoRA and QLoRA training, classification, chat
and the classifiers on a GPU, and adapters trained there that load on a CPU.

CI has no GPU, so this module skips there; it is run on a lent GPU machine (see the README's "On a GPU").
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from tests.toy_data import cls_cfg, sft_cfg, write_cls, write_sft

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def read_events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


def test_auto_picks_cuda_with_bf16_for_chat_training_and_classify() -> None:
    from core.classify.classifiers import pick_inference_dtype
    from core.models import pick_device, pick_dtype
    from core.train.model import pick_mixed_precision

    assert pick_device("auto") == "cuda"
    bf16 = torch.cuda.is_bf16_supported()
    assert pick_dtype("auto", "cuda") == (torch.bfloat16 if bf16 else torch.float16)
    assert pick_mixed_precision("auto") == ("bf16" if bf16 else "fp16")
    assert pick_inference_dtype("auto", "cuda") == (torch.bfloat16 if bf16 else torch.float32)


def _assert_reloads_on_cpu(tiny_models: dict[str, Path], adapter_dir: Path, lora_hash: str) -> None:
    """An adapter trained on the GPU loads on a CPU fp32 base, with the very weights the run reported."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.train import model as M

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["llama"]), adapter_dir)
    assert next(reloaded.parameters()).device.type == "cpu"
    assert M.state_hash(M.lora_state(reloaded)) == lora_hash


@pytest.mark.parametrize("qlora", [False, True], ids=["lora-bf16", "qlora-4bit"])
def test_sft_run_on_cuda_learns_and_its_adapter_loads_on_a_cpu(
    tiny_models: dict[str, Path], tmp_path: Path, demoforge_home: Path, qlora: bool
) -> None:
    from core.train import runner as train

    if qlora:
        pytest.importorskip("bitsandbytes")
    run_dir = tmp_path / "run"
    cfg = sft_cfg(
        tiny_models,
        write_sft(tmp_path / "d.jsonl"),
        eval_every=10,
        precision="auto",
        qlora=qlora,
        lr=1e-2 if qlora else 3e-2,
        max_steps=60 if qlora else 40,
        adapter_name="gpu-qlora" if qlora else "gpu-lora",
    )
    result = train.run(cfg, run_dir)
    assert result.status == "finished", result.error
    events = read_events(run_dir)
    start = next(e for e in events if e["type"] == "start")
    assert start["device"].startswith("cuda") and start["mixed_precision"] in ("bf16", "fp16"), start
    steps = [e for e in events if e["type"] == "step"]
    first, last = steps[:5], steps[-5:]
    assert sum(e["loss"] for e in last) < 0.6 * sum(e["loss"] for e in first), [e["loss"] for e in steps]
    evals = [e for e in events if e["type"] == "eval"]
    assert evals[-1]["metrics"]["eval_loss"] < evals[0]["metrics"]["eval_loss"]
    card = json.loads((result.adapter_dir / "adapter_card.json").read_text())
    assert card["config"]["qlora"] is qlora
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in result.adapter_dir.iterdir())
    _assert_reloads_on_cpu(tiny_models, result.adapter_dir, events[-1]["lora_hash"])


def test_time_budget_on_cuda_lands_within_ten_percent(
    tiny_models: dict[str, Path], tmp_path: Path, demoforge_home: Path
) -> None:
    """The plan and the re-plans hold on a GPU too, where kernels run asynchronously: each step's loss is read
    back, so a step's wall time includes its kernels."""
    import time

    from core.train import runner as train

    budget_min = 0.25
    cfg = sft_cfg(
        tiny_models,
        write_sft(tmp_path / "d.jsonl"),
        max_steps=1_000_000,
        time_budget_minutes=budget_min,
        precision="auto",
        warmup_ratio=0.1,
    )
    t0 = time.monotonic()
    result = train.run(cfg, tmp_path / "run", t_start=t0)
    took = time.monotonic() - t0
    assert result.status == "time_budget", result.error
    assert 0.9 * budget_min * 60 <= took <= 1.1 * budget_min * 60, (took, result.metrics)
    steps = [e for e in read_events(tmp_path / "run") if e["type"] == "step"]
    assert steps[-1]["step"] == steps[-1]["total_steps"] and steps[-1]["lr"] == 0.0


def test_classification_run_on_cuda_and_the_classifier_on_both_devices(
    tiny_models: dict[str, Path], tmp_path: Path, demoforge_home: Path
) -> None:
    from core.classify.classifiers import FineTunedClassifier
    from core.train import runner as train

    data = write_cls(tmp_path / "c.csv", n=320)
    cfg = cls_cfg(tiny_models["bert"], data, max_steps=300, eval_every=50, precision="auto")
    result = train.run(cfg, tmp_path / "run")
    assert result.status == "finished", result.error
    assert result.metrics["best_macro_f1"] >= 0.9, result.metrics
    texts = ["the movie was really good", "the film was very awful", "a great story", "poor plot"]
    expected = ["positive", "negative", "positive", "negative"]
    gpu = FineTunedClassifier.load(result.adapter_dir, device="auto")
    cpu = FineTunedClassifier.load(result.adapter_dir, device="cpu", dtype="float32")
    assert gpu.device.type == "cuda" and cpu.device.type == "cpu"
    assert [p.label for p in gpu.predict(texts)] == expected
    assert [p.label for p in cpu.predict(texts)] == expected
    # bf16 weights on the GPU against fp32 on the CPU: the same probabilities to bf16's precision
    got, ref = gpu.predict_proba(texts), cpu.predict_proba(texts)
    assert torch.allclose(got, ref, atol=0.03), (got, ref)


def test_zero_shot_on_cuda_agrees_with_the_cpu(tiny_models: dict[str, Path]) -> None:
    from core.classify.zero_shot import SentenceEncoder, ZeroShotEmbeddingClassifier

    texts = ["the movie was really good", "poor plot", "a film"]
    probs = []
    for device, dtype in (("auto", "auto"), ("cpu", "float32")):
        enc = SentenceEncoder.load(tiny_models["bert"], device=device, dtype=dtype)
        probs.append(ZeroShotEmbeddingClassifier("good, bad", enc).predict_proba(texts))
        assert enc.device.type == ("cuda" if device == "auto" else "cpu")
    # the tiny encoder's scores are far from uniform (0.19-0.56 apart on a CPU): agreeing within 0.03 means something
    assert (probs[1][:, 0] - probs[1][:, 1]).abs().min() > 0.1, probs
    assert torch.allclose(probs[0], probs[1], atol=0.03), probs


def test_chat_streams_and_stops_on_cuda(tiny_models: dict[str, Path]) -> None:
    from core.chat import stream_reply
    from core.config import GenerationSettings
    from core.models import load_causal_lm

    loaded = load_causal_lm(str(tiny_models["llama"]))
    assert loaded.device == "cuda" and next(loaded.model.parameters()).device.type == "cuda"
    # A random tiny model would often hit EOS after a few tokens; the stop test needs a long reply.
    loaded.model.generation_config.eos_token_id = None
    loaded.context_length = 8192  # room for the 4000-token reply below (build_prompt keeps the reply inside it)
    history = [{"role": "user", "content": "w1"}]
    greedy = GenerationSettings(temperature=0.0, max_new_tokens=40, repetition_penalty=1.0)
    pieces = list(stream_reply(loaded, history, greedy))
    assert pieces[-1].done and pieces[-1].stats.new_tokens == 40 and len(pieces) > 2
    # the same greedy reply twice: nothing in the CUDA path draws randomness
    assert list(stream_reply(loaded, history, greedy))[-1].text == pieces[-1].text
    stop, last = threading.Event(), None
    sampled = GenerationSettings(max_new_tokens=4000, seed=1)
    for i, piece in enumerate(stream_reply(loaded, history, sampled, stop=stop)):
        if i == 3:
            stop.set()
        last = piece
    assert last.done and last.stats.stopped
    # Stopped within a few tokens of the flag, far short of the 4000 asked for.
    assert last.stats.new_tokens < 30
