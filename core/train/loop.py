"""The method code of LoRA training: build the peft model, batch, compute losses, evaluate, checkpoint.

``core.train`` orchestrates (events, signals, the step loop, saving the adapter); this module holds the pieces.
One code path serves both tasks and every launcher: a single process, ``torchrun`` (CPU, gloo) and
``accelerate launch --multi_gpu`` all go through an :class:`accelerate.Accelerator`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from peft import LoraConfig, PeftModel, TaskType, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from core import store
from core.config import ConfigError, TrainConfig
from core.errors import TrainError

IGNORE = -100


# --- model ----------------------------------------------------------------------------------------------------------


def pick_mixed_precision(precision: str) -> str:
    """'no' | 'bf16' | 'fp16' for the Accelerator. Master weights stay fp32; only the compute is autocast."""
    cuda = torch.cuda.is_available()
    if precision == "fp32":
        return "no"
    if precision == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ConfigError("precision 'bf16' was asked for, but this GPU has no bf16 support: use 'auto'.")
        return "bf16"
    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    from core.models import cpu_supports_bf16

    # On CPUs with AVX512-BF16/AMX bf16 matmuls are ~4.5x fp32; elsewhere bf16 is emulated and slower than fp32.
    return "bf16" if cpu_supports_bf16() else "no"


def _quantization_config() -> Any:
    if not torch.cuda.is_available():
        raise ConfigError("qlora needs a CUDA GPU (4-bit bitsandbytes kernels); turn qlora off to train here.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("qlora needs the 'bitsandbytes' package: `pip install bitsandbytes`, or turn qlora off.")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def load_tokenizer(base_path: str) -> Any:
    """The base's tokenizer, with a pad token (packed SFT never attends to it; classification masks it)."""
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def build_model(cfg: TrainConfig, base_path: str, labels: list[str] | None, pad_token_id: int | None) -> Any:
    """Load the base in fp32 (or 4-bit for QLoRA) and wrap it with a fresh LoRA adapter.

    Classification gets ``AutoModelForSequenceClassification`` with a new head; peft's SEQ_CLS task type adds
    ``classifier``/``score`` to ``modules_to_save``, so the head is trained in full and saved with the adapter.
    """
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if cfg.qlora:
        kwargs = {"quantization_config": _quantization_config(), "dtype": torch.bfloat16}
    if cfg.task == "sft":
        model = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
        task_type = TaskType.CAUSAL_LM
    else:
        assert labels is not None
        model = AutoModelForSequenceClassification.from_pretrained(
            base_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            **kwargs,
        )
        if model.config.pad_token_id is None and pad_token_id is not None:
            model.config.pad_token_id = pad_token_id  # causal-LM classifiers find the last token by the pad id
        task_type = TaskType.SEQ_CLS
    model.config.use_cache = False
    if cfg.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(
        task_type=task_type,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        modules_to_save=full_finetune_modules(model) if cfg.full_finetune else None,
    )
    return get_peft_model(model, lora)


def full_finetune_modules(model: Any) -> list[str]:
    """Full fine-tuning inside peft: the backbone's parts (all but the pooler, which keeps a LoRA target) become
    ``modules_to_save``, so they train in full and checkpoint, save and load like any adapter. Names are qualified
    ('bert.encoder'): peft matches by suffix, and a bare 'embeddings' would also wrap 'word_embeddings'."""
    prefix = model.base_model_prefix
    backbone = getattr(model, prefix)
    parts = [
        f"{prefix}.{n}" for n, m in backbone.named_children() if n != "pooler" and any(True for _ in m.parameters())
    ]
    if not any(n == "pooler" and m is not None for n, m in backbone.named_children()):
        raise ConfigError(
            f"full_finetune needs an encoder with a pooler (BERT-like, e.g. MiniLM); {type(model).__name__} has "
            "none. Use LoRA (full_finetune: false) for this base."
        )
    return parts


def lora_state(model: Any) -> dict[str, torch.Tensor]:
    """The adapter's trainable tensors (LoRA A/B and the classification head), detached CPU copies."""
    return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """Order-independent fingerprint of an adapter state: equal on every rank after a synchronised step."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# --- data (adapter over core.data / core.tokenize) -------------------------------------------------------------------


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
    """Read, validate, tokenise, split and (sft) pack the data with ``core.data``; DataError explains bad input."""
    from core.data import dataset as D
    from core.data import tokenize as T

    mapping = cfg.columns or None
    loaded = D.load_data(cfg.data_path, cfg.task, mapping=mapping, tokenizer=tokenizer, max_length=cfg.max_length)
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
        )
        train_items, eval_items = items, list(ev.tokenized or [])
        fingerprint += "+" + ev.report.fingerprint
    else:
        strat = [x.label for x in items] if cfg.task == "classification" else None
        train_items, eval_items = D.split_train_eval(items, cfg.eval_fraction, seed=cfg.seed, stratify=strat)
    if cfg.task == "sft":
        # Packing (first-fit decreasing into rows of max_length, positions restarting per example): no compute is
        # spent on padding, and the block-diagonal mask keeps examples apart.
        train_rows = [_packed(r) for r in T.pack_examples(train_items, cfg.max_length)]
        eval_rows = [_packed(r) for r in T.pack_examples(eval_items, cfg.max_length)] if eval_items else []
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
        "train_rows": len(train_rows),
        "eval_rows": len(eval_rows),
        "fingerprint": fingerprint,
    }
    return TrainData(train_rows, eval_rows, names, summary, fingerprint)


def _packed(row: Any) -> dict[str, Any]:
    return {"input_ids": list(row.input_ids), "labels": list(row.labels), "position_ids": list(row.position_ids)}


# --- batching --------------------------------------------------------------------------------------------------------


def epoch_batches(
    rows: list[dict[str, Any]], rows_per_batch: int, seed: int, epoch: int, rank: int, world: int, by_length: bool
) -> list[list[int]]:
    """This rank's micro-batches (row indices) for one epoch: a seeded shuffle, identical on every rank and on resume.

    Every rank gets the same number of batches (the tail that does not divide evenly is dropped), so DDP ranks
    always run the same number of forward/backward passes. ``by_length`` sorts within chunks of 16 batches before
    batching, so classification batches pad little; packed SFT rows are already nearly max_length.
    """
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(len(rows), generator=gen).tolist()
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
    usable = (len(batches) // world) * world
    if usable == 0:
        raise TrainError(
            f"Too little training data: {len(rows)} rows make {len(batches)} batches of {rows_per_batch}, "
            f"fewer than the {world} processes. Add rows or lower batch_size."
        )
    return batches[rank:usable:world]


def collate_sft(rows: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Packed rows -> (batch, seq) tensors. Short rows are padded with a separate dummy 'example' (positions
    restarting at 0, labels -100), so the block-diagonal mask keeps it from touching real tokens."""
    width = max(len(r["input_ids"]) for r in rows)
    ids, labels, pos = [], [], []
    for r in rows:
        n, pad = len(r["input_ids"]), width - len(r["input_ids"])
        ids.append(list(r["input_ids"]) + [pad_id] * pad)
        labels.append(list(r["labels"]) + [IGNORE] * pad)
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


# --- losses ----------------------------------------------------------------------------------------------------------


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
    shift[pos[:, 1:] == 0] = IGNORE
    keep = torch.zeros_like(labels, dtype=torch.bool)  # (batch, seq)
    keep[:, :-1] = shift != IGNORE
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


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


# --- evaluation ------------------------------------------------------------------------------------------------------


def all_reduce_sum(accelerator: Accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """Sum a small tensor over processes (a no-op in a single process)."""
    if accelerator.num_processes == 1:
        return tensor
    import torch.distributed as dist

    t = tensor.to(accelerator.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def macro_f1(confusion: torch.Tensor) -> float:
    """Unweighted mean of per-class F1 from a (true, pred) confusion matrix; classes absent from both count 0."""
    tp = confusion.diag().double()
    prec_den = confusion.sum(0).double()
    rec_den = confusion.sum(1).double()
    f1 = torch.where(prec_den + rec_den > 0, 2 * tp / (prec_den + rec_den).clamp(min=1), torch.zeros_like(tp))
    present = (rec_den > 0) | (prec_den > 0)
    return float(f1[present].mean()) if bool(present.any()) else 0.0


@torch.no_grad()
def evaluate(
    accelerator: Accelerator, model: Any, rows: list[dict[str, Any]], cfg: TrainConfig, pad_id: int, n_labels: int
) -> dict[str, float]:
    """Eval metrics over this rank's shard, summed across ranks: eval_loss (sft) or accuracy + macro_f1 + eval_loss.

    ``model`` is the unwrapped model: DDP's forward would issue collectives that uneven shards could deadlock.
    """
    model.eval()
    shard = rows[accelerator.process_index :: accelerator.num_processes]
    size = cfg.rows_per_batch
    loss_sum = torch.zeros(2, dtype=torch.float64)
    confusion = torch.zeros((n_labels, n_labels), dtype=torch.float64)
    for s in range(0, len(shard), size):
        chunk = shard[s : s + size]
        with accelerator.autocast():
            if cfg.task == "sft":
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
    loss_sum = all_reduce_sum(accelerator, loss_sum)
    metrics = {"eval_loss": float(loss_sum[0] / max(loss_sum[1], 1))}
    if cfg.task == "classification":
        confusion = all_reduce_sum(accelerator, confusion)
        total = float(confusion.sum())
        metrics["accuracy"] = float(confusion.diag().sum()) / total if total else 0.0
        metrics["macro_f1"] = macro_f1(confusion)
    return metrics


def is_better(metrics: dict[str, float], best: float | None, task: str) -> bool:
    """Best checkpoint rule: lowest eval loss (sft) or highest macro-F1 (classification)."""
    if best is None:
        return True
    return metrics["eval_loss"] < best if task == "sft" else metrics["macro_f1"] > best


def best_key(task: str) -> str:
    return "eval_loss" if task == "sft" else "macro_f1"


# --- checkpoints -----------------------------------------------------------------------------------------------------


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
    """Planned optimizer steps for the whole run (fixed at the start, kept on resume)."""
    tokens_seen: int = 0
    """Real (non-pad) tokens processed on all ranks."""
    train_seconds: float = 0.0
    """Time spent in the step loop so far (over resumes)."""
    best_metric: float | None = None
    """Best eval loss (sft) or macro-F1 (classification) seen so far."""
    best_step: int | None = None
    world_size: int = 1
    data_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _rng_tensors(rank: int) -> dict[str, torch.Tensor]:
    tensors = {f"torch_cpu_{rank}": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors[f"torch_cuda_{rank}"] = torch.cuda.get_rng_state()
    return tensors


def save_checkpoint(
    accelerator: Accelerator, model: Any, optimizer: Any, scheduler: Any, position: Position, run_dir: Path
) -> Path:
    """Write ``run_dir/checkpoint/`` atomically: adapter (safetensors), optimizer, scheduler, RNG, position.

    Every process contributes its RNG state; only the main process writes files. The folder appears complete
    or not at all (store.atomic_dir), so a kill during the save leaves the previous checkpoint intact.
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
    return Position(**data)


def load_checkpoint(accelerator: Accelerator, model: Any, optimizer: Any, scheduler: Any, run_dir: Path) -> None:
    """Restore adapter weights, optimizer, scheduler and this rank's RNG from our own run folder.

    ``torch.load(weights_only=True)`` refuses arbitrary pickles, so even a tampered run folder cannot execute code.
    """
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
    """Keep the best adapter so far in ``run_dir/best/`` (main process only), atomically."""
    with store.atomic_dir(run_dir / "best") as tmp:
        model.save_pretrained(tmp)


def restore_best(model: Any, run_dir: Path) -> bool:
    """Load ``run_dir/best/`` into ``model``; False when there is none."""
    path = run_dir / "best" / "adapter_model.safetensors"
    if not path.is_file():
        return False
    set_peft_model_state_dict(model, load_file(str(path)))
    return True


def reload_adapter(base: Any, adapter_dir: Path) -> PeftModel:
    """Attach a saved adapter to a freshly loaded base (used by tests and by the card's example)."""
    return PeftModel.from_pretrained(base, str(adapter_dir))


def steps_per_epoch(n_batches: int, grad_accum: int) -> int:
    """Optimizer steps per epoch for this rank's micro-batches (the last step may accumulate fewer)."""
    return max(1, math.ceil(n_batches / grad_accum))
