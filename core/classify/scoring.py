"""Batch scoring of a table with a classifier: one output row per input row, metrics when gold labels exist, and a
CSV writer that is safe to open in a spreadsheet."""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import data as data_io
from core import store
from core.classify.classifiers import BaseClassifier, ClassifyError, is_blank

PREDICTED_COLUMN = "predicted_label"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CHUNK_ROWS = 512
"""Rows per predict call: progress is reported per chunk, and memory stays bounded for big uploads."""


@dataclass
class Metrics:
    """Agreement between the gold label column and the predictions."""

    accuracy: float
    macro_f1: float
    """Unweighted mean F1 over the labels present in the gold labels or the predictions (sklearn's default)."""
    confusion: list[list[int]]
    """``confusion[i][j]`` = rows with gold ``labels[i]`` predicted as ``labels[j]``."""
    labels: list[str]
    """Row/column order of ``confusion``: the classifier's labels, then other gold (then predicted) labels, sorted."""
    per_label_f1: dict[str, float]
    n: int
    """Rows counted (rows with a gold label)."""
    n_without_gold: int = 0
    """Rows skipped because their gold label cell was empty."""


@dataclass
class BatchResult:
    """The scored table."""

    rows: list[dict[str, Any]]
    """Input columns + ``predicted_label`` + ``p_<label>`` per class, one per input row, in input order."""
    columns: list[str]
    labels: list[str]
    metrics: Metrics | None = None
    blank_rows: list[int] = field(default_factory=list)
    """0-based indices of rows whose text was empty (they got uniform probabilities)."""
    warnings: list[str] = field(default_factory=list)


def prob_column(label: str) -> str:
    return f"p_{label}"


def compute_metrics(gold: Sequence[str | None], predicted: Sequence[str], labels: Sequence[str] = ()) -> Metrics:
    """Accuracy, macro-F1 and a confusion matrix; rows whose gold is empty/None are skipped and counted.

    Args:
        gold: true labels (compared as stripped strings).
        predicted: predicted labels, same length.
        labels: preferred label order (the classifier's); unknown gold labels are appended sorted.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions.")
    pairs = [(str(g).strip(), str(p)) for g, p in zip(gold, predicted) if not is_blank(g)]
    order = list(dict.fromkeys(str(x) for x in labels))
    gold_set = {g for g, _ in pairs}
    order += sorted(gold_set - set(order))
    order += sorted({p for _, p in pairs} - set(order))
    index = {name: i for i, name in enumerate(order)}
    confusion = [[0] * len(order) for _ in order]
    for g, p in pairs:
        confusion[index[g]][index[p]] += 1
    n = len(pairs)
    correct = sum(confusion[i][i] for i in range(len(order)))
    present = {g for g, _ in pairs} | {p for _, p in pairs}
    f1s: dict[str, float] = {}
    for i, name in enumerate(order):
        tp = confusion[i][i]
        fp = sum(confusion[r][i] for r in range(len(order))) - tp
        fn = sum(confusion[i]) - tp
        f1s[name] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    counted = [f1s[name] for name in order if name in present]
    return Metrics(
        accuracy=correct / n if n else 0.0,
        macro_f1=sum(counted) / len(counted) if counted else 0.0,
        confusion=confusion,
        labels=order,
        per_label_f1=f1s,
        n=n,
        n_without_gold=len(gold) - n,
    )


def score_table(
    classifier: BaseClassifier,
    rows: Sequence[Mapping[str, Any]],
    text_column: str,
    label_column: str | None = None,
    progress: Callable[[float], None] | None = None,
) -> BatchResult:
    """Classify every row's ``text_column``; exactly one output row per input row, in order.

    Empty, missing and very long texts are scored too (uniform probabilities / truncated to the model's limit).
    When ``label_column`` is given, :attr:`BatchResult.metrics` compares it with the predictions.

    Raises:
        ClassifyError: a named column is absent from every row.
    """
    rows = [dict(r) for r in rows]
    for col in (text_column, label_column):
        if col is not None and rows and not any(col in r for r in rows):
            raise ClassifyError(f"Column {col!r} not found; the columns are: {', '.join(_columns(rows))}.")
    texts = ["" if is_blank(r.get(text_column)) else str(r.get(text_column)) for r in rows]
    labels = classifier.labels
    added = [PREDICTED_COLUMN] + [prob_column(x) for x in labels]
    columns = _columns(rows)
    warnings = [f"Input column {c!r} is replaced by the prediction output." for c in added if c in columns]
    columns = [c for c in columns if c not in added] + added
    predicted: list[str] = []
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = texts[start : start + CHUNK_ROWS]

        def chunk_progress(f: float, start: int = start, size: int = len(chunk)) -> None:
            if progress:
                progress(min(1.0, (start + f * size) / len(rows)))

        for row, pred in zip(rows[start : start + CHUNK_ROWS], classifier.predict(chunk, chunk_progress)):
            row[PREDICTED_COLUMN] = pred.label
            row.update({prob_column(k): round(v, 6) for k, v in pred.probs.items()})
            predicted.append(pred.label)
    if progress:
        progress(1.0)
    metrics = None
    if label_column is not None:
        metrics = compute_metrics([r.get(label_column) for r in rows], predicted, labels)
    blank = [i for i, t in enumerate(texts) if not t.strip()]
    if blank:
        warnings.append(
            f"{len(blank)} row(s) have an empty text and got uniform probabilities (first: row {blank[0] + 1})."
        )
    return BatchResult(rows, columns, list(labels), metrics, blank, warnings)


def score_file(
    classifier: BaseClassifier,
    path: str | Path,
    text_column: str | None = None,
    label_column: str | None = None,
    progress: Callable[[float], None] | None = None,
    max_bytes: int = data_io.DEFAULT_MAX_BYTES,
) -> BatchResult:
    """Read a CSV/TSV/JSON/JSONL file with :func:`core.data.read_table` and :func:`score_table` it.

    ``text_column`` defaults to the first column whose name is a known text alias (text, sentence, ...), and
    ``label_column`` to a known label alias (label, intent, ...) when one exists.

    Raises:
        core.data.DataError: unreadable file; ClassifyError: no text column.
    """
    table = data_io.read_table(path, max_bytes=max_bytes)
    by_lower = {c.lower(): c for c in table.columns}
    if text_column is None:
        text_column = next((by_lower[a] for a in data_io.ALIASES["text"] if a in by_lower), None)
        if text_column is None:
            raise ClassifyError(f"No text column found (columns: {', '.join(table.columns)}); pick one.")
    if label_column is None:
        label_column = next((by_lower[a] for a in data_io.ALIASES["label"] if a in by_lower), None)
    return score_table(classifier, table.rows, text_column, label_column, progress)


def escape_cell(value: Any) -> Any:
    """Neutralise spreadsheet formulas: a text cell starting with = + - @ tab or CR gets a leading ``'``.

    Numbers are left alone (a negative probability cannot occur, and -1 typed as a number is not a formula).
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_csv(result: BatchResult, path: str | Path) -> Path:
    """Write the scored rows as UTF-8 CSV (atomically), with every text cell passed through :func:`escape_cell`."""
    import io

    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow([escape_cell(c) for c in result.columns])
    for row in result.rows:
        writer.writerow([escape_cell("" if row.get(c) is None else row.get(c)) for c in result.columns])
    out = Path(path)
    store.atomic_write_text(out, buf.getvalue())
    return out


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: dict[str, None] = {}
    for r in rows:
        cols.update(dict.fromkeys(r))
    return list(cols)
