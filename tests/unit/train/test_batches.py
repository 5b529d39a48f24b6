"""Which rows a classification run trains on first (core.train.batches.epoch_batches ``longest_first``)."""

from __future__ import annotations

import random

from core.train import batches as B


def _rows(n: int = 200) -> list[dict]:
    rnd = random.Random(0)
    return [{"input_ids": [1] * rnd.randint(2, 40), "label": i % 2} for i in range(n)]


def test_longest_rows_come_first_when_a_run_cannot_see_every_row() -> None:
    rows = _rows()
    batches = B.epoch_batches(rows, 8, 0, 0, 0, 1, True, longest_first=50)
    first = [i for b in batches[:7] for i in b]  # ceil(50 / 8) = 7 whole batches
    cutoff = sorted((len(r["input_ids"]) for r in rows), reverse=True)[55]
    assert len(first) == 56 and min(len(rows[i]["input_ids"]) for i in first) >= cutoff
    # every row still appears once per epoch, and the longest ones are shuffled among themselves, not sorted
    assert sorted(i for b in batches for i in b) == list(range(200))
    lengths = [max(len(rows[i]["input_ids"]) for i in b) for b in batches[:7]]
    assert lengths != sorted(lengths, reverse=True) or len(set(lengths)) == 1


def test_longest_first_is_off_when_the_run_sees_the_whole_epoch() -> None:
    rows = _rows()
    plain = B.epoch_batches(rows, 8, 0, 0, 0, 1, True)
    assert B.epoch_batches(rows, 8, 0, 0, 0, 1, True, longest_first=200) == plain
    assert B.epoch_batches(rows, 8, 0, 0, 0, 1, True, longest_first=None) == plain
    # two ranks deal the same batches between them (the odd 25th is dropped), the longest rows first on each
    one = B.epoch_batches(rows, 8, 0, 0, 0, 1, True, longest_first=50)
    ranks = [B.epoch_batches(rows, 8, 0, 0, r, 2, True, longest_first=50) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(one[:24])
    assert {i for r in ranks for b in r[:3] for i in b} <= {i for b in one[:7] for i in b}


def test_a_step_is_timed_on_the_rows_the_planned_total_draws() -> None:
    """A budget shorter than an epoch trains on the longest rows: its step must be timed on one of those, not on
    the epoch's average batch (a 5-minute SST-2 run planned 1,808 steps from the average, then ran ~1,420)."""
    rows = _rows()
    padded = lambda b: len(b) * max(len(rows[i]["input_ids"]) for i in b)  # noqa: E731
    whole = B.epoch_batches(rows, 8, 0, 0, 0, 1, True)
    head = B.epoch_batches(rows, 8, 0, 0, 0, 1, True, longest_first=48)
    drawn = B.first_batches(head, total_steps=3, grad_accum=2)
    assert drawn == head[:6]
    assert padded(B.typical_batch(rows, drawn)) > 1.3 * padded(B.typical_batch(rows, whole))
    assert B.first_batches(whole, total_steps=10_000, grad_accum=1) == whole
