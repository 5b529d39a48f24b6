"""Toy training data and configs for the tiny models, shared by the training and job tests."""

from __future__ import annotations

import json
from pathlib import Path

from core.config import LoraSettings, TrainConfig


def write_sft(path: Path, repeats: int = 4) -> Path:
    """A learnable toy chat set: user 'w<i>' -> assistant 'r<i> r<i+1>'."""
    rows = [{"prompt": f"w{i}", "response": f"r{i} r{(i + 1) % 20}"} for i in range(20)] * repeats
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def write_cls(path: Path, n: int = 160) -> Path:
    """Sentiment-like rows: a positive or a negative word among fillers decides the label."""
    import random

    rng = random.Random(0)
    pos, neg, filler = (
        ["good", "great", "fine"],
        ["bad", "awful", "poor"],
        ["the", "movie", "was", "a", "film", "story", "really", "very", "plot"],
    )
    lines = ["text,label"]
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        words = rng.sample(filler, 4) + [rng.choice(pos if i % 2 else neg)]
        rng.shuffle(words)
        lines.append(f"{' '.join(words)},{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def cls_cfg(base_model: Path, data: Path, **kw: object) -> TrainConfig:
    """A short classification run on a tiny encoder (``write_cls`` data): fp32, rank-8 LoRA, a quarter held out."""
    base = dict(
        data_path=str(data),
        adapter_name="toy-cls",
        task="classification",
        base_model=str(base_model),
        max_steps=20,
        lr=3e-3,
        batch_size=16,
        max_length=32,
        eval_fraction=0.25,
        precision="fp32",
        lora=LoraSettings(r=8, alpha=16, dropout=0.0),
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def sft_cfg(tiny_models: dict[str, Path], data: Path, **kw: object) -> TrainConfig:
    base = dict(
        data_path=str(data),
        adapter_name="toy-sft",
        base_model=str(tiny_models["llama"]),
        max_steps=40,
        lr=3e-2,
        batch_size=4,
        max_length=64,
        eval_fraction=0.1,
        warmup_ratio=0.0,
        precision="fp32",
        lora=LoraSettings(r=16, alpha=32, dropout=0.0),
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]
