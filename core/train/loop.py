"""The step loop of a run, and the timings a time budget is planned from.

:class:`RunContext` is what the three phases of ``core.train.runner`` share: the plan phase builds it, the loop
here advances it (steps, periodic evaluations and checkpoints, stop requests, budget re-plans), the finish phase
evaluates and saves. Every cross-process decision goes through ``accelerator.reduce``, so all ranks take the same
branch at the same step.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from core.config import TrainConfig
from core.train.batches import (
    Collate,
    TrainData,
    collate_for,
    count_targets,
    epoch_batches,
    first_batches,
    loss_sum,
    to_device,
    typical_batch,
)
from core.train.checkpoint import Position, save_best, save_checkpoint
from core.train.evaluate import best_key, evaluate, is_better
from core.train.events import EventLog, StopFlag
from core.train.plan import Costs, eval_interval, remaining_s, replan
from core.train.threads import TrainThreads


@dataclass
class RunContext:
    """One run's state across its phases (plan -> loop -> finish)."""

    cfg: TrainConfig
    run_dir: Path
    accelerator: Accelerator
    events: EventLog
    stop: StopFlag
    t_start: float
    """The worker's start on the ``time.monotonic()`` clock; a time budget counts from here."""
    data: TrainData
    tokenizer: Any
    base_path: str
    model: Any
    """As prepared by the accelerator (DDP-wrapped with several processes); ``unwrapped`` is the peft model."""
    unwrapped: Any
    optimizer: Any
    params: list[torch.nn.Parameter]
    pos: Position
    costs: Costs
    """Seconds per step, evaluation and save: measured for a time budget, then updated from what the run sees."""
    scheduler: Any = None
    """``LambdaLR`` over a :class:`core.train.plan.Schedule` (built once the total is planned)."""
    budget_s: float | None = None
    """The time budget in seconds while it may re-plan the total (None: no budget, or a resumed run)."""
    cap_steps: int = 0
    """The steps epochs/max_steps ask for: a re-plan never goes beyond them."""
    evals: int | None = None
    """Evaluations a time budget spread over the run; a re-plan keeps their number (None: a fixed interval)."""
    step_timings: dict[tuple[int, ...], float] = field(default_factory=dict)
    """Measured seconds per step by timed micro-batch: a plan round that times the same batch again reuses it."""
    last_metrics: dict[str, float] = field(default_factory=dict)
    last_eval_step: int | None = None
    last_loss: float | None = None

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @property
    def collate(self) -> Collate:
        return collate_for(self.cfg.task)

    def batches_for(self, epoch: int) -> list[list[int]]:
        """This rank's micro-batches of ``epoch``."""
        acc, cfg = self.accelerator, self.cfg
        by_length = cfg.task == "classification"
        rows = self.data.train_rows
        # a planned total that cannot see every row trains on the longest ones (classification; epoch_batches)
        seen = self.pos.total_steps * cfg.grad_accum * cfg.rows_per_batch * acc.num_processes
        first = seen if by_length and epoch == 0 and self.pos.total_steps else None
        world = acc.num_processes
        return epoch_batches(rows, cfg.rows_per_batch, cfg.seed, epoch, acc.process_index, world, by_length, first)

    def eta_s(self) -> float:
        """Seconds to a saved adapter: remaining steps, evaluations, checkpoints and the final phases."""
        return remaining_s(
            self.pos.total_steps, self.pos.step, self.costs, self.pos.eval_every, self.cfg.checkpoint_every
        )

    def agreed_max(self, *values: float) -> list[float]:
        """The largest of each value over all processes (the slowest rank decides; every rank gets the same)."""
        acc = self.accelerator
        return acc.reduce(torch.tensor(values, device=acc.device), reduction="max").cpu().tolist()


def train_step(
    accelerator: Accelerator,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    params: list[torch.nn.Parameter],
    window: list[list[int]],
    rows: list[dict[str, Any]],
    collate: Collate,
    pad_id: int,
    cfg: TrainConfig,
) -> tuple[float, int]:
    """One optimizer step over ``window`` micro-batches; returns (mean loss over all ranks, real tokens on all ranks).

    The loss is normalised by the global count of targets in the window (assistant tokens for sft, examples for
    classification), so accumulation and process count do not change its meaning: DDP averages gradients over
    ranks, hence the ``world`` factor.
    """
    device = accelerator.device
    batches = [to_device(collate([rows[i] for i in b], pad_id), device) for b in window]
    counts = torch.tensor([float(sum(count_targets(b, cfg.task) for b in batches))], device=device)
    denom = max(float(accelerator.reduce(counts, reduction="sum")[0]), 1.0)
    scale = accelerator.num_processes / denom
    summed, tokens = 0.0, 0
    for i, batch in enumerate(batches):
        # gradients are all-reduced once per window, on its last micro-batch
        sync = accelerator.no_sync(model) if i < len(batches) - 1 else contextlib.nullcontext()
        with sync, accelerator.autocast():
            loss = loss_sum(model, batch, cfg.task)
            accelerator.backward(loss * scale)
        summed += float(loss.detach())
        tokens += int(batch["real_tokens"])
    if cfg.max_grad_norm > 0:
        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    totals = accelerator.reduce(torch.tensor([summed, float(tokens)], device=device), reduction="sum").cpu()
    return float(totals[0]) / denom, round(float(totals[1]))


# --- timings for a time budget ---------------------------------------------------------------------------------------


def measure_step(ctx: RunContext) -> float:
    """Seconds per optimizer step: a timed forward+backward of a typical micro-batch (after one warm-up), times the
    accumulation, without touching the weights (the loss is scaled to zero and the gradients dropped).

    The batch is typical of those the current total will train on: a total shorter than an epoch trains on the
    longest rows (``epoch_batches``), whose steps are slower than the epoch's average."""
    acc, cfg, rows = ctx.accelerator, ctx.cfg, ctx.data.train_rows
    batches = ctx.batches_for(0)
    if cfg.task == "classification":  # the longest rows first when the total is shorter than the epoch
        batches = first_batches(batches, ctx.pos.total_steps, cfg.grad_accum)
    chosen = typical_batch(rows, batches)
    # a batch timed before (chat runs draw alike whatever the total) is reused when every process has its timing:
    # the decision is collective, as the timing's own reduction is
    (missing,) = ctx.agreed_max(float(tuple(chosen) not in ctx.step_timings))
    if not missing:
        return ctx.agreed_max(ctx.step_timings[tuple(chosen)])[0]  # each process keeps its own timing
    batch = to_device(ctx.collate([rows[i] for i in chosen], ctx.pad_id), acc.device)
    seconds = 0.0
    for _ in range(2):
        t0 = time.monotonic()
        with acc.no_sync(ctx.model), acc.autocast():
            acc.backward(loss_sum(ctx.model, batch, cfg.task) * 0.0)
        seconds = time.monotonic() - t0
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.step_timings[tuple(chosen)] = seconds * cfg.grad_accum * 1.05  # +5% for the optimizer, reductions, events
    return ctx.agreed_max(ctx.step_timings[tuple(chosen)])[0]


@torch.no_grad()
def measure_eval(ctx: RunContext) -> float:
    """Seconds for one evaluation of the whole eval split: a timed forward of a typical eval batch (after one
    warm-up) times the batches of this rank's shard, +10% for the metrics."""
    acc, rows, size = ctx.accelerator, ctx.data.eval_rows, ctx.cfg.rows_per_batch
    if not rows:
        return 0.0
    shard = sorted(rows[acc.process_index :: acc.num_processes], key=lambda r: len(r["input_ids"]))
    chunks = [list(range(s, min(s + size, len(shard)))) for s in range(0, len(shard), size)] or [[]]
    seconds = 0.0
    if shard:
        batch = to_device(ctx.collate([shard[i] for i in typical_batch(shard, chunks)], ctx.pad_id), acc.device)
        ctx.unwrapped.eval()
        for _ in range(2):
            t0 = time.monotonic()
            with acc.autocast():
                loss_sum(ctx.unwrapped, batch, ctx.cfg.task)
            seconds = time.monotonic() - t0
        ctx.unwrapped.train()
    return ctx.agreed_max(seconds * len(chunks) * 1.1)[0]


def measure_save(ctx: RunContext) -> float:
    """Seconds to save the adapter and tokenizer once (into a scratch folder that is removed again)."""
    t0 = time.monotonic()
    if ctx.accelerator.is_main_process:
        scratch = ctx.run_dir / ".save-timing"
        ctx.unwrapped.save_pretrained(scratch)
        ctx.tokenizer.save_pretrained(scratch)
        shutil.rmtree(scratch, ignore_errors=True)
    ctx.accelerator.wait_for_everyone()
    return ctx.agreed_max(time.monotonic() - t0)[0]


STEP_WINDOW = (20, 100)
"""Fewest and most recent steps the running step time is averaged over, as many as fill :data:`STEP_WINDOW_S`.
Classification batches are sorted by length, so one step takes 0.6-1.6x another: over 20 steps the estimate swung
by +-15% and a 5-minute SST-2 run re-planned ~150 times, moving its evaluation interval with it (3 of 5
evaluations ran); 100 of its 0.2 s steps re-planned 21 times. A chat run's 3.7 s steps keep 20 (74 s), so a
machine that slows down is still noticed within a short budget."""
STEP_WINDOW_S = 20.0
"""Seconds of recent steps the running step time should cover."""


def recent_window(recent: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """The last :data:`STEP_WINDOW` (seconds, tokens) steps covering ~STEP_WINDOW_S."""
    fewest, most = STEP_WINDOW
    mean = sum(s for s, _ in recent) / len(recent)
    n = max(fewest, min(most, round(STEP_WINDOW_S / max(mean, 1e-9))))
    return recent[-n:]


def recent_step_s(recent: list[tuple[float, int]]) -> float:
    """The running seconds per step: the mean over :func:`recent_window`."""
    window = recent_window(recent)
    return sum(s for s, _ in window) / len(window)


def recent_tokens_per_s(recent: list[tuple[float, int]]) -> float:
    """Tokens per second over the same window as the step time, so the shown speed reacts as fast as the plan
    (over the last 100 steps a chat run's figure lagged ~6 minutes behind a machine that slowed down)."""
    window = recent_window(recent)
    return sum(t for _, t in window) / max(sum(s for s, _ in window), 1e-9)


# --- the loop --------------------------------------------------------------------------------------------------------


def fixed_threads() -> int | None:
    """``DEMOFORGE_TRAIN_THREADS=N``: the thread count a run keeps (set before its plan times a step), or None."""
    fixed = os.environ.get("DEMOFORGE_TRAIN_THREADS", "").strip()
    return int(fixed) if fixed.isdigit() and int(fixed) > 0 else None


def cpu_threads(acc: Accelerator) -> TrainThreads | None:
    """The thread chooser for a run on the CPU in one process (:mod:`core.train.threads`), else None: a GPU run's
    threads only feed the GPU, several processes already split the cores between them, and
    ``DEMOFORGE_TRAIN_THREADS`` fixes the count."""
    if fixed_threads() is not None or acc.device.type != "cpu" or acc.num_processes > 1:
        return None
    return TrainThreads(torch.get_num_threads()) if torch.get_num_threads() >= 2 else None


def run_steps(ctx: RunContext) -> str:
    """Optimizer steps until the planned total ('finished') or a stop request ('stopped', after a checkpoint).

    Periodic evaluations keep the best adapter; the final evaluation belongs to the finish phase.
    """
    threads, start_threads = cpu_threads(ctx.accelerator), torch.get_num_threads()
    try:
        return _steps(ctx, threads)
    finally:  # the final evaluation and save, and whatever else runs in this process, get the count back
        torch.set_num_threads(start_threads)


def _steps(ctx: RunContext, threads: TrainThreads | None) -> str:
    """The loop of :func:`run_steps`, with its thread chooser (None: the count stays)."""
    cfg, pos, acc = ctx.cfg, ctx.pos, ctx.accelerator
    batches, loaded_epoch = ctx.batches_for(pos.epoch), pos.epoch
    recent: list[tuple[float, int]] = []  # (seconds, tokens) of the last steps, for tokens/s and the step time
    while pos.step < pos.total_steps:
        if loaded_epoch != pos.epoch:
            batches, loaded_epoch = ctx.batches_for(pos.epoch), pos.epoch
        window = batches[pos.batch_index : pos.batch_index + cfg.grad_accum]
        probe = threads is not None and threads.probing
        if threads is not None and threads.threads() != torch.get_num_threads():
            torch.set_num_threads(threads.threads())
        t0, cpu0 = time.monotonic(), time.process_time()
        rows = ctx.data.train_rows
        loss, tokens = train_step(
            acc, ctx.model, ctx.optimizer, ctx.scheduler, ctx.params, window, rows, ctx.collate, ctx.pad_id, cfg
        )
        pos.step += 1
        pos.batch_index += len(window)
        if pos.batch_index >= len(batches):
            pos.epoch, pos.batch_index = pos.epoch + 1, 0
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        stop, seconds, elapsed = ctx.agreed_max(float(ctx.stop.requested), wall, time.monotonic() - ctx.t_start)
        if threads is not None:
            threads.record(wall, cpu, tokens)
        pos.train_seconds += seconds
        pos.tokens_seen += tokens
        ctx.last_loss = loss
        if not probe:  # a probe step's time says little about the run's pace: the plan must not move with it
            recent = (recent + [(seconds, tokens)])[-STEP_WINDOW[1] :]
        if recent:
            ctx.costs.step_s = recent_step_s(recent)
        if ctx.budget_s is not None and len(recent) >= 3:
            _replan(ctx, elapsed)
        ctx.events.emit(
            "step",
            step=pos.step,
            total_steps=pos.total_steps,
            epoch=round(pos.epoch + pos.batch_index / len(batches), 4),
            loss=loss,
            lr=ctx.scheduler.get_last_lr()[0],
            tokens_per_s=recent_tokens_per_s(recent),
            eta_s=round(ctx.eta_s(), 1),
        )
        if stop > 0:
            save_checkpoint(acc, ctx.model, ctx.optimizer, ctx.scheduler, pos, ctx.run_dir)
            ctx.events.emit("checkpoint", step=pos.step, path=str(ctx.run_dir / "checkpoint"), reason="stop")
            return "stopped"
        if pos.eval_every and pos.step % pos.eval_every == 0 and pos.step < pos.total_steps:
            eval_and_keep_best(ctx)
        if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0 and pos.step < pos.total_steps:
            t0 = time.monotonic()
            save_checkpoint(acc, ctx.model, ctx.optimizer, ctx.scheduler, pos, ctx.run_dir)
            ctx.costs.checkpoint_s = ctx.agreed_max(time.monotonic() - t0)[0]
            ctx.events.emit("checkpoint", step=pos.step, path=str(ctx.run_dir / "checkpoint"), reason="periodic")
    return "finished"


def _replan(ctx: RunContext, elapsed: float) -> None:
    """Move the total (and the schedule's end with it) when the steps run slower or faster than planned."""
    pos = ctx.pos
    assert ctx.budget_s is not None
    every, budget_s, ckpt = pos.eval_every, ctx.budget_s, ctx.cfg.checkpoint_every
    new = replan(pos.total_steps, pos.step, elapsed, budget_s, ctx.costs, every, ctx.cap_steps, ckpt, ctx.evals)
    if new is None:
        return
    ctx.events.emit("plan", step=pos.step, total_steps=new, previous_total=pos.total_steps, step_s=ctx.costs.step_s)
    pos.total_steps, pos.eval_every = new, eval_interval(new, ctx.evals, pos.eval_every)
    pos.budget_limited = new < ctx.cap_steps
    ctx.scheduler.lr_lambdas[0].retarget(pos.step, new)
    # the next step's learning rate on the new schedule (step() evaluates the lambda at last_epoch + 1); it only
    # changes when the schedule ends now
    ctx.scheduler.last_epoch -= 1
    ctx.scheduler.step()


def eval_and_keep_best(ctx: RunContext) -> dict[str, float]:
    """Evaluate, emit the metrics, save the adapter to ``best/`` when it is the best so far; times both."""
    acc, cfg, pos = ctx.accelerator, ctx.cfg, ctx.pos
    t0 = time.monotonic()
    n_labels = len(ctx.data.labels or [])
    metrics = evaluate(acc, ctx.unwrapped, ctx.data.eval_rows, cfg.task, cfg.rows_per_batch, ctx.pad_id, n_labels)
    t1 = time.monotonic()
    ctx.events.emit("eval", step=pos.step, total_steps=pos.total_steps, metrics=metrics)
    saved = is_better(metrics, pos.best_metric, cfg.task)
    if saved:
        pos.best_metric, pos.best_step = metrics[best_key(cfg.task)], pos.step
        if acc.is_main_process:
            save_best(ctx.unwrapped, ctx.run_dir)
    acc.wait_for_everyone()
    eval_s, save_s = ctx.agreed_max(t1 - t0, time.monotonic() - t1)
    ctx.costs.eval_s = eval_s
    if saved:
        ctx.costs.save_s = max(ctx.costs.save_s, save_s)
    ctx.last_metrics, ctx.last_eval_step = metrics, pos.step
    return metrics


def eval_rows_subset(rows: list[dict[str, Any]], keep: int, seed: int) -> list[dict[str, Any]]:
    """``keep`` of the eval rows, spread evenly over the split (deterministic: every rank and resume agree)."""
    if keep >= len(rows):
        return rows
    stride = len(rows) / keep
    offset = seed % max(1, math.floor(stride))
    return [rows[min(len(rows) - 1, offset + math.floor(i * stride))] for i in range(keep)]
