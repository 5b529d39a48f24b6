"""Deterministic train/eval splits and data fingerprints (for the adapter card and safe resumes)."""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def split_train_eval(
    items: Sequence[T], eval_fraction: float, seed: int = 0, stratify: Sequence[Hashable] | None = None
) -> tuple[list[T], list[T]]:
    """Deterministic shuffle-and-split; with ``stratify`` (e.g. labels) each class is split on its own.

    Every group of two or more items puts at least one in eval when ``eval_fraction > 0``, so rare classes
    are measured; the same ``items``, fraction and seed always give the same split.
    """
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, key in enumerate(stratify if stratify is not None else [None] * len(items)):
        groups[key].append(i)
    rng = random.Random(seed)
    eval_idx: set[int] = set()
    for key in sorted(groups, key=repr):  # sorted: dict order must not change the split
        idx = groups[key]
        rng.shuffle(idx)
        n = round(len(idx) * eval_fraction)
        if eval_fraction > 0 and len(idx) >= 2:
            n = min(max(n, 1), len(idx) - 1)
        eval_idx.update(idx[:n])
    train = [items[i] for i in range(len(items)) if i not in eval_idx]
    return train, [items[i] for i in sorted(eval_idx)]


def data_fingerprint(path_or_records: str | Path | Sequence[Any]) -> str:
    """Short sha256 (12 hex) of a file's bytes, or of the records' canonical JSON, for the adapter card."""
    h = hashlib.sha256()
    if isinstance(path_or_records, str | Path):
        with open(path_or_records, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    else:
        recs = [asdict(r) if is_dataclass(r) and not isinstance(r, type) else r for r in path_or_records]
        h.update(json.dumps(recs, sort_keys=True, ensure_ascii=False, default=str).encode())
    return h.hexdigest()[:12]
