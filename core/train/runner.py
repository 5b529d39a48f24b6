"""LoRA fine-tuning run: ``python -m core.train CONFIG.yaml [--resume RUN_DIR] [--run-dir DIR]``.

The same code runs in one process, under ``torchrun --nproc_per_node N -m core.train CONFIG`` (CPU, gloo) and
under ``accelerate launch --multi_gpu --num_processes N -m core.train CONFIG`` (GPUs). Only the main process
writes events, checkpoints and the adapter. A run has three phases around one :class:`~core.train.loop.RunContext`:
plan (data, model, a time budget's measured plan, the schedule), loop (:func:`core.train.loop.run_steps`) and
finish (final evaluation, best adapter, saving). The method code lives in the sibling modules: ``model``,
``batches``, ``evaluate``, ``checkpoint``, ``plan``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

import core
from core import store
from core.config import ConfigError, TrainConfig
from core.errors import TrainError
from core.models import resolve_base
from core.pooling import MEAN_POOLING_HOWTO, pooling_of
from core.train.batches import TrainData, load_train_data, steps_per_epoch
from core.train.checkpoint import Position, load_checkpoint, load_position, restore_best
from core.train.evaluate import best_key
from core.train.events import EventLog, StopFlag, process_start
from core.train.jobs import new_run_id
from core.train.loop import (
    RunContext,
    eval_and_keep_best,
    eval_rows_subset,
    fixed_threads,
    measure_eval,
    measure_save,
    measure_step,
    run_steps,
)
from core.train.model import build_model, load_tokenizer, lora_state, make_accelerator, pick_mixed_precision, state_hash
from core.train.plan import (
    MAX_EVALS,
    WORKER_EXIT_S,
    BudgetTooShortError,
    Costs,
    Schedule,
    plan_budget,
    warmup_steps,
)


@dataclass
class RunResult:
    """What a run ended with (also the ``end`` event)."""

    status: str
    """finished | stopped | time_budget (finished a schedule the budget shortened) | failed"""
    run_dir: Path
    adapter_dir: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def run(
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    stop: StopFlag | None = None,
    t_start: float | None = None,
    exit_s: float = 0.0,
) -> RunResult:
    """Train ``cfg`` with events/checkpoints in ``run_dir``; ``resume`` continues from ``run_dir/checkpoint``.

    A time budget runs from ``t_start`` (``time.monotonic()`` clock; default now) to ``exit_s`` after the end event:
    the CLI passes the worker process's start and its exit time, so imports, model loading, tokenising and the
    process exit all count.
    """
    t_start = time.monotonic() if t_start is None else t_start
    stop = stop or StopFlag()
    pinned = fixed_threads()
    if pinned is not None:  # before the plan times a step on it
        torch.set_num_threads(pinned)
    accelerator = make_accelerator(pick_mixed_precision(cfg.precision))
    main_proc, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    events = EventLog(run_dir, enabled=main_proc, t0=t_start)
    if main_proc and not (run_dir / "config.yaml").is_file():
        cfg.to_yaml(run_dir / "config.yaml")
    if resume and _started_before_pooling(cfg, run_dir):
        cfg.pooling = "cls"  # it trained (and checkpointed a LoRA on) BERT's [CLS] pooler: carry on with that
    try:
        ctx = _plan(cfg, run_dir, resume, stop, accelerator, events, t_start, exit_s)
        return _finish(ctx, run_steps(ctx))
    except BaseException as exc:  # noqa: BLE001 - the UI must see a failure, never a silent death
        status = "stopped" if isinstance(exc, KeyboardInterrupt) else "failed"
        message = f"{type(exc).__name__}: {exc}"
        extra = {"min_budget_minutes": exc.minimum_minutes} if isinstance(exc, BudgetTooShortError) else {}
        events.emit("end", status=status, error=message, world_size=world, rank=rank, **extra)
        if status == "failed" and not isinstance(exc, (TrainError, ConfigError)):
            import traceback

            events.log(traceback.format_exc())
        return RunResult(status, run_dir, error=message)
    finally:
        events.close()


# --- plan ------------------------------------------------------------------------------------------------------------


def _plan(
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool,
    stop: StopFlag,
    accelerator: Any,
    events: EventLog,
    t_start: float,
    exit_s: float,
) -> RunContext:
    """Data, model and optimizer; the total steps (measured against a time budget); the schedule; the start event."""
    ctx = _build(cfg, run_dir, resume, stop, accelerator, events, t_start)
    ctx.costs.exit_s = exit_s
    pos, data = ctx.pos, ctx.data
    per_epoch = steps_per_epoch(len(ctx.batches_for(0)), cfg.grad_accum)
    ctx.cap_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    plan: dict[str, Any] = {}
    if not resume:
        pos.total_steps = ctx.cap_steps
        if cfg.time_budget_minutes:
            plan = _fit_budget(ctx)
    if data.eval_rows and pos.eval_every is None:  # (also a checkpoint written before eval_every was kept)
        pos.eval_every = cfg.eval_every or max(1, pos.total_steps // MAX_EVALS)
    if pos.eval_rows is not None:
        data.eval_rows = eval_rows_subset(data.eval_rows, pos.eval_rows, cfg.seed)
    if not plan:  # the ETA counts evaluations and saving from the start
        ctx.costs.eval_s, ctx.costs.save_s = measure_eval(ctx), measure_save(ctx)

    from torch.optim.lr_scheduler import LambdaLR

    schedule = Schedule(cfg.scheduler, pos.total_steps, warmup_steps(cfg.warmup_ratio, pos.total_steps))
    ctx.scheduler = LambdaLR(ctx.optimizer, schedule)
    if resume:  # restores the schedule's state too (a re-planned total)
        load_checkpoint(accelerator, ctx.model, ctx.optimizer, ctx.scheduler, run_dir)
    events.emit(
        "start",
        task=cfg.task,
        base_model=cfg.base_model,
        adapter_name=cfg.adapter_name,
        total_steps=pos.total_steps,
        resumed_from_step=pos.step if resume else None,
        world_size=accelerator.num_processes,
        mixed_precision=accelerator.mixed_precision,
        device=str(accelerator.device),
        train_rows=len(data.train_rows),
        eval_rows=len(data.eval_rows),
        steps_per_epoch=per_epoch,
        labels=data.labels,
        trainable_params=sum(p.numel() for p in ctx.params),
        startup_s=round(time.monotonic() - t_start, 2),
        plan=plan or None,
    )
    return ctx


def _build(
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool,
    stop: StopFlag,
    accelerator: Any,
    events: EventLog,
    t_start: float,
) -> RunContext:
    """Tokenizer, data, the peft model and its optimizer (prepared), and where training stands."""
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    base_path = resolve_base(cfg.base_model, cfg.task)
    tokenizer = load_tokenizer(base_path)
    data = load_train_data(cfg, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    set_seed(cfg.seed)  # LoRA init identical on every rank and on resume
    rows = data.train_rows
    sample = [r["input_ids"] for r in rows[:: max(1, len(rows) // 256)]] if cfg.task == "classification" else None
    model = build_model(cfg, base_path, data.labels, pad_id, tokenizer, sample)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    pos = _position(run_dir, resume, accelerator.num_processes, data)
    unwrapped = accelerator.unwrap_model(model)
    return RunContext(
        cfg, run_dir, accelerator, events, stop, t_start, data, tokenizer, base_path, model, unwrapped, optimizer,
        params, pos, Costs(step_s=0.0),
    )  # fmt: skip


def _position(run_dir: Path, resume: bool, world: int, data: TrainData) -> Position:
    if not resume:
        return Position(world_size=world, data_fingerprint=data.fingerprint)
    pos = load_position(run_dir)
    if pos.world_size != world:
        raise TrainError(
            f"The checkpoint was written by {pos.world_size} processes; resume with the same number (now {world})."
        )
    if pos.data_fingerprint != data.fingerprint:
        raise TrainError("The training data changed since the checkpoint (fingerprint differs); start a new run.")
    return pos


PLAN_ROUNDS = 5
"""Measure-and-plan rounds for a time budget. SST-2 in 5 minutes: the first plan (a step of the whole epoch's
typical rows) made 1,808 steps; the steps of the longest rows it then trained on were 60% slower and the run
re-planned to ~1,420, having already put 29k instead of 23k of the longest rows first."""
PLAN_SETTLED = 0.03
"""A plan within this share of the previous round's total is kept."""


def _fit_budget(ctx: RunContext) -> dict[str, Any]:
    """Measure a step, an evaluation and a save, then plan total steps, evaluations and eval rows so the adapter is
    saved within the time budget (counted from the worker's start). Raises BudgetTooShortError."""
    cfg, pos = ctx.cfg, ctx.pos
    budget_s = float(cfg.time_budget_minutes or 0) * 60
    costs = ctx.costs
    costs.step_s = measure_step(ctx)
    costs.eval_s, costs.save_s = measure_eval(ctx), measure_save(ctx)
    costs.checkpoint_s = 3 * costs.save_s  # adapter + optimizer moments (twice the adapter's size)
    n_eval = len(ctx.data.eval_rows)
    for round_ in range(PLAN_ROUNDS):
        (elapsed,) = ctx.agreed_max(time.monotonic() - ctx.t_start)
        fit = plan_budget(budget_s, elapsed, costs, ctx.cap_steps, n_eval, cfg.eval_every, cfg.checkpoint_every)
        if abs(fit.total_steps - pos.total_steps) <= PLAN_SETTLED * pos.total_steps or round_ == PLAN_ROUNDS - 1:
            break  # (the last round plans with what it has: a timing after it would go unused)
        # a shorter total trains on longer rows (classification: the longest first), so its steps are slower:
        # measure a step of the rows this total draws, and plan again
        pos.total_steps = fit.total_steps
        costs.step_s = measure_step(ctx)
    pos.total_steps, pos.eval_every, pos.eval_rows = fit.total_steps, fit.eval_every, fit.eval_rows
    pos.budget_limited, costs.eval_s = fit.budget_limited, fit.eval_s
    ctx.budget_s, ctx.evals = budget_s, fit.evals
    plan = {
        "budget_s": round(budget_s, 1),
        "startup_s": round(elapsed, 2),
        "step_s": round(costs.step_s, 3),
        "eval_s": round(fit.eval_s, 3),
        "save_s": round(costs.save_s, 3),
        "total_steps": fit.total_steps,
        "steps_without_budget": ctx.cap_steps,
        "eval_every": fit.eval_every,
        "eval_rows": fit.eval_rows if fit.eval_rows is not None else n_eval,
    }
    ctx.events.log(
        f"time budget {cfg.time_budget_minutes:g} min: start-up {elapsed:.1f}s, ~{costs.step_s:.2f}s/step, "
        f"eval ~{fit.eval_s:.1f}s, save ~{costs.save_s:.1f}s -> {fit.total_steps} of {ctx.cap_steps} steps"
    )
    return plan


# --- finish ----------------------------------------------------------------------------------------------------------


def _finish(ctx: RunContext, status: str) -> RunResult:
    """Stopped: report and keep the checkpoint. Otherwise: final evaluation, ship the best adapter, save, report."""
    cfg, pos, acc, events = ctx.cfg, ctx.pos, ctx.accelerator, ctx.events
    world, rank = acc.num_processes, acc.process_index
    if status != "stopped":
        if ctx.data.eval_rows and ctx.last_eval_step != pos.step:
            events.emit("phase", phase="final_eval", step=pos.step, eta_s=round(ctx.eta_s(), 1))
            eval_and_keep_best(ctx)
        events.emit("phase", phase="saving", step=pos.step, eta_s=round(ctx.costs.finish_s(with_eval=False), 1))
        if pos.best_step is not None and pos.best_step != pos.step:
            restore_best(ctx.unwrapped, ctx.run_dir)  # ship the best adapter by eval (every rank: hashes compare)
    lora_hash = state_hash(lora_state(ctx.unwrapped))
    # One write per line: ranks share the pipe, and print() may write the text and its newline separately.
    sys.stdout.write(f"[rank {rank}/{world}] step {pos.step} lora_sha256 {lora_hash}\n")
    sys.stdout.flush()
    metrics: dict[str, Any] = {
        "steps": pos.step,
        "total_steps": pos.total_steps,
        "tokens_seen": pos.tokens_seen,
        "train_seconds": round(pos.train_seconds, 2),
        "tokens_per_s": round(pos.tokens_seen / max(pos.train_seconds, 1e-9), 1),
        "final_loss": ctx.last_loss,
        "final_lr": ctx.scheduler.get_last_lr()[0],
        **ctx.last_metrics,
    }
    end = {"step": pos.step, "total_steps": pos.total_steps, "world_size": world, "lora_hash": lora_hash}
    if status == "stopped":
        events.emit("end", status=status, signal=ctx.stop.signal_name, metrics=metrics, **end)
        return RunResult(status, ctx.run_dir, metrics=metrics)
    status = "time_budget" if pos.budget_limited else "finished"
    if pos.best_metric is not None:
        metrics |= {"best_step": pos.best_step, f"best_{best_key(cfg.task)}": pos.best_metric}
    adapter_dir = None
    if acc.is_main_process:
        adapter_dir = save_adapter(ctx.unwrapped, ctx.tokenizer, cfg, ctx.data, ctx.base_path, metrics, ctx.run_dir)
        events.emit("checkpoint", step=pos.step, path=str(adapter_dir), reason="adapter")
        write_card(ctx, adapter_dir, status)
    acc.wait_for_everyone()
    events.emit("end", status=status, adapter_dir=str(adapter_dir) if adapter_dir else None, metrics=metrics, **end)
    return RunResult(status, ctx.run_dir, adapter_dir, metrics)


def _started_before_pooling(cfg: TrainConfig, run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a classification run started before ``pooling`` existed (its config.yaml lacks it)."""
    if cfg.task != "classification" or cfg.pooling != "auto":
        return False
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(saved, dict) and "pooling" not in saved


def save_adapter(
    model: Any,
    tokenizer: Any,
    cfg: TrainConfig,
    data: TrainData,
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
        # what the head reads: loading (core.classify, core.export) must pool the same way
        "pooling": pooling_of(model) if cfg.task == "classification" else None,
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


def write_card(ctx: RunContext, adapter_dir: Path, status: str) -> Path | None:
    """The run card (``run_card.html``) beside the adapter, with base-vs-tuned answers on held-out examples, written
    before the end event so a finished run always shows one. A card that fails never fails the run: the failure is
    logged, and the library makes the card on demand instead."""
    from core import adapters, runcard

    try:
        # A time budget covers the card too: no comparison starts past the budget's end (minus the exit).
        deadline = ctx.t_start + ctx.budget_s - ctx.costs.exit_s if ctx.budget_s else None
        info = adapters.read(adapter_dir)
        comparisons = runcard.answer_held_out(info, ctx.unwrapped, ctx.tokenizer, deadline)
        return runcard.write_run_card(info, comparisons, status)
    except Exception as exc:  # noqa: BLE001 - the adapter is saved; a card is never worth a failed run
        ctx.events.log(f"run card not written ({type(exc).__name__}: {exc}); make it from the Adapters tab")
        return None


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
    if card.get("pooling") == "mean":
        lines += [MEAN_POOLING_HOWTO]
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
    result = run(cfg, run_dir, resume=bool(resume_dir), stop=stop, t_start=process_start(), exit_s=WORKER_EXIT_S)
    if result.error:
        print(f"error: {result.error}", file=sys.stderr)
    return 1 if result.status == "failed" else 0
