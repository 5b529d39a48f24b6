"""The data report: what :func:`core.data.load_data` found and did, shown before anything trains."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from core.data.examples import Example
from core.data.schema import Schema, Task

SAMPLE_ROWS = 3
# Below this many rows a class is warned about before training (issue 8.3: fine-tuned < zero-shot there).
MIN_CLASS_ROWS = 8


@dataclass
class DataReport:
    """What :func:`load_data` found, shown to the user before anything trains."""

    source: str
    task: Task
    format: str
    schema: Schema
    columns: dict[str, str]
    """Role -> source column, e.g. ``{"text": "utterance", "label": "intent"}``."""
    all_columns: list[str]
    rows_read: int
    rows_kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    """Reason -> number of rows dropped for it."""
    dropped_where: dict[str, list[str]] = field(default_factory=dict)
    """Reason -> the first few locations, so the user can find them."""
    max_length: int | None = None
    too_long_policy: Literal["dropped", "truncated"] | None = None
    truncated: int = 0
    token_lengths: dict[str, int] | None = None
    """``p50``/``p90``/``p99``/``max``/``over_max_length`` of full (untruncated) lengths; needs a tokenizer."""
    label_counts: dict[str, int] | None = None
    label_names: list[str] | None = None
    warnings: list[str] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: str = ""

    @property
    def rows_dropped(self) -> int:
        return self.rows_read - self.rows_kept

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (for the adapter card and the UI)."""
        return {**asdict(self), "rows_dropped": self.rows_dropped}


def label_warnings(report: DataReport) -> None:
    """Warn about imbalance, classes too small to learn, before anything trains."""
    counts = report.label_counts or {}
    big, small = max(counts.values()), min(counts.values())
    if big > 5 * small:
        report.warnings.append(
            f"Imbalanced labels: the largest class has {big} rows, the smallest {small} "
            f"({big / small:.0f}x). Accuracy will flatter the model; watch per-class scores."
        )
    rare = [k for k, v in counts.items() if v < MIN_CLASS_ROWS]
    if rare:
        report.warnings.append(
            f"Classes with fewer than {MIN_CLASS_ROWS} rows: {', '.join(rare[:10])}"
            + (" ..." if len(rare) > 10 else "")
            + ". A fine-tuned classifier learns little from so few (and the eval split keeps one of them): add "
            "rows, merge the classes, or keep the zero-shot classifier."
        )


def percentiles(lengths: Sequence[int], max_length: int | None) -> dict[str, int]:
    """Nearest-rank p50/p90/p99/max of token lengths, and how many rows are over ``max_length``."""
    s = sorted(lengths)

    def p(q: float) -> int:  # nearest-rank percentile
        return s[max(0, math.ceil(q / 100 * len(s)) - 1)]

    over = sum(n > max_length for n in s) if max_length else 0
    return {"p50": p(50), "p90": p(90), "p99": p(99), "max": s[-1], "over_max_length": over}


def _cell(text: str, limit: int = 80) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sample(e: Example) -> dict[str, Any]:
    """One example as a short, JSON-ready dict for the report (long cells cut)."""
    if e.messages:
        return {"where": e.where, "messages": [{**m, "content": _cell(m["content"], 120)} for m in e.messages]}
    out: dict[str, Any] = {"where": e.where, "text": _cell(e.text or "", 160)}
    if e.label is not None:
        out["label"] = e.label
    return out
