"""Build small LoRA adapters in the library the way core.train saves them (card, README), for tests."""

from __future__ import annotations

import json
from pathlib import Path

from core import adapters


def make_adapter(base: Path, name: str, seed: int, task: str = "sft", base_spec: str | None = None) -> Path:
    """A LoRA adapter with random (non-zero) B weights on ``base``, saved with a card into the library."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    folder = adapters.adapters_dir() / name
    peft_model.save_pretrained(folder)
    (folder / "adapter_card.json").write_text(
        json.dumps(
            {
                "name": name,
                "task": task,
                "base_model": base_spec or str(base),
                "base_model_path": str(base),
                "labels": None,
                "metrics": {"eval_loss": 1.5, "steps": 10},
                "created": f"2026-11-29T10:00:0{seed}+00:00",
            }
        )
    )
    (folder / "README.md").write_text(f"# {name}\n")
    return folder
