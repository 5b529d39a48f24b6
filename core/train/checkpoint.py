"""Checkpoints: where a run stands (:class:`Position`), resumable checkpoints and the best adapter so far.

Everything is written atomically (``store.atomic_dir``): a kill during a save leaves the previous one intact.
Tensors go to safetensors; optimizer and scheduler states are read back with ``weights_only=True``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from core import store
from core.errors import TrainError


@dataclass
class Position:
    """Where training stands; saved in every checkpoint so a resume continues at the next micro-batch."""

    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """Current epoch (0-based)."""
    batch_index: int = 0
    """Next micro-batch of this epoch on every rank."""
    total_steps: int = 0
    """Planned optimizer steps for the whole run (a time budget may re-plan it; kept on resume)."""
    tokens_seen: int = 0
    """Real (non-pad) tokens processed on all ranks."""
    train_seconds: float = 0.0
    """Time spent in the step loop so far (over resumes)."""
    best_metric: float | None = None
    """Best eval loss (sft) or macro-F1 (classification) seen so far."""
    best_step: int | None = None
    world_size: int = 1
    data_fingerprint: str = ""
    eval_rows: int | None = None
    """How many eval rows a time budget kept (None: all), so a resume evaluates the same ones."""
    eval_every: int | None = None
    """Steps between evaluations, as planned (kept on resume)."""
    budget_limited: bool = False
    """The time budget, not the epochs or max_steps, decided total_steps."""
    extra: dict[str, Any] = field(default_factory=dict)


def _rng_tensors(rank: int) -> dict[str, torch.Tensor]:
    tensors = {f"torch_cpu_{rank}": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors[f"torch_cuda_{rank}"] = torch.cuda.get_rng_state()
    return tensors


def save_checkpoint(
    accelerator: Accelerator, model: Any, optimizer: Any, scheduler: Any, position: Position, run_dir: Path
) -> Path:
    """Write ``run_dir/checkpoint/``: adapter (safetensors), optimizer, scheduler, RNG, position.

    Every process contributes its RNG state; only the main process writes files.
    """
    from accelerate.utils import gather_object

    rng = gather_object([{k: v.tolist() for k, v in _rng_tensors(accelerator.process_index).items()}])
    final = run_dir / "checkpoint"
    if accelerator.is_main_process:
        with store.atomic_dir(final) as tmp:
            accelerator.unwrap_model(model).save_pretrained(tmp)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            merged = {k: torch.tensor(v, dtype=torch.uint8) for part in rng for k, v in part.items()}
            save_file(merged, str(tmp / "rng.safetensors"))
            state = position.__dict__ | {"python_random": _py_random_state()}
            (tmp / "position.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
    accelerator.wait_for_everyone()
    return final


def _py_random_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def load_position(run_dir: Path) -> Position:
    """Read ``checkpoint/position.json`` of a run folder."""
    path = run_dir / "checkpoint" / "position.json"
    if not path.is_file():
        raise TrainError(f"{run_dir} has no checkpoint to resume from (expected {path}). Start a new run instead.")
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("python_random", None)
    known = set(Position.__dataclass_fields__)
    return Position(**{k: v for k, v in data.items() if k in known})


def load_checkpoint(accelerator: Accelerator, model: Any, optimizer: Any, scheduler: Any, run_dir: Path) -> None:
    """Restore adapter weights, optimizer, scheduler and this rank's RNG from our own run folder.

    ``torch.load(weights_only=True)`` refuses arbitrary pickles, so even a tampered run folder cannot execute code.
    """
    from peft import set_peft_model_state_dict

    ckpt = run_dir / "checkpoint"
    weights = load_file(str(ckpt / "adapter_model.safetensors"))
    set_peft_model_state_dict(accelerator.unwrap_model(model), weights)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True, map_location="cpu"))
    rng = load_file(str(ckpt / "rng.safetensors"))
    rank = accelerator.process_index
    if f"torch_cpu_{rank}" in rng:
        torch.set_rng_state(rng[f"torch_cpu_{rank}"])
    if torch.cuda.is_available() and f"torch_cuda_{rank}" in rng:
        torch.cuda.set_rng_state(rng[f"torch_cuda_{rank}"])
    saved = json.loads((ckpt / "position.json").read_text(encoding="utf-8")).get("python_random")
    if saved:
        random.setstate((saved[0], tuple(saved[1]), saved[2]))


def save_best(model: Any, run_dir: Path) -> None:
    """Keep the best adapter so far in ``run_dir/best/`` (main process only)."""
    with store.atomic_dir(run_dir / "best") as tmp:
        model.save_pretrained(tmp)


def restore_best(model: Any, run_dir: Path) -> bool:
    """Load ``run_dir/best/`` into ``model``; False when there is none."""
    from peft import set_peft_model_state_dict

    path = run_dir / "best" / "adapter_model.safetensors"
    if not path.is_file():
        return False
    set_peft_model_state_dict(model, load_file(str(path)))
    return True
