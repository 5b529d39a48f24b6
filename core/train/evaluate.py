"""Evaluation during a run: eval loss (sft), accuracy and macro-F1 (classification), and the best-adapter rule."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from core.train.batches import cls_logits, collate_cls, collate_sft, sft_loss_sum, to_device


def macro_f1(confusion: torch.Tensor) -> float:
    """Unweighted mean of per-class F1 from a (true, pred) confusion matrix; classes absent from both count 0."""
    tp = confusion.diag().double()
    prec_den = confusion.sum(0).double()
    rec_den = confusion.sum(1).double()
    f1 = torch.where(prec_den + rec_den > 0, 2 * tp / (prec_den + rec_den).clamp(min=1), torch.zeros_like(tp))
    present = (rec_den > 0) | (prec_den > 0)
    return float(f1[present].mean()) if bool(present.any()) else 0.0


def _sum_over_processes(accelerator: Accelerator, tensor: torch.Tensor) -> torch.Tensor:
    if accelerator.num_processes == 1:
        return tensor  # float64 stays on the CPU (some accelerators, e.g. MPS, have no float64)
    return accelerator.reduce(tensor.to(accelerator.device), reduction="sum").cpu()


@torch.no_grad()
def evaluate(
    accelerator: Accelerator,
    model: Any,
    rows: list[dict[str, Any]],
    task: str,
    rows_per_batch: int,
    pad_id: int,
    n_labels: int,
) -> dict[str, float]:
    """Eval metrics over this rank's shard, summed across ranks: eval_loss (sft) or accuracy + macro_f1 + eval_loss.

    ``model`` is the unwrapped model: DDP's forward would issue collectives that uneven shards could deadlock.
    Rows run in length order (the metrics do not depend on order), so classification batches pad little.
    """
    model.eval()
    shard = sorted(rows[accelerator.process_index :: accelerator.num_processes], key=lambda r: len(r["input_ids"]))
    loss_sum = torch.zeros(2, dtype=torch.float64)  # (summed loss, targets)
    confusion = torch.zeros((n_labels, n_labels), dtype=torch.float64)
    for s in range(0, len(shard), rows_per_batch):
        chunk = shard[s : s + rows_per_batch]
        with accelerator.autocast():
            if task == "sft":
                batch = to_device(collate_sft(chunk, pad_id), accelerator.device)
                loss, n = sft_loss_sum(model, batch)
                loss_sum += torch.tensor([float(loss), n], dtype=torch.float64)
            else:
                batch = to_device(collate_cls(chunk, pad_id), accelerator.device)
                logits = cls_logits(model, batch)
                loss = F.cross_entropy(logits, batch["labels"], reduction="sum")
                loss_sum += torch.tensor([float(loss), len(chunk)], dtype=torch.float64)
                pred = logits.argmax(-1).cpu()
                for t, p in zip(batch["labels"].cpu().tolist(), pred.tolist()):
                    confusion[t, p] += 1
    model.train()
    loss_sum = _sum_over_processes(accelerator, loss_sum)
    metrics = {"eval_loss": float(loss_sum[0] / max(loss_sum[1], 1))}
    if task == "classification":
        confusion = _sum_over_processes(accelerator, confusion)
        total = float(confusion.sum())
        metrics["accuracy"] = float(confusion.diag().sum()) / total if total else 0.0
        metrics["macro_f1"] = macro_f1(confusion)
    return metrics


def best_key(task: str) -> str:
    """The metric that picks the shipped adapter: eval loss (sft) or macro-F1 (classification)."""
    return "eval_loss" if task == "sft" else "macro_f1"


def is_better(metrics: dict[str, float], best: float | None, task: str) -> bool:
    """Best checkpoint rule: lowest eval loss (sft) or highest macro-F1 (classification)."""
    if best is None:
        return True
    return metrics["eval_loss"] < best if task == "sft" else metrics["macro_f1"] > best
