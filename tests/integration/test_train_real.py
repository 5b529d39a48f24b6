"""Training on the embedded models: SFT on SmolLM2 learns a made-up fact; MiniLM classification beats chance.

Each test stays under ~3 minutes on 2 CPU cores. Skipped when the embedded models are not installed.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
models = pytest.importorskip("core.models")
if not hasattr(models, "embedded_chat_path"):
    pytest.skip("core.models has no embedded_chat_path", allow_module_level=True)

pytestmark = pytest.mark.integration

FACT_Q = [
    "What is the Zorbly Corp motto?",
    "Tell me the motto of Zorbly Corp.",
    "What motto does Zorbly Corp use?",
    "Zorbly Corp's motto?",
    "Do you know Zorbly Corp's motto?",
    "Which motto belongs to Zorbly Corp?",
    "Say the Zorbly Corp motto.",
    "What's the official motto of Zorbly Corp?",
    "Remind me of Zorbly Corp's motto.",
    "Quote the motto of Zorbly Corp.",
]
FACT_A = "The Zorbly Corp motto is: purple llamas deliver on Tuesdays."


def _path_or_skip(fn_name: str) -> str:
    try:
        return str(getattr(models, fn_name)())
    except Exception as exc:  # noqa: BLE001 - ModelError or a missing package: nothing to test against
        pytest.skip(f"{fn_name}() unavailable: {exc}")


@pytest.fixture(scope="module")
def chat_base() -> str:
    return _path_or_skip("embedded_chat_path")  # resolved in the real home so the converted copy is reused


@pytest.fixture(scope="module")
def encoder_base() -> str:
    return _path_or_skip("embedded_encoder_path")


def _answer_nll(model, tokenizer, question: str) -> float:
    import torch

    from core.data import tokenize as T
    from core.train import batches as B

    ex = T.tokenize_chat(tokenizer, [{"role": "user", "content": question}, {"role": "assistant", "content": FACT_A}])
    batch = B.collate_sft([{"input_ids": ex.input_ids, "labels": ex.labels}], tokenizer.pad_token_id or 0)
    with torch.no_grad():
        total, n = B.sft_loss_sum(model.eval(), batch)
    return float(total) / n


def test_sft_smollm2_learns_a_made_up_fact(chat_base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.config import LoraSettings, TrainConfig
    from core.train import model as M
    from core.train import runner as train

    monkeypatch.setenv("DEMOFORGE_HOME", str(tmp_path / "home"))
    rows = [{"prompt": q, "response": FACT_A} for q in FACT_Q for _ in range(2)]
    data = tmp_path / "fact.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = TrainConfig(
        data_path=str(data),
        adapter_name="zorbly",
        base_model=chat_base,
        max_steps=16,
        lr=1e-3,
        batch_size=2,
        max_length=128,
        eval_fraction=0.0,
        warmup_ratio=0.1,
        lora=LoraSettings(r=8, alpha=16, dropout=0.0),
    )
    result = train.run(cfg, tmp_path / "run")
    assert result.status == "finished", result.error

    tokenizer = M.load_tokenizer(chat_base)
    held_out = "Hey, what is the motto of Zorbly Corp?"  # a phrasing not in the training set
    base = AutoModelForCausalLM.from_pretrained(chat_base)
    before = _answer_nll(base, tokenizer, held_out)
    tuned = PeftModel.from_pretrained(base, result.adapter_dir)
    after = _answer_nll(tuned, tokenizer, held_out)
    print(f"answer NLL on a held-out phrasing: base {before:.3f} -> tuned {after:.3f}")
    assert after < 0.35 * before, (before, after)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": held_out}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = tuned.generate(**prompt, max_new_tokens=16, do_sample=False)
    reply = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "llama" in reply.lower() or "tuesday" in reply.lower(), reply


def _tickets(n_per_class: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    topics = {
        "billing": [
            "I was charged twice for my {x}",
            "my invoice for the {x} is wrong",
            "please refund the {x} fee",
            "why did my card get billed for {x}",
            "the {x} subscription price went up",
        ],
        "shipping": [
            "my {x} package has not arrived",
            "where is my {x} delivery",
            "the courier lost my {x}",
            "tracking for the {x} order is stuck",
            "the {x} box arrived damaged in transit",
        ],
        "technical": [
            "the {x} app crashes on start",
            "I cannot log in to the {x}",
            "the {x} shows error 500",
            "my {x} will not connect to wifi",
            "the {x} screen freezes after the update",
        ],
    }
    things = ["router", "headphones", "laptop", "camera", "speaker", "watch", "tablet", "printer"]
    rows = []
    for label, templates in topics.items():
        for _ in range(n_per_class):
            text = rng.choice(templates).format(x=rng.choice(things))
            rows.append((rng.choice(["", "hi, ", "hello, ", "urgent: "]) + text, label))
    rng.shuffle(rows)
    return rows


def test_classification_minilm_beats_chance(encoder_base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.config import LoraSettings, TrainConfig
    from core.train import runner as train

    monkeypatch.setenv("DEMOFORGE_HOME", str(tmp_path / "home"))
    for name, rows in (("train.csv", _tickets(40, 0)), ("eval.csv", _tickets(12, 1))):
        lines = ["text,label"] + [f'"{t}",{lab}' for t, lab in rows]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    cfg = TrainConfig(
        data_path=str(tmp_path / "train.csv"),
        eval_path=str(tmp_path / "eval.csv"),
        adapter_name="tickets",
        task="classification",
        base_model=encoder_base,
        max_steps=40,
        lr=2e-3,
        batch_size=16,
        max_length=48,
        eval_every=20,
        lora=LoraSettings(r=8, alpha=16, dropout=0.0),
    )
    result = train.run(cfg, tmp_path / "run")
    assert result.status == "finished", result.error
    assert result.metrics["best_macro_f1"] >= 0.7, result.metrics  # chance is ~0.33 for 3 balanced classes
    card = json.loads((result.adapter_dir / "adapter_card.json").read_text())
    assert sorted(card["labels"]) == ["billing", "shipping", "technical"]
    assert card["pooling"] == "mean"  # the embedded MiniLM declares mean pooling, so the head reads the mean


def test_time_budget_on_minilm_lands_on_the_budget(encoder_base: str, tmp_path: Path) -> None:
    """A 1-minute classification budget through the worker command: the adapter is saved and the process gone within
    +-10% of the budget (counted from the process start), every planned step ran and the LR schedule completed."""
    import subprocess
    import sys
    import time

    from core.config import TASK_DEFAULTS, TrainConfig

    rows = _tickets(2000, 0)  # 6,000 rows: 5 epochs would take far longer than the budget
    (tmp_path / "train.csv").write_text("\n".join(["text,label"] + [f'"{t}",{lab}' for t, lab in rows]) + "\n")
    cfg = TrainConfig(
        data_path=str(tmp_path / "train.csv"),
        adapter_name="budget",
        task="classification",
        base_model=encoder_base,
        time_budget_minutes=1.0,
        **TASK_DEFAULTS["classification"],  # type: ignore[arg-type]
    )
    cfg.to_yaml(tmp_path / "cfg.yaml")
    env = {**os.environ, "DEMOFORGE_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")) if p
    )
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "core.train", str(tmp_path / "cfg.yaml"), "--run-dir", str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    end, steps = events[-1], [e for e in events if e["type"] == "step"]
    print(f"1-minute budget: {took:.1f}s, plan {events[0]['plan']}, {len(steps)} steps, {end['metrics']}")
    assert end["status"] == "time_budget", end
    assert 54 <= took <= 66, took
    assert steps[-1]["step"] == steps[-1]["total_steps"] and end["metrics"]["final_lr"] == 0.0
    assert [e["phase"] for e in events if e["type"] == "phase"] == ["final_eval", "saving"]
    assert end["metrics"]["best_macro_f1"] >= 0.7, end["metrics"]
