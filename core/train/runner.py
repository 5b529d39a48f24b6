"""LoRA fine-tuning run: ``python -m core.train CONFIG.yaml [--resume RUN_DIR] [--run-dir DIR]``.

The same code runs in one process, under ``torchrun --nproc_per_node N -m core.train CONFIG`` (CPU, gloo) and
under ``accelerate launch --multi_gpu --num_processes N -m core.train CONFIG`` (GPUs). Only the main process
writes events, checkpoints and the adapter. Method code (model, batches, losses, eval, checkpoints) lives in
``core.train_loop``; this module orchestrates: data, the step loop, time budget, signals, events, saving.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.state import AcceleratorState

import core
from core import store
from core.config import ConfigError, TrainConfig
from core.models import resolve_base
from core.train import loop as tl
from core.train.jobs import new_run_id


@dataclass
class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it after each step, saves a checkpoint and exits cleanly."""

    requested: bool = False
    signal_name: str | None = None

    def install(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self.requested, self.signal_name = True, signal.Signals(signum).name

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


class EventLog:
    """``events.jsonl`` (one JSON object per line) and ``train.log`` (for humans), flushed per line.

    Disabled on non-main processes, so ranks never interleave writes.
    """

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.t0 = time.monotonic()
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._events = open(run_dir / "events.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - lives with the run
            self._log = open(run_dir / "train.log", "a", encoding="utf-8")  # noqa: SIM115

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Write one event (adds ``type``, ``time`` and ``elapsed_s``) and its log line."""
        event = {
            "type": type_,
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "elapsed_s": round(time.monotonic() - self.t0, 2),
            **fields,
        }
        if self.enabled:
            self._events.write(json.dumps(event, default=str) + "\n")
            self._events.flush()
            self.log(_describe(event))
        return event

    def log(self, line: str) -> None:
        if self.enabled:
            self._log.write(f"{dt.datetime.now().strftime('%H:%M:%S')} {line}\n")
            self._log.flush()

    def close(self) -> None:
        if self.enabled:
            self._events.close()
            self._log.close()


def _describe(e: dict[str, Any]) -> str:
    if e["type"] == "step":
        return (
            f"step {e['step']}/{e['total_steps']} epoch {e['epoch']:.2f} loss {e['loss']:.4f} lr {e['lr']:.2e} "
            f"{e['tokens_per_s']:.0f} tok/s eta {e['eta_s']:.0f}s"
        )
    if e["type"] == "eval":
        return f"eval at step {e['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in e["metrics"].items())
    rest = {k: v for k, v in e.items() if k not in ("type", "time")}
    return f"{e['type']}: {json.dumps(rest, default=str)}"


@dataclass
class RunResult:
    """What a run ended with (also the ``end`` event)."""

    status: str
    """finished | stopped | time_budget | failed"""
    run_dir: Path
    adapter_dir: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def run(cfg: TrainConfig, run_dir: Path, resume: bool = False, stop: StopFlag | None = None) -> RunResult:
    """Train ``cfg`` with events/checkpoints in ``run_dir``; ``resume`` continues from ``run_dir/checkpoint``."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    t_start = time.monotonic()
    stop = stop or StopFlag()
    # cpu=True without CUDA: accelerate then reads torchrun's env (LOCAL_RANK, WORLD_SIZE) as MULTI_CPU over gloo.
    # AcceleratorState is a process-wide singleton: a second run in the same process (tests, a notebook) with
    # another precision must start from a clean one. The distributed PartialState (process group) is kept.
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=tl.pick_mixed_precision(cfg.precision), cpu=not torch.cuda.is_available())
    main_proc, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    events = EventLog(run_dir, enabled=main_proc)
    if main_proc and not (run_dir / "config.yaml").is_file():
        cfg.to_yaml(run_dir / "config.yaml")
    try:
        return _train(cfg, run_dir, resume, stop, accelerator, events, t_start, set_seed)
    except BaseException as exc:  # noqa: BLE001 - the UI must see a failure, never a silent death
        status = "stopped" if isinstance(exc, KeyboardInterrupt) else "failed"
        message = f"{type(exc).__name__}: {exc}"
        events.emit("end", status=status, error=message, world_size=world, rank=rank)
        if status == "failed" and not isinstance(exc, (tl.TrainError, ConfigError)):
            import traceback

            events.log(traceback.format_exc())
        return RunResult(status, run_dir, error=message)
    finally:
        events.close()


def _train(cfg, run_dir, resume, stop, accelerator, events, t_start, set_seed) -> RunResult:  # noqa: ANN001
    world, rank = accelerator.num_processes, accelerator.process_index
    set_seed(cfg.seed)
    base_path = resolve_base(cfg.base_model, cfg.task)
    tokenizer = tl.load_tokenizer(base_path)
    data = tl.load_train_data(cfg, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n_labels = len(data.labels or [])
    set_seed(cfg.seed)  # LoRA init identical on every rank and on resume
    model = tl.build_model(cfg, base_path, data.labels, pad_id)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    collate = tl.collate_sft if cfg.task == "sft" else tl.collate_cls
    by_length = cfg.task == "classification"

    def batches_for(epoch: int) -> list[list[int]]:
        return tl.epoch_batches(data.train_rows, cfg.rows_per_batch, cfg.seed, epoch, rank, world, by_length)

    per_epoch = tl.steps_per_epoch(len(batches_for(0)), cfg.grad_accum)
    pos = tl.Position(world_size=world, data_fingerprint=data.fingerprint)
    if resume:
        pos = tl.load_position(run_dir)
        if pos.world_size != world:
            raise tl.TrainError(
                f"The checkpoint was written by {pos.world_size} processes; resume with the same number (now {world})."
            )
        if pos.data_fingerprint != data.fingerprint:
            raise tl.TrainError(
                "The training data changed since the checkpoint (fingerprint differs); start a new run."
            )
    else:
        pos.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))

    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    if cfg.time_budget_minutes and not resume:
        step_s = _measure_step(accelerator, model, optimizer, data.train_rows, batches_for(0), collate, pad_id, cfg)
        budget = cfg.time_budget_minutes * 60 - (time.monotonic() - t_start)
        n_eval_batches = math.ceil(len(data.eval_rows) / max(1, world) / cfg.rows_per_batch)
        eval_s = n_eval_batches * step_s / cfg.grad_accum / 3  # forward only ~1/3 of forward+backward
        planned = pos.total_steps
        pos.total_steps = max(1, min(planned, int((budget * 0.9 - 6 * eval_s - 3 * step_s) / step_s)))
        events.log(
            f"time budget {cfg.time_budget_minutes} min: ~{step_s:.2f}s/step -> {pos.total_steps} of "
            f"{planned} planned steps"
        )
    deadline = t_start + cfg.time_budget_minutes * 60 if cfg.time_budget_minutes else None

    from transformers import get_scheduler

    scheduler = get_scheduler(
        cfg.scheduler,
        optimizer,
        num_warmup_steps=round(cfg.warmup_ratio * pos.total_steps),
        num_training_steps=pos.total_steps,
    )
    if resume:
        tl.load_checkpoint(accelerator, model, optimizer, scheduler, run_dir)
    eval_every = cfg.eval_every or max(1, pos.total_steps // 5)
    events.emit(
        "start",
        task=cfg.task,
        base_model=cfg.base_model,
        adapter_name=cfg.adapter_name,
        total_steps=pos.total_steps,
        resumed_from_step=pos.step if resume else None,
        world_size=world,
        mixed_precision=accelerator.mixed_precision,
        device=str(accelerator.device),
        train_rows=len(data.train_rows),
        eval_rows=len(data.eval_rows),
        steps_per_epoch=per_epoch,
        labels=data.labels,
        trainable_params=sum(p.numel() for p in params),
    )

    unwrapped = accelerator.unwrap_model(model)
    last_metrics: dict[str, float] = {}
    recent: list[tuple[float, int]] = []  # (seconds, tokens) of the last steps, for tokens/s and ETA
    batches, loaded_epoch = batches_for(pos.epoch), pos.epoch
    status = "finished"
    while pos.step < pos.total_steps:
        if loaded_epoch != pos.epoch:
            batches, loaded_epoch = batches_for(pos.epoch), pos.epoch
        window = batches[pos.batch_index : pos.batch_index + cfg.grad_accum]
        t0 = time.monotonic()
        loss, tokens = _step(
            accelerator, model, optimizer, scheduler, params, window, data.train_rows, collate, pad_id, cfg
        )
        pos.step += 1
        pos.batch_index += len(window)
        if pos.batch_index >= len(batches):
            pos.epoch, pos.batch_index = pos.epoch + 1, 0
        seconds = time.monotonic() - t0
        pos.train_seconds += seconds
        recent = (recent + [(seconds, tokens)])[-20:]
        step_avg = sum(s for s, _ in recent) / len(recent)
        out_of_time = deadline is not None and time.monotonic() + step_avg > deadline
        flags = tl.all_reduce_sum(accelerator, torch.tensor([float(stop.requested), float(out_of_time)]))
        pos.tokens_seen += tokens
        events.emit(
            "step",
            step=pos.step,
            total_steps=pos.total_steps,
            epoch=round(pos.epoch + pos.batch_index / len(batches), 4),
            loss=loss,
            lr=scheduler.get_last_lr()[0],
            tokens_per_s=sum(t for _, t in recent) / sum(s for s, _ in recent),
            eta_s=round(step_avg * (pos.total_steps - pos.step), 1),
        )
        if flags[0] > 0:
            tl.save_checkpoint(accelerator, model, optimizer, scheduler, pos, run_dir)
            events.emit("checkpoint", step=pos.step, path=str(run_dir / "checkpoint"), reason="stop")
            status = "stopped"
            break
        due_eval = data.eval_rows and (pos.step % eval_every == 0 or pos.step == pos.total_steps or flags[1] > 0)
        if due_eval:
            last_metrics = _eval_and_keep_best(
                accelerator, unwrapped, data, cfg, pad_id, n_labels, pos, run_dir, events
            )
        if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0 and pos.step < pos.total_steps:
            tl.save_checkpoint(accelerator, model, optimizer, scheduler, pos, run_dir)
            events.emit("checkpoint", step=pos.step, path=str(run_dir / "checkpoint"), reason="periodic")
        if flags[1] > 0 and pos.step < pos.total_steps:
            status = "time_budget"
            break

    if status != "stopped" and pos.best_step is not None and pos.best_step != pos.step:
        tl.restore_best(unwrapped, run_dir)  # ship the best adapter by eval (every rank, so hashes stay comparable)
    lora_hash = tl.state_hash(tl.lora_state(unwrapped))
    print(f"[rank {rank}/{world}] step {pos.step} lora_sha256 {lora_hash}", flush=True)
    metrics: dict[str, Any] = {
        "steps": pos.step,
        "total_steps": pos.total_steps,
        "tokens_seen": pos.tokens_seen,
        "train_seconds": round(pos.train_seconds, 2),
        "tokens_per_s": round(pos.tokens_seen / max(pos.train_seconds, 1e-9), 1),
        "final_loss": loss if pos.step else None,
        **last_metrics,
    }
    if status == "stopped":
        events.emit(
            "end",
            status=status,
            step=pos.step,
            total_steps=pos.total_steps,
            signal=stop.signal_name,
            world_size=world,
            lora_hash=lora_hash,
            metrics=metrics,
        )
        return RunResult(status, run_dir, metrics=metrics)
    adapter_dir = None
    if pos.best_metric is not None:
        metrics |= {"best_step": pos.best_step, f"best_{tl.best_key(cfg.task)}": pos.best_metric}
    if accelerator.is_main_process:
        adapter_dir = save_adapter(unwrapped, tokenizer, cfg, data, base_path, metrics, run_dir)
        events.emit("checkpoint", step=pos.step, path=str(adapter_dir), reason="adapter")
    accelerator.wait_for_everyone()
    events.emit(
        "end",
        status=status,
        step=pos.step,
        total_steps=pos.total_steps,
        world_size=world,
        lora_hash=lora_hash,
        adapter_dir=str(adapter_dir) if adapter_dir else None,
        metrics=metrics,
    )
    return RunResult(status, run_dir, adapter_dir, metrics)


def _step(accelerator, model, optimizer, scheduler, params, window, rows, collate, pad_id, cfg) -> tuple[float, int]:  # noqa: ANN001
    """One optimizer step over ``window`` micro-batches; returns (mean loss over all ranks, real tokens on all ranks).

    The loss is normalised by the global count of targets in the window (assistant tokens for sft, examples for
    classification), so accumulation and process count do not change its meaning: DDP averages gradients over
    ranks, hence the ``world`` factor.
    """
    batches = [tl.to_device(collate([rows[i] for i in b], pad_id), accelerator.device) for b in window]
    counts = torch.tensor([float(_targets(b, cfg.task)) for b in batches]).sum().reshape(1)
    denom = float(tl.all_reduce_sum(accelerator, counts)[0])
    scale = accelerator.num_processes / max(denom, 1.0)
    loss_sum, tokens = 0.0, 0
    for i, batch in enumerate(batches):
        ctx = accelerator.no_sync(model) if i < len(batches) - 1 else _nullcontext()
        with ctx, accelerator.autocast():
            if cfg.task == "sft":
                loss, _ = tl.sft_loss_sum(model, batch)
            else:
                loss = torch.nn.functional.cross_entropy(tl.cls_logits(model, batch), batch["labels"], reduction="sum")
            accelerator.backward(loss * scale)
        loss_sum += float(loss.detach())
        tokens += int(batch["real_tokens"])
    if cfg.max_grad_norm > 0:
        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    totals = tl.all_reduce_sum(accelerator, torch.tensor([loss_sum, float(tokens)], dtype=torch.float64))
    return float(totals[0]) / max(denom, 1.0), int(totals[1])


def _targets(batch: dict[str, torch.Tensor], task: str) -> int:
    if task == "classification":
        return int(batch["labels"].numel())
    shift = batch["labels"][:, 1:]
    return int(((shift != tl.IGNORE) & (batch["position_ids"][:, 1:] != 0)).sum())


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _measure_step(accelerator, model, optimizer, rows, batches, collate, pad_id, cfg) -> float:  # noqa: ANN001
    """Seconds per optimizer step, from a timed forward+backward on the first micro-batch (after one warm-up),
    without touching the weights. The slowest rank decides, so all ranks plan the same number of steps."""
    batch = tl.to_device(collate([rows[i] for i in batches[0]], pad_id), accelerator.device)
    times = []
    for _ in range(2):
        t0 = time.monotonic()
        with accelerator.no_sync(model), accelerator.autocast():
            if cfg.task == "sft":
                loss, _ = tl.sft_loss_sum(model, batch)
            else:
                loss = tl.cls_logits(model, batch).sum()
            accelerator.backward(loss * 0.0)
        times.append(time.monotonic() - t0)
    optimizer.zero_grad(set_to_none=True)
    per_step = torch.tensor([times[-1] * cfg.grad_accum * 1.05])  # +5% for the optimizer and logging
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        dist.all_reduce(per_step, op=dist.ReduceOp.MAX)
    return float(per_step[0])


def _eval_and_keep_best(accelerator, model, data, cfg, pad_id, n_labels, pos, run_dir, events) -> dict[str, float]:  # noqa: ANN001
    metrics = tl.evaluate(accelerator, model, data.eval_rows, cfg, pad_id, n_labels)
    events.emit("eval", step=pos.step, total_steps=pos.total_steps, metrics=metrics)
    if tl.is_better(metrics, pos.best_metric, cfg.task):
        pos.best_metric, pos.best_step = metrics[tl.best_key(cfg.task)], pos.step
        if accelerator.is_main_process:
            tl.save_best(model, run_dir)
    accelerator.wait_for_everyone()
    return metrics


def save_adapter(
    model: Any,
    tokenizer: Any,
    cfg: TrainConfig,
    data: tl.TrainData,
    base_path: str,
    metrics: dict[str, Any],
    run_dir: Path,
) -> Path:
    """Write ``adapters/<safe name>/`` atomically: peft adapter (safetensors), tokenizer, card JSON and README."""
    final = store.subdir("adapters") / store.safe_name(cfg.adapter_name)
    card = {
        "name": cfg.adapter_name,
        "task": cfg.task,
        "base_model": cfg.base_model,
        "base_model_path": base_path,
        "labels": data.labels,
        "data": data.summary,
        "data_fingerprint": data.fingerprint,
        "metrics": metrics,
        "config": cfg.to_dict(),
        "run_dir": str(run_dir),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "demoforge_version": core.__version__,
    }
    with store.atomic_dir(final, replace=False) as tmp:  # a run never replaces an adapter (jobs refuse at start)
        model.save_pretrained(tmp)  # adapter_model.safetensors + adapter_config.json
        tokenizer.save_pretrained(tmp)
        store.atomic_write_json(tmp / "adapter_card.json", card)
        (tmp / "README.md").write_text(_card_markdown(card), encoding="utf-8")
    return final


def _card_markdown(card: dict[str, Any]) -> str:
    m = card["metrics"]
    lines = [
        f"# {card['name']}",
        "",
        f"LoRA adapter ({card['task']}) for `{card['base_model']}`, trained with "
        f"DemoForge {card['demoforge_version']} on {card['created']}.",
        "",
        f"- **Data**: `{card['data'].get('source')}`, {card['data'].get('train_rows')} training rows, "
        f"{card['data'].get('eval_rows')} eval rows, fingerprint `{card['data_fingerprint']}`",
        f"- **Steps**: {m.get('steps')} ({m.get('tokens_per_s')} tokens/s)",
    ]
    if card["labels"]:
        lines.append(f"- **Labels**: {', '.join(map(str, card['labels']))}")
    for key in ("eval_loss", "accuracy", "macro_f1", "best_eval_loss", "best_macro_f1", "final_loss"):
        if m.get(key) is not None:
            lines.append(f"- **{key}**: {m[key]:.4f}")
    lines += [
        "",
        "Load it with `peft.PeftModel.from_pretrained(base, this_folder)`; `adapter_card.json` has the full config.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (0 for finished, stopped and time_budget)."""
    parser = argparse.ArgumentParser(prog="python -m core.train", description="One LoRA fine-tuning run.")
    parser.add_argument("config", nargs="?", help="TrainConfig YAML (default with --resume: RUN_DIR/config.yaml)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its checkpoint")
    parser.add_argument("--run-dir", metavar="DIR", help="folder for events, logs and checkpoints")
    args = parser.parse_args(argv)
    resume_dir = args.resume
    if args.config is None and resume_dir is None:
        parser.error("give a CONFIG.yaml, or --resume RUN_DIR")
    try:
        cfg = TrainConfig.from_yaml(args.config or Path(resume_dir) / "config.yaml")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    resume_dir = resume_dir or cfg.resume_from
    run_dir = Path(resume_dir or args.run_dir or cfg.run_dir or store.subdir("runs") / new_run_id(cfg.adapter_name))
    run_dir.mkdir(parents=True, exist_ok=True)
    stop = StopFlag()
    stop.install()
    result = run(cfg, run_dir, resume=bool(resume_dir), stop=stop)
    if result.error:
        print(f"error: {result.error}", file=sys.stderr)
    return 1 if result.status == "failed" else 0
