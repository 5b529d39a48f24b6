"""Fitting a time budget with measured steps (core.train.runner._fit_budget, core.train.loop.measure_step): the
step is timed on the rows the planned total draws, and timed again only when those rows change."""

from __future__ import annotations

import pytest
import torch

from core.train.plan import TARGET_SHARE, Costs, plan_budget, remaining_s


def test_budget_plan_remeasures_the_step_until_the_total_settles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer steps train on longer rows (slower steps): the planner measures a step of the rows its total draws
    and plans again, so the first plan's over-count never reaches the run."""
    import time
    from types import SimpleNamespace

    from core.train import runner

    def step_s(ctx: SimpleNamespace) -> float:
        """Shaped like SST-2's: the fewer steps, the longer the rows they draw; a whole epoch (3,000) averages."""
        return 0.2 * (1000 / min(ctx.pos.total_steps, 3000)) ** 0.3

    monkeypatch.setattr(runner, "measure_step", step_s)
    monkeypatch.setattr(runner, "measure_eval", lambda ctx: 1.0)
    monkeypatch.setattr(runner, "measure_save", lambda ctx: 0.2)
    ctx = SimpleNamespace(
        cfg=SimpleNamespace(time_budget_minutes=5, eval_every=None, checkpoint_every=None),
        pos=SimpleNamespace(total_steps=10_000, eval_every=None, eval_rows=None, budget_limited=False),
        costs=Costs(step_s=0.0),
        data=SimpleNamespace(eval_rows=[{}] * 500),
        cap_steps=10_000,
        t_start=time.monotonic(),
        agreed_max=lambda *v: list(v),
        events=SimpleNamespace(log=lambda msg: None),
    )
    plan = runner._fit_budget(ctx)
    total = ctx.pos.total_steps
    assert plan["total_steps"] == total and ctx.costs.step_s == pytest.approx(step_s(ctx), rel=0.05)
    one_shot = plan_budget(300, 0.0, Costs(step_s=0.2 / 3**0.3, eval_s=1.0, save_s=0.2), 10_000, 500).total_steps
    assert total < 0.9 * one_shot  # the single plan from the epoch's average step would have over-counted
    # the settled total fits the budget at the step time of the rows it draws (within the 3% it settles to)
    needs = remaining_s(total, 0, Costs(step_s=step_s(ctx), eval_s=1.0, save_s=0.2), ctx.pos.eval_every)
    assert 0.95 * TARGET_SHARE * 300 <= needs <= 1.03 * TARGET_SHARE * 300


@pytest.mark.parametrize(("task", "timings"), [("classification", 2), ("sft", 1)])
def test_a_plan_round_times_a_step_again_only_when_its_rows_change(
    monkeypatch: pytest.MonkeyPatch, task: str, timings: int
) -> None:
    """Classification draws longer rows for a shorter total, so the step is timed again; a chat run draws the same
    rows whatever its total, and a second timing of a 3.7 s step would eat a 1-minute budget."""
    import contextlib
    import random
    from types import SimpleNamespace

    from core.train import loop
    from core.train.batches import epoch_batches

    rnd = random.Random(0)
    rows = [{"input_ids": [1] * rnd.randint(2, 60)} for _ in range(800)]
    timed: list[int] = []

    def fake_loss(model: object, batch: dict, task: str) -> torch.Tensor:
        timed.append(len(batch["n"]))
        return torch.zeros((), requires_grad=True)

    monkeypatch.setattr(loop, "loss_sum", fake_loss)
    acc = SimpleNamespace(
        device="cpu",
        no_sync=lambda m: contextlib.nullcontext(),
        autocast=contextlib.nullcontext,
        backward=lambda loss: None,
    )
    pos = SimpleNamespace(total_steps=100)  # an epoch of 100 batches of 8
    ctx = SimpleNamespace(
        accelerator=acc,
        cfg=SimpleNamespace(task=task, grad_accum=1),
        data=SimpleNamespace(train_rows=rows),
        pos=pos,
        batches_for=lambda epoch: epoch_batches(
            rows, 8, 0, epoch, 0, 1, task == "classification", pos.total_steps * 8 if task == "classification" else None
        ),
        collate=lambda picked, pad: {"n": torch.zeros(len(picked))},
        pad_id=0,
        model=None,
        optimizer=SimpleNamespace(zero_grad=lambda set_to_none: None),
        agreed_max=lambda *v: list(v),
        step_timings={},
    )
    loop.measure_step(ctx)
    pos.total_steps = 20  # the plan's first round: a fifth of the epoch
    loop.measure_step(ctx)
    assert len(timed) == 2 * timings  # two passes (warm-up + timed) per timing


def test_the_running_step_time_covers_about_twenty_seconds_of_steps() -> None:
    """Short, length-varying steps are averaged over many (a steady plan); long steps over few (a machine that slows
    down is noticed within a short budget)."""
    from core.train.loop import recent_step_s

    short = [(0.12 if i % 2 else 0.28, 0) for i in range(99)] + [(0.2, 0)]  # alternating: any window of 2k is 0.2
    assert recent_step_s(short) == pytest.approx(0.2, abs=1e-3)  # all 100: the alternation averages out
    slowed = [(3.7, 0)] * 80 + [(7.4, 0)] * 20  # a chat run whose steps doubled 20 steps ago
    assert recent_step_s(slowed) == pytest.approx(7.4)  # 20 steps: the old speed is already forgotten
    quick_then_slow = [(0.1, 0)] * 80 + [(0.2, 0)] * 20
    assert recent_step_s(quick_then_slow) == pytest.approx(0.12)  # 0.1 s steps: all 100 fit in 20 s


def test_the_shown_tokens_per_s_follows_the_same_window_as_the_step_time() -> None:
    """A chat run whose steps halved in speed 20 steps ago shows the new speed, not a 100-step average."""
    from core.train.loop import recent_tokens_per_s

    slowed = [(3.7, 1000)] * 80 + [(7.4, 1000)] * 20
    assert recent_tokens_per_s(slowed) == pytest.approx(1000 / 7.4)
    sst2 = [(0.2, 400)] * 100  # short steps: all 100 count
    assert recent_tokens_per_s(sst2) == pytest.approx(2000)
