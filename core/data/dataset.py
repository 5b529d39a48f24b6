"""Load a dataset: read, detect the schema, validate, (optionally) tokenise and report, in one call.

The steps live in their own modules: :mod:`~core.data.readers` (files -> rows), :mod:`~core.data.schema`
(header -> task and roles), :mod:`~core.data.examples` (rows -> examples, labels), :mod:`~core.data.report`
(what happened) and :mod:`~core.data.split`. Tokenisation and packing live in :mod:`core.data.tokenize`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data import tokenize as tok
from core.data.examples import Example, check_labels, label_ids, to_examples
from core.data.readers import DEFAULT_MAX_BYTES, read_table
from core.data.report import SAMPLE_ROWS, DataReport, label_warnings, percentiles, sample
from core.data.schema import Task, detect_schema
from core.data.split import data_fingerprint, split_train_eval
from core.errors import DataError

# Re-exported for ``from core.data import dataset as D`` callers (the training loop).
__all__ = ["DEFAULT_MAX_BYTES", "LoadedData", "load_data", "split_train_eval"]


@dataclass
class LoadedData:
    """Validated examples, their report and (when a tokenizer was given) their token ids, index-aligned."""

    examples: list[Example]
    report: DataReport
    label_names: list[str] | None = None
    tokenized: list[tok.TokenizedExample] | list[tok.EncodedText] | None = None


def load_data(
    source: str | Path | Sequence[Mapping[str, Any]],
    task: Task | None = None,
    *,
    mapping: Mapping[str, str] | None = None,
    tokenizer: Any = None,
    max_length: int | None = None,
    system_prompt: str | None = None,
    label_names: Sequence[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    fmt: str | None = None,
    hub_split: str = "train",
) -> LoadedData:
    """Read, map, validate and (optionally) tokenise a dataset; the report says what happened to every row.

    Args:
        source: a file path, a Hub dataset id (``owner/name``, needs the Hub), or already-parsed records.
        task: ``"sft"`` or ``"classification"``; ``None`` guesses from the columns.
        mapping: role -> column overrides, e.g. ``{"text": "utterance", "label": "intent"}``. Roles: messages,
            prompt, response, instruction, input, output, text, label, system.
        tokenizer: when given, rows are tokenised (SFT rows over ``max_length`` dropped, classification truncated).
        max_length: token limit per row; ``None`` means no limit.
        system_prompt: system message for chat rows that have none (a ``system`` column wins).
        label_names: fixes the label set and order (string labels must be in it; integer labels index it).
        max_bytes: files larger than this are refused before reading.
        fmt: ``csv``/``tsv``/``json``/``jsonl`` to skip detection.
        hub_split: split to load for a Hub id.

    Raises:
        DataError: unreadable file, missing columns, no usable rows, a single class, ...
    """
    table = read_table(source, max_bytes=max_bytes, fmt=fmt, hub_split=hub_split)
    task, schema, cols = detect_schema(table.columns, task, mapping)
    examples, drops = to_examples(table, schema, cols, system_prompt)
    report = DataReport(
        source=_name(source),
        task=task,
        format=table.format,
        schema=schema,
        columns=cols,
        all_columns=table.columns,
        rows_read=len(table.rows),
        rows_kept=0,
        max_length=max_length,
        fingerprint=data_fingerprint(source if _is_file(source) else table.rows),
    )
    names = None
    if task == "classification":
        examples, names = check_labels(examples, drops, label_names, report)
    tokenized = None
    if tokenizer is not None and examples:
        examples, tokenized = _tokenize(tokenizer, examples, task, names, max_length, drops, report)
    report.dropped = {r: len(w) for r, w in drops.items()}
    report.dropped_where = {r: w[:5] for r, w in drops.items()}
    report.rows_kept = len(examples)
    if not examples:
        reasons = ", ".join(
            f"{n} {r} (e.g. {', '.join(report.dropped_where[r][:3])})" for r, n in report.dropped.items()
        )
        raise DataError(
            f"No usable rows in {report.source}: all {report.rows_read} were dropped: {reasons}. "
            f"Fill in the {' and '.join(repr(c) for c in cols.values())} column(s) and try again."
        )
    if task == "classification":
        label_warnings(report)
    if report.rows_dropped > 0.1 * report.rows_read:
        report.warnings.append(f"{report.rows_dropped} of {report.rows_read} rows were dropped; see the reasons below.")
    if len(examples) < 20:
        report.warnings.append(f"Only {len(examples)} usable rows: expect the model to overfit; 100+ is better.")
    report.samples = [sample(e) for e in examples[:SAMPLE_ROWS]]
    return LoadedData(examples, report, names, tokenized)


def _tokenize(
    tokenizer: Any,
    examples: list[Example],
    task: Task,
    names: list[str] | None,
    max_length: int | None,
    drops: dict[str, list[str]],
    report: DataReport,
) -> tuple[list[Example], list]:
    if task == "classification":
        encoded, lengths = tok.encode_classification(
            tokenizer, [e.text or "" for e in examples], label_ids(examples, names or []), max_length
        )
        if max_length is not None:
            report.truncated = sum(n > max_length for n in lengths)
            report.too_long_policy = "truncated"  # one long review still has a label worth learning
        report.token_lengths = percentiles(lengths, max_length)
        return examples, encoded
    if any(e.messages for e in examples) and tok.ensure_chat_template(tokenizer):
        report.warnings.append("The tokenizer has no chat template; using ChatML (<|im_start|>role ... <|im_end|>).")
    tokenized = [
        tok.tokenize_chat(tokenizer, e.messages) if e.messages else tok.tokenize_text(tokenizer, e.text or "")
        for e in examples
    ]
    report.token_lengths = percentiles([len(t) for t in tokenized], max_length)
    if max_length is None:
        return examples, tokenized
    report.too_long_policy = "dropped"  # a cut-off reply would teach the model to stop mid-sentence
    keep = [i for i, t in enumerate(tokenized) if len(t) <= max_length]
    drops["too long"] = [
        f"{examples[i].where} ({len(tokenized[i])} tokens)"
        for i in range(len(examples))
        if len(tokenized[i]) > max_length
    ]
    if not drops["too long"]:
        del drops["too long"]
    return [examples[i] for i in keep], [tokenized[i] for i in keep]


def _is_file(source: Any) -> bool:
    return isinstance(source, str | Path) and Path(source).is_file()


def _name(source: Any) -> str:
    if _is_file(source):
        return Path(source).name
    return str(source) if isinstance(source, str) else "records"
