"""Plain-language advice after comparing zero-shot with a fine-tuned classifier on the user's labelled file.

Issue 8 saw a Banking77 adapter score below zero-shot: a classifier fine-tuned on too few rows per class (or on
rows unlike the file) can lose to zero-shot, and the user should hear why and what to do, not just see a number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.classify.scoring import Metrics

MIN_ROWS_PER_CLASS = 8
"""Below this many training rows in some class, a fine-tuned head has too little to learn that class from."""
GOOD_ROWS_PER_CLASS = 20
"""What to aim for when adding rows (a round figure, not a guarantee)."""


@dataclass
class Comparison:
    """Zero-shot vs fine-tuned on one labelled file, with advice the UI shows as it is."""

    results: list[tuple[str, Metrics]]
    """(method line, metrics) for zero-shot, then for the fine-tuned adapter."""
    advice: str
    """One or two sentences: which to use, and why (e.g. too few rows per class); never empty."""
    zero_shot_better: bool
    """True when the fine-tuned adapter's macro-F1 is below zero-shot's on this file."""


def comparison_advice(zero: Metrics, tuned: Metrics, card: Mapping[str, Any] | None = None) -> tuple[str, bool]:
    """(advice, zero_shot_better) from both methods' metrics and the adapter's card (its training data summary).

    Macro-F1 decides, as in the Classify tab's comparison line: it does not let a large class hide a lost one.
    """
    delta = tuned.macro_f1 - zero.macro_f1
    if delta >= 0:
        return (
            f"The fine-tuned adapter beats zero-shot on this file (macro-F1 {tuned.macro_f1:.3f} vs "
            f"{zero.macro_f1:.3f}): use the adapter.",
            False,
        )
    head = (
        f"The fine-tuned adapter scores below zero-shot on this file (macro-F1 {tuned.macro_f1:.3f} vs "
        f"{zero.macro_f1:.3f}): keep zero-shot for now."
    )
    data = (card or {}).get("data") or {}
    counts = {str(k): int(v) for k, v in (data.get("label_counts") or {}).items()}
    known = {str(x) for x in (card or {}).get("labels") or []}
    unknown = sorted({lb for lb, row in zip(tuned.labels, tuned.confusion) if sum(row) and lb not in known})
    if known and unknown:
        shown = ", ".join(repr(x) for x in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        return (
            f"{head} The file has labels the adapter was never trained on ({shown}); it can only answer with its "
            f"own {len(known)} labels. Fine-tune on rows with this file's labels.",
            True,
        )
    if counts:
        fewest_label, fewest = min(counts.items(), key=lambda kv: (kv[1], kv[0]))
        per_class = sum(counts.values()) / len(counts)
        if fewest < MIN_ROWS_PER_CLASS or per_class < GOOD_ROWS_PER_CLASS:
            return (
                f"{head} It was trained on too few rows per class: {per_class:.0f} on average, {fewest} for "
                f"{fewest_label!r}. Add rows (aim for {GOOD_ROWS_PER_CLASS}+ per class, corrections from this "
                "tab count) and fine-tune again.",
                True,
            )
    return (
        f"{head} Its training rows may differ from this file (other wording, length or label meaning), or it "
        "needs more steps: fine-tune on rows like these (correct some here) or with a longer time budget.",
        True,
    )
