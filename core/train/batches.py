"""Training data as batches, and the losses computed on them.

``load_train_data`` adapts :mod:`core.data` (read, validate, tokenise, split, pack) into plain row dicts;
``epoch_batches`` deals them into per-rank micro-batches; ``collate_*`` turn rows into tensors; ``sft_loss_sum`` and
``cls_logits`` run the model. Only torch is imported here, so data tests can use the collators without peft.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from core.config import TrainConfig
from core.data.tokenize import IGNORE_INDEX
from core.errors import TrainError

MAX_EVAL_EXAMPLES = 1000
"""Eval split cap: 1,000 examples measure accuracy to about +-1.5 points; more only slows every evaluation (a 10%
split of SST-2's 67k rows made six evaluations take half of a 5-minute budget)."""

Collate = Callable[[list[dict[str, Any]], int], dict[str, torch.Tensor]]


@dataclass
class TrainData:
    """Tokenised rows ready for batching: packed rows (sft) or encoded examples (classification)."""

    train_rows: list[dict[str, Any]]
    """sft: ``input_ids``/``labels``/``position_ids`` of packed rows; classification: ``input_ids``/``label``."""
    eval_rows: list[dict[str, Any]]
    labels: list[str] | None
    """Label names in id order (classification)."""
    summary: dict[str, Any]
    """For the adapter card: source, schema, columns, row counts, label counts, token lengths."""
    fingerprint: str
    """Identifies the training (and eval) data; a resume refuses data that changed."""


def load_train_data(cfg: TrainConfig, tokenizer: Any) -> TrainData:
    """Read, validate, tokenise, split and (sft) pack the data with ``core.data``; DataError explains bad input.

    The eval split is capped at :data:`MAX_EVAL_EXAMPLES`: held-out rows past the cap go back to training, and a
    larger eval file is sampled (seeded, so every rank and every resume evaluates the same rows).
    """
    from core.data import dataset as D
    from core.data import tokenize as T

    mapping = cfg.columns or None
    max_bytes = cfg.max_data_mb * 2**20 if cfg.max_data_mb else D.DEFAULT_MAX_BYTES  # the server's upload limit
    loaded = D.load_data(
        cfg.data_path, cfg.task, mapping=mapping, tokenizer=tokenizer, max_length=cfg.max_length, max_bytes=max_bytes
    )
    items = list(loaded.tokenized or [])
    names = [str(n) for n in loaded.label_names] if loaded.label_names is not None else None
    fingerprint = loaded.report.fingerprint
    if cfg.eval_path:
        ev = D.load_data(
            cfg.eval_path,
            cfg.task,
            mapping=mapping,
            tokenizer=tokenizer,
            max_length=cfg.max_length,
            label_names=loaded.label_names,
            max_bytes=max_bytes,
        )
        train_items, eval_items = items, list(ev.tokenized or [])
        capped = len(eval_items) > MAX_EVAL_EXAMPLES
        if capped:
            keep = sorted(random.Random(cfg.seed).sample(range(len(eval_items)), MAX_EVAL_EXAMPLES))
            eval_items = [eval_items[i] for i in keep]
        fingerprint += "+" + ev.report.fingerprint
    else:
        strat = [x.label for x in items] if cfg.task == "classification" else None
        capped = cfg.eval_fraction * len(items) > MAX_EVAL_EXAMPLES
        fraction = min(cfg.eval_fraction, MAX_EVAL_EXAMPLES / max(1, len(items)))
        train_items, eval_items = D.split_train_eval(items, fraction, seed=cfg.seed, stratify=strat)
        # per-class rounding can overshoot the cap by a few examples: they train instead
        train_items, eval_items = train_items + eval_items[MAX_EVAL_EXAMPLES:], eval_items[:MAX_EVAL_EXAMPLES]
    if cfg.task == "sft":
        # Packing (first-fit decreasing into rows of max_length, positions restarting per example): no compute is
        # spent on padding, and the block-diagonal mask keeps examples apart.
        train_rows = [as_train_row(r) for r in T.pack_examples(train_items, cfg.max_length)]
        eval_rows = [as_train_row(r) for r in T.pack_examples(eval_items, cfg.max_length)] if eval_items else []
    else:
        train_rows = [{"input_ids": list(x.input_ids), "label": int(x.label)} for x in train_items]
        eval_rows = [{"input_ids": list(x.input_ids), "label": int(x.label)} for x in eval_items]
    rep = loaded.report
    summary = {
        "source": rep.source,
        "format": rep.format,
        "schema": rep.schema,
        "columns": rep.columns,
        "rows_read": rep.rows_read,
        "rows_kept": rep.rows_kept,
        "dropped": rep.dropped,
        "label_counts": rep.label_counts,
        "token_lengths": rep.token_lengths,
        "eval_source": cfg.eval_path,
        "train_examples": len(train_items),
        "eval_examples": len(eval_items),
        "eval_capped_at": MAX_EVAL_EXAMPLES if capped else None,
        "train_rows": len(train_rows),
        "eval_rows": len(eval_rows),
        "fingerprint": fingerprint,
    }
    return TrainData(train_rows, eval_rows, names, summary, fingerprint)


def as_train_row(row: Any) -> dict[str, Any]:
    """A :class:`core.data.tokenize.PackedRow` as the plain dict that ``collate_sft`` batches."""
    return {"input_ids": list(row.input_ids), "labels": list(row.labels), "position_ids": list(row.position_ids)}


# --- batching --------------------------------------------------------------------------------------------------------


def epoch_batches(
    rows: list[dict[str, Any]],
    rows_per_batch: int,
    seed: int,
    epoch: int,
    rank: int,
    world: int,
    by_length: bool,
    longest_first: int | None = None,
) -> list[list[int]]:
    """This rank's micro-batches (row indices) for one epoch: a seeded shuffle, identical on every rank and on resume.

    Every rank gets the same number of batches (the tail that does not divide evenly is dropped), so DDP ranks
    always run the same number of forward/backward passes. ``by_length`` sorts within chunks of 16 batches before
    batching, so classification batches pad little; packed SFT rows are already nearly max_length.
    ``longest_first`` (rows a run will see, when fewer than the epoch holds): those rows are the longest ones, shuffled
    among themselves, and the rest follow. A budget that cannot see every row then trains on the rows that carry
    the most text (SST-2: whole sentences rather than its many 2-3 word sub-phrases).
    """
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(len(rows), generator=gen).tolist()
    groups = [order]
    if longest_first is not None and 0 < longest_first < len(rows):
        ranked = sorted(order, key=lambda j: -len(rows[j]["input_ids"]))  # stable: ties keep the shuffled order
        keep = math.ceil(longest_first / rows_per_batch) * rows_per_batch  # whole batches of the longest rows
        head = set(ranked[:keep])
        groups = [[i for i in order if i in head], [i for i in order if i not in head]]
    batches = [b for group in groups for b in _group_batches(group, rows, rows_per_batch, gen, by_length)]
    usable = (len(batches) // world) * world
    if usable == 0:
        raise TrainError(
            f"Too little training data: {len(rows)} rows make {len(batches)} batches of {rows_per_batch}, "
            f"fewer than the {world} processes. Add rows or lower batch_size."
        )
    return batches[rank:usable:world]


def _group_batches(
    order: list[int], rows: list[dict[str, Any]], rows_per_batch: int, gen: torch.Generator, by_length: bool
) -> list[list[int]]:
    """``order`` cut into batches; ``by_length``: rows sorted within chunks of 16 batches, then the batches shuffled."""
    if by_length:
        chunk = rows_per_batch * 16
        order = [
            i
            for s in range(0, len(order), chunk)
            for i in sorted(order[s : s + chunk], key=lambda j: len(rows[j]["input_ids"]))
        ]
    batches = [order[s : s + rows_per_batch] for s in range(0, len(order), rows_per_batch)]
    if by_length:
        perm = torch.randperm(len(batches), generator=gen).tolist()
        batches = [batches[i] for i in perm]
    return batches


def steps_per_epoch(n_batches: int, grad_accum: int) -> int:
    """Optimizer steps per epoch for this rank's micro-batches (the last step may accumulate fewer)."""
    return max(1, math.ceil(n_batches / grad_accum))


def first_batches(batches: list[list[int]], total_steps: int, grad_accum: int) -> list[list[int]]:
    """The micro-batches ``total_steps`` optimizer steps draw from the start of an epoch's ``batches``: with a total
    shorter than the epoch (and ``longest_first``), the longest rows only."""
    return batches[: max(1, total_steps * grad_accum)]


def typical_batch(rows: list[dict[str, Any]], batches: list[list[int]]) -> list[int]:
    """The micro-batch whose padded size (rows x longest row) is closest to the mean: what a timing should use."""
    sizes = [len(b) * max(len(rows[i]["input_ids"]) for i in b) for b in batches]
    mean = sum(sizes) / len(sizes)
    return batches[min(range(len(batches)), key=lambda k: abs(sizes[k] - mean))]


def collate_sft(rows: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Packed rows -> (batch, seq) tensors. Short rows are padded with a separate dummy 'example' (positions
    restarting at 0, labels -100), so the block-diagonal mask keeps it from touching real tokens.

    There is deliberately no ``attention_mask``: passing one disables transformers' packed-sequence detection (and
    so does a KV cache: call the model with ``use_cache=False``).
    """
    width = max(len(r["input_ids"]) for r in rows)
    ids, labels, pos = [], [], []
    for r in rows:
        n, pad = len(r["input_ids"]), width - len(r["input_ids"])
        ids.append(list(r["input_ids"]) + [pad_id] * pad)
        labels.append(list(r["labels"]) + [IGNORE_INDEX] * pad)
        pos.append(list(r.get("position_ids") or range(n)) + list(range(pad)))
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "position_ids": torch.tensor(pos),
        "real_tokens": torch.tensor(sum(len(r["input_ids"]) for r in rows)),
    }


def collate_cls(rows: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Examples -> right-padded (batch, seq) ids + attention mask + integer labels."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.tensor([int(r["label"]) for r in rows]),
        "real_tokens": mask.sum(),
    }


def collate_for(task: str) -> Collate:
    return collate_sft if task == "sft" else collate_cls


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


# --- losses ----------------------------------------------------------------------------------------------------------


def count_targets(batch: dict[str, torch.Tensor], task: str) -> int:
    """What the loss is averaged over: examples (classification) or predicted assistant tokens (sft)."""
    if task == "classification":
        return int(batch["labels"].numel())
    shift = batch["labels"][:, 1:]
    return int(((shift != IGNORE_INDEX) & (batch["position_ids"][:, 1:] != 0)).sum())


def loss_sum(model: Any, batch: dict[str, torch.Tensor], task: str) -> torch.Tensor:
    """The batch's summed loss for either task (divide by the window's :func:`count_targets`)."""
    if task == "sft":
        return sft_loss_sum(model, batch)[0]
    return F.cross_entropy(cls_logits(model, batch), batch["labels"], reduction="sum")


def sft_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over assistant tokens, and their count.

    Same meaning as HF's shifted causal-LM loss (logits[t] predicts labels[t+1], mean over labels != -100),
    but the 49k-vocabulary head runs only at the kept positions: ``logits_to_keep`` with a boolean
    (batch, seq) mask projects just those hidden states, flattened to (n_kept, vocab). With ~40% of tokens
    being assistant tokens this removes most of the lm_head FLOPs and the largest activation (the full
    (batch, seq, vocab) logits). Going through the model's own forward keeps DDP/peft hooks intact.
    Packed rows carry restarting position_ids and no attention_mask, so transformers builds a block-diagonal
    causal mask; a position where a new example starts (position 0) is never a target of the previous one.
    """
    labels, pos = batch["labels"], batch["position_ids"]
    shift = labels[:, 1:].clone()  # (batch, seq-1): the token each position predicts
    shift[pos[:, 1:] == 0] = IGNORE_INDEX
    keep = torch.zeros_like(labels, dtype=torch.bool)  # (batch, seq)
    keep[:, :-1] = shift != IGNORE_INDEX
    n = int(keep.sum())
    if n == 0:
        # No assistant token here (possible on a tiny shard): a zero that still touches the graph for DDP.
        out = model(input_ids=batch["input_ids"][:, :1], position_ids=pos[:, :1], use_cache=False, logits_to_keep=1)
        return out.logits.sum() * 0.0, 0
    out = model(input_ids=batch["input_ids"], position_ids=pos, use_cache=False, logits_to_keep=keep)
    logits = out.logits.float()  # (n_kept, vocab); fp32 for a stable log-softmax under bf16 autocast
    return F.cross_entropy(logits, shift[keep[:, :-1]], reduction="sum"), n


def cls_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(batch, num_labels) logits in fp32."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out.logits.float()
