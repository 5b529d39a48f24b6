"""Planning a run: the learning-rate schedule, and fitting a time budget from measured costs.

Pure arithmetic (no torch), so it is tested directly. A time-boxed run is planned after start-up from the
measured seconds of a step, an evaluation and a save (a few rounds when a shorter total draws longer rows: see
core.train.runner._fit_budget); while it runs, :func:`replan` corrects the total when the
steps turn out slower or faster than measured, and the schedule always ends at the new total, so the learning rate
reaches its end value instead of being cut off mid-decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from core.errors import TrainError

MIN_STEPS = 10
"""Fewer optimizer steps than this cannot warm up and decay a learning rate: a shorter budget is refused."""
TARGET_SHARE = 0.97
"""A time-boxed run aims to have its adapter saved at 97% of the budget: the rest absorbs timing noise."""
REPLAN_TOLERANCE = 0.03
"""A running plan is corrected once its projected end is off by more than this share of the budget (at 2% a
2-minute run on a busy machine re-planned 44 times in 167 steps)."""
EVAL_SHARE = 0.10
"""Evaluations (the final one included) get at most this share of a time budget."""
MAX_EVALS = 5
"""Evaluations per run when ``eval_every`` is not set, the final one included."""
MIN_EVAL_ROWS = 32
"""A time budget never shrinks the eval split below this (a metric on fewer rows is noise)."""
WORKER_EXIT_S = 0.5
"""A worker process's exit after its end event (the job manager reports a run ended once the process is gone):
0.1 s measured on a busy 2-core machine with ``os._exit`` (``core.train.__main__``), ~5 s without it."""


class Schedule:
    """Linear warm-up from 0, then linear or cosine decay to 0 at ``total`` (transformers' formulas).

    A callable object rather than a function, so ``torch.optim.lr_scheduler.LambdaLR`` keeps its fields in the
    scheduler's state dict (a resume restores a re-planned total). :meth:`retarget` moves the end without a jump:
    the decay continues from where it is at a slower or faster pace, so the learning rate still ends at 0.
    """

    def __init__(self, kind: str, total: int, warmup: int) -> None:
        self.kind, self.total, self.warmup = kind, total, min(warmup, total)
        self.anchor_step, self.anchor_progress = self.warmup, 0.0
        """The decay is linear in steps from (anchor_step, anchor_progress) to (total, 1)."""

    def progress(self, step: int) -> float:
        """0 at the end of warm-up (or the last re-plan's value at its step), 1 at ``total``."""
        span = max(1, self.total - self.anchor_step)
        return min(1.0, self.anchor_progress + (1.0 - self.anchor_progress) * (step - self.anchor_step) / span)

    def __call__(self, step: int) -> float:
        if step >= self.total:
            return 0.0
        if step < self.warmup:
            return step / max(1, self.warmup)
        progress = self.progress(step)
        if self.kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def retarget(self, step: int, total: int) -> None:
        """End at ``total`` instead, continuing smoothly from ``step`` (the next step to run)."""
        if step > self.warmup:
            self.anchor_step, self.anchor_progress = step, self.progress(step)
        self.total = total
        self.warmup = min(self.warmup, total)
        self.anchor_step = min(max(self.anchor_step, self.warmup), total)


def warmup_steps(warmup_ratio: float, total: int) -> int:
    return round(warmup_ratio * total)


class BudgetTooShortError(TrainError):
    """The time budget cannot fit a meaningful run; ``minimum_minutes`` is what it would need."""

    def __init__(self, message: str, minimum_minutes: float) -> None:
        super().__init__(message)
        self.minimum_minutes = minimum_minutes


@dataclass
class Costs:
    """Measured seconds (the slowest process decides, so every process plans the same)."""

    step_s: float
    """One optimizer step (all its micro-batches)."""
    eval_s: float = 0.0
    """One full evaluation of the eval split (0 without one)."""
    save_s: float = 0.0
    """Saving the adapter once (the best one during the run, the final one at the end)."""
    checkpoint_s: float = 0.0
    """One resumable checkpoint (adapter + optimizer state)."""
    exit_s: float = 0.0
    """After the end event, until the run counts as ended (a worker process: :data:`WORKER_EXIT_S`)."""

    def finish_s(self, with_eval: bool) -> float:
        """The final phases: last evaluation, saving the adapter, the exit."""
        return (self.eval_s if with_eval else 0.0) + self.save_s + self.exit_s


@dataclass
class BudgetPlan:
    """How a time budget is spent."""

    total_steps: int
    eval_every: int | None
    """Steps between evaluations (None: no eval split); the final evaluation always runs."""
    evals: int | None
    """Evaluations the interval was spread for (final included), so a re-plan keeps their number (None: the
    config's fixed interval, or no eval split)."""
    eval_rows: int | None
    """Eval rows to keep so evaluations fit their share of the budget (None: all)."""
    eval_s: float
    """Seconds per evaluation with that many rows."""
    budget_limited: bool
    """True when the budget, not epochs/max_steps, set total_steps."""


def remaining_s(
    total: int, step: int, costs: Costs, eval_every: int | None, checkpoint_every: int | None = None
) -> float:
    """Seconds from ``step`` to a saved adapter at ``total``: steps, periodic evaluations (each may save the best
    adapter), periodic checkpoints and the final phases. Also the honest ETA shown while a run trains."""
    evals = 0 if not eval_every else max(0, (total - 1) // eval_every - step // eval_every)
    ckpts = 0 if not checkpoint_every else max(0, (total - 1) // checkpoint_every - step // checkpoint_every)
    return (
        max(0, total - step) * costs.step_s
        + evals * (costs.eval_s + costs.save_s)
        + ckpts * costs.checkpoint_s
        + costs.finish_s(with_eval=bool(eval_every))
    )


def _fit(lo: int, hi: int, seconds: float, cost: Callable[[int], float]) -> int:
    """Largest n in [lo, hi] with cost(n) <= seconds (cost grows with n); lo - 1 when none fits."""
    if cost(lo) > seconds:
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= seconds else (lo, mid - 1)
    return lo


def _interval(total: int, n_evals: int | None, eval_every: int | None, eval_rows: int) -> int | None:
    """Steps between evaluations: the config's, or ``n_evals`` spread over ``total`` (None without eval rows)."""
    if not eval_rows:
        return None
    return eval_every or max(1, math.ceil(total / (n_evals or MAX_EVALS)))


def plan_budget(
    budget_s: float,
    elapsed_s: float,
    costs: Costs,
    cap_steps: int,
    eval_rows: int,
    eval_every: int | None = None,
    checkpoint_every: int | None = None,
) -> BudgetPlan:
    """Fit a run into ``budget_s`` seconds of which ``elapsed_s`` are gone (start-up and measuring).

    Args:
        costs: measured seconds; ``eval_s`` for all ``eval_rows`` rows.
        cap_steps: the steps the epochs or max_steps ask for; the budget never adds steps beyond them.
        eval_rows: rows in the eval split (0: none).
        eval_every: the config's fixed interval, or None for up to :data:`MAX_EVALS` evaluations.

    Raises:
        BudgetTooShortError: not even :data:`MIN_STEPS` steps and one evaluation fit; names the minimum minutes.
    """
    keep: int | None = None
    eval_s = costs.eval_s if eval_rows else 0.0
    if eval_rows and eval_s > EVAL_SHARE * budget_s:
        # one evaluation alone would take more than its share: evaluate on fewer rows
        keep = min(eval_rows, max(MIN_EVAL_ROWS, math.floor(eval_rows * EVAL_SHARE * budget_s / eval_s)))
        eval_s *= keep / eval_rows
    planned = Costs(costs.step_s, eval_s, costs.save_s, costs.checkpoint_s, costs.exit_s)
    seconds = budget_s * TARGET_SHARE - elapsed_s
    need = min(MIN_STEPS, cap_steps)
    if eval_every or not eval_rows:
        counts = [None]
    else:
        share = math.floor(EVAL_SHARE * budget_s / eval_s) if eval_s > 0 else MAX_EVALS
        counts = list(range(max(1, min(MAX_EVALS, share)), 0, -1))  # fewer evaluations before fewer steps
    for n_evals in counts:
        total = _fit(
            1,
            cap_steps,
            seconds,
            lambda t, n=n_evals: remaining_s(t, 0, planned, _interval(t, n, eval_every, eval_rows), checkpoint_every),
        )
        if total >= need:
            every = _interval(total, n_evals, eval_every, eval_rows)
            spread = n_evals if eval_rows and not eval_every else None
            return BudgetPlan(total, every, spread, keep, eval_s, budget_limited=total < cap_steps)
    final_only = need if eval_rows else None  # an interval as long as the run: just the final evaluation
    minimum_s = (elapsed_s + remaining_s(need, 0, planned, final_only, checkpoint_every)) / TARGET_SHARE
    minutes = math.ceil(minimum_s / 6) / 10  # rounded up to 0.1 min
    raise BudgetTooShortError(
        f"A time budget of {budget_s / 60:g} min is too short for a meaningful run here: start-up took "
        f"{elapsed_s:.0f}s, one step takes ~{costs.step_s:.1f}s"
        + (f", an evaluation ~{eval_s:.1f}s" if eval_rows else "")
        + f" and saving the adapter ~{costs.save_s:.1f}s, so {need} steps need at least {minutes:g} minutes. "
        f"Set the time budget to {minutes:g} minutes or more, or lower max_length or batch_size.",
        minutes,
    )


def replan(
    total: int,
    step: int,
    elapsed_s: float,
    budget_s: float,
    costs: Costs,
    eval_every: int | None,
    cap_steps: int,
    checkpoint_every: int | None = None,
    evals: int | None = None,
) -> int | None:
    """A new total when the run, at ``step`` after ``elapsed_s``, would miss its budget's target; else None.

    With ``evals`` (the plan's :attr:`BudgetPlan.evals`), the interval of a candidate total is recomputed so the
    number of evaluations stays as planned; use :func:`eval_interval` for the new total's interval.

    ``costs`` hold the seconds seen so far. Shrinking may end the schedule at once (total = step); growing stops at
    ``cap_steps``. Small deviations (:data:`REPLAN_TOLERANCE` of the budget, or two steps) are left alone, so noise
    in step times does not re-plan every step.
    """
    seconds = budget_s * TARGET_SHARE - elapsed_s

    def cost(t: int) -> float:
        return remaining_s(t, step, costs, eval_interval(t, evals, eval_every), checkpoint_every)

    off = cost(total) - seconds
    if abs(off) <= max(REPLAN_TOLERANCE * budget_s, 2 * costs.step_s):
        return None
    new = max(step, _fit(step, cap_steps if off < 0 else total, seconds, cost))
    return new if new != total else None


def eval_interval(total: int, evals: int | None, eval_every: int | None) -> int | None:
    """The interval for ``total`` steps: ``evals`` spread over it, else the fixed ``eval_every``."""
    return max(1, math.ceil(total / evals)) if evals else eval_every
