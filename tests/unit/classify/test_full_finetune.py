"""Full fine-tuning of an encoder classifier (TrainConfig.full_finetune): every encoder weight trains, and the
result saves, reloads and classifies through the same adapter path as LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.classify.classifiers import FineTunedClassifier
from core.config import FULL_FINETUNE_LR, TASK_DEFAULTS, ConfigError, LoraSettings, TrainConfig
from tests.toy_data import cls_cfg


def test_full_finetune_config_rules() -> None:
    cfg = TrainConfig(data_path="d.csv", adapter_name="a", task="classification", full_finetune=True)
    assert cfg.lr == FULL_FINETUNE_LR < TASK_DEFAULTS["classification"]["lr"]
    assert (
        TrainConfig(data_path="d.csv", adapter_name="a", task="classification", full_finetune=True, lr=3e-5).lr == 3e-5
    )
    with pytest.raises(ConfigError, match="classification only"):
        TrainConfig(data_path="d.csv", adapter_name="a", task="sft", full_finetune=True)
    with pytest.raises(ConfigError, match="qlora"):
        TrainConfig(data_path="d.csv", adapter_name="a", task="classification", full_finetune=True, qlora=True)


def test_full_finetune_trains_every_encoder_weight_and_reloads(
    tiny_models: dict[str, Path], tmp_path: Path, demoforge_home: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    from core.train import model as tl
    from core.train import runner as train

    rows = ["text,label"] + [
        f"the movie was {w},{'positive' if w in ('good', 'great') else 'negative'}"
        for w in ("good", "bad", "great", "awful") * 10
    ]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = cls_cfg(
        tiny_models["bert"],
        tmp_path / "d.csv",
        adapter_name="toy-full",
        full_finetune=True,
        max_steps=6,
        lr=1e-2,
        batch_size=8,
        max_length=16,
        eval_fraction=0.2,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
    )
    model = tl.build_model(cfg, str(tiny_models["bert"]), ["negative", "positive"], 0)
    total = sum(p.numel() for p in model.parameters() if not p.requires_grad)  # frozen originals behind wrappers
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable >= 0.95 * total  # the whole encoder trains, not a low-rank slice

    result = train.run(cfg, tmp_path / "run")
    assert result.status == "finished", result.error
    saved = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    base = AutoModelForSequenceClassification.from_pretrained(tiny_models["bert"], num_labels=2)
    key = next(k for k in saved if "encoder" in k and k.endswith("layer.0.attention.self.query.weight"))
    assert not torch.allclose(saved[key], base.bert.encoder.layer[0].attention.self.query.weight)  # weights moved
    clf = FineTunedClassifier.load(result.adapter_dir, device="cpu", dtype="float32")
    assert clf.labels == ["negative", "positive"]
    tuned_query = clf.model.bert.encoder.layer[0].attention.self.query.weight
    assert torch.allclose(tuned_query, saved[key].float(), atol=1e-6)  # the loaded classifier runs the new weights
    probs = clf.predict_proba(["the movie was good", "the movie was awful"])
    assert torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-5)


def test_full_finetune_refuses_a_base_without_a_pooler(tiny_models: dict[str, Path]) -> None:
    from core.train import model as tl

    cfg = TrainConfig(
        data_path="d.csv",
        adapter_name="a",
        task="classification",
        base_model=str(tiny_models["llama"]),
        full_finetune=True,
    )
    with pytest.raises(ConfigError, match="pooler"):
        tl.build_model(cfg, str(tiny_models["llama"]), ["a", "b"], 0)
