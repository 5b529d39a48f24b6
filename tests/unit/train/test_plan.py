"""The time-budget planner and the learning-rate schedule as pure arithmetic (core.train.plan)."""

from __future__ import annotations

import pytest
import torch

from core.train.plan import (
    EVAL_SHARE,
    MAX_EVALS,
    MIN_EVAL_ROWS,
    MIN_STEPS,
    TARGET_SHARE,
    BudgetTooShortError,
    Costs,
    Schedule,
    eval_interval,
    plan_budget,
    remaining_s,
    replan,
)


def _ends_by(plan_total: int, budget_s: float, elapsed_s: float, costs: Costs, every: int | None) -> float:
    return elapsed_s + remaining_s(plan_total, 0, costs, every)


# --- schedule --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize(("total", "warmup"), [(40, 0), (40, 4), (7, 1), (3, 2)])
def test_schedule_matches_transformers_and_ends_at_zero(kind: str, total: int, warmup: int) -> None:
    from transformers import get_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = get_scheduler(kind, opt, num_warmup_steps=warmup, num_training_steps=total).lr_lambdas[0]
    schedule = Schedule(kind, total, warmup)
    for step in range(total + 1):
        assert schedule(step) == pytest.approx(reference(step), abs=1e-12), step
    assert schedule(total) == 0.0 and schedule(total + 5) == 0.0
    # where transformers' cosine never decays (warm-up as long as the run), this schedule still ends at 0
    assert Schedule(kind, total, total)(total) == 0.0


def test_schedule_state_survives_lambdalr_state_dict() -> None:
    """A re-planned total is restored on resume: LambdaLR saves a callable object's fields."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, Schedule("cosine", 100, 5))
    sched.lr_lambdas[0].total = 60
    fresh = torch.optim.lr_scheduler.LambdaLR(opt, Schedule("cosine", 100, 5))
    fresh.load_state_dict(sched.state_dict())
    assert fresh.lr_lambdas[0].total == 60


# --- plan_budget -----------------------------------------------------------------------------------------------------


def test_budget_plan_fills_the_budget_with_steps_evals_and_saving() -> None:
    costs = Costs(step_s=0.1, eval_s=3.0, save_s=0.3)
    plan = plan_budget(300, 25, costs, cap_steps=10_000, eval_rows=1000)
    assert plan.budget_limited and plan.eval_rows is None
    ends = _ends_by(plan.total_steps, 300, 25, costs, plan.eval_every)
    assert TARGET_SHARE * 300 - costs.step_s <= ends <= TARGET_SHARE * 300  # no step of slack left, none too many
    n_evals = (plan.total_steps - 1) // plan.eval_every + 1  # periodic + final
    assert n_evals <= MAX_EVALS and n_evals * plan.eval_s <= EVAL_SHARE * 300


def test_budget_never_adds_steps_beyond_the_epochs() -> None:
    plan = plan_budget(600, 10, Costs(0.5, 1.0, 0.5), cap_steps=50, eval_rows=100)
    assert plan.total_steps == 50 and not plan.budget_limited and plan.eval_every == 10


def test_slow_eval_gets_fewer_rows_to_fit_its_share_of_the_budget() -> None:
    """One 30 s evaluation in a 60 s budget: it is shrunk to 10% of the budget (6 s -> 200 of 1,000 rows)."""
    plan = plan_budget(60, 10, Costs(0.5, 30.0, 0.5), cap_steps=1000, eval_rows=1000)
    assert plan.eval_rows == 200 and plan.eval_s == pytest.approx(6.0)
    assert plan.eval_every == plan.total_steps  # only the final evaluation fits the share
    tiny = plan_budget(60, 10, Costs(0.1, 1000.0, 0.5), cap_steps=1000, eval_rows=1000)
    assert tiny.eval_rows == MIN_EVAL_ROWS


def test_fixed_eval_interval_is_kept_and_paid_for() -> None:
    costs = Costs(1.0, 2.0, 0.5)
    plan = plan_budget(120, 10, costs, cap_steps=1000, eval_rows=50, eval_every=10)
    assert plan.eval_every == 10
    assert _ends_by(plan.total_steps, 120, 10, costs, 10) <= TARGET_SHARE * 120


def test_too_short_budget_is_refused_with_a_minimum_that_works() -> None:
    """The 1-minute SFT case seen in issue 8: a 3.7 s step after 30 s of start-up must not plan '1 of 370 steps'."""
    costs = Costs(step_s=3.7, eval_s=2.0, save_s=0.5)
    with pytest.raises(BudgetTooShortError, match=r"at least 1\.\d minutes") as info:
        plan_budget(60, 30, costs, cap_steps=370, eval_rows=20)
    minimum = info.value.minimum_minutes
    assert 1.0 < minimum < 2.0
    plan = plan_budget(minimum * 60, 30, costs, cap_steps=370, eval_rows=20)
    assert plan.total_steps >= MIN_STEPS
    with pytest.raises(BudgetTooShortError):
        plan_budget((minimum - 0.1) * 60, 30, costs, cap_steps=370, eval_rows=20)


def test_small_data_needs_only_its_own_steps() -> None:
    """A 4-step dataset is meaningful in 4 steps: the minimum is the data's, not MIN_STEPS."""
    plan = plan_budget(10, 2, Costs(1.0, 0.5, 0.2), cap_steps=4, eval_rows=5)
    assert plan.total_steps == 4 and not plan.budget_limited


# --- replan ----------------------------------------------------------------------------------------------------------


def test_replan_leaves_a_run_on_schedule_alone() -> None:
    costs = Costs(1.0, 1.0, 0.5)
    plan = plan_budget(120, 10, costs, cap_steps=1000, eval_rows=10)
    on_time = 10 + 20 * costs.step_s  # 20 steps done exactly as measured
    assert replan(plan.total_steps, 20, on_time, 120, costs, plan.eval_every, 1000) is None


def test_replan_shrinks_when_steps_are_slower_and_lands_on_target() -> None:
    costs = Costs(1.0, 1.0, 0.5)
    plan = plan_budget(120, 10, costs, cap_steps=1000, eval_rows=10)
    slower = Costs(1.5, 1.0, 0.5)
    elapsed = 10 + 20 * 1.5
    new = replan(plan.total_steps, 20, elapsed, 120, slower, plan.eval_every, 1000)
    assert new is not None and 20 < new < plan.total_steps
    ends = elapsed + remaining_s(new, 20, slower, plan.eval_every)
    assert TARGET_SHARE * 120 - slower.step_s <= ends <= TARGET_SHARE * 120


def test_replan_ends_the_schedule_now_when_out_of_time() -> None:
    assert replan(100, 30, 119.0, 120, Costs(1.0, 1.0, 0.5), 20, 1000) == 30


def test_replan_grows_when_faster_but_never_beyond_the_cap() -> None:
    fast = Costs(0.5, 1.0, 0.5)
    assert replan(100, 10, 15, 120, fast, 20, cap_steps=150) == 150
    grown = replan(100, 60, 45, 120, fast, 20, cap_steps=1000)
    assert grown is not None and grown > 100
    ends = 45 + remaining_s(grown, 60, fast, 20)
    assert TARGET_SHARE * 120 - fast.step_s <= ends <= TARGET_SHARE * 120


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("new_total", [60, 140, 25])
def test_retarget_continues_without_a_jump_and_ends_at_zero(kind: str, new_total: int) -> None:
    schedule = Schedule(kind, 100, 10)
    before = schedule(25)
    schedule.retarget(25, new_total)
    assert schedule(25) == pytest.approx(before) if new_total > 25 else schedule(25) == 0.0
    lrs = [schedule(s) for s in range(25, new_total + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and schedule(new_total) == 0.0
    during_warmup = Schedule(kind, 100, 10)
    during_warmup.retarget(4, 50)
    assert during_warmup(4) == pytest.approx(0.4) and during_warmup(10) == 1.0 and during_warmup(50) == 0.0


def test_replan_keeps_the_number_of_evaluations() -> None:
    """Seen on SST-2 under load: a budget with room for one (final) evaluation grew its total past the interval
    planned for the first total, and two unplanned evaluations ate the budget's eval share."""
    plan = plan_budget(60, 10, Costs(0.5, 30.0, 0.5), cap_steps=1000, eval_rows=1000)
    assert plan.evals == 1 and plan.eval_every == plan.total_steps
    faster = Costs(0.25, plan.eval_s, 0.5)
    elapsed = 10 + 5 * 0.25
    new = replan(plan.total_steps, 5, elapsed, 60, faster, plan.eval_every, 1000, evals=plan.evals)
    assert new is not None and new > plan.total_steps
    assert eval_interval(new, plan.evals, plan.eval_every) == new  # still only the final evaluation
    assert elapsed + remaining_s(new, 5, faster, new) <= TARGET_SHARE * 60
    fixed = plan_budget(120, 10, Costs(1.0, 2.0, 0.5), cap_steps=1000, eval_rows=50, eval_every=10)
    assert fixed.evals is None and eval_interval(500, fixed.evals, fixed.eval_every) == 10
