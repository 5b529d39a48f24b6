"""Rows -> examples: one :class:`Example` per usable row, a reason for every dropped one, and label handling."""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.data.readers import RawTable
from core.data.schema import Schema
from core.errors import DataError

if TYPE_CHECKING:
    from core.data.report import DataReport

# Spreadsheet and pandas spellings of a missing value; an empty cell is counted separately as "empty".
_MISSING_STRINGS = frozenset({"nan", "NaN", "NAN", "None", "null", "NULL", "<NA>", "N/A", "#N/A"})
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}


@dataclass
class Example:
    """One usable row after validation (exactly one of ``messages`` / ``text`` is the training input)."""

    messages: list[dict[str, str]] | None = None
    """Chat turns as ``{"role", "content"}`` dicts (SFT chat schemas)."""
    text: str | None = None
    """Plain text (SFT ``text`` schema, or the input of a classification row)."""
    label: str | int | None = None
    """Classification label as read (string name or integer id)."""
    where: str = ""
    """Location in the source, e.g. ``line 12`` or ``item 3``, for messages and samples."""


def to_examples(
    table: RawTable, schema: Schema, cols: dict[str, str], system_prompt: str | None
) -> tuple[list[Example], dict[str, list[str]]]:
    """One :class:`Example` per usable row, and reason -> locations of the rows dropped (empty, NaN, wrong type)."""
    examples: list[Example] = []
    drops: dict[str, list[str]] = defaultdict(list)
    for row, where in zip(table.rows, table.where, strict=True):
        try:
            examples.append(_row_to_example(row, where, schema, cols, system_prompt))
        except _Drop as d:
            drops[d.reason].append(f"{where} ({d.column})" if d.column else where)
    return examples, drops


class _Drop(Exception):
    def __init__(self, reason: str, column: str = "") -> None:
        super().__init__(reason)
        self.reason, self.column = reason, column


def _field(row: Mapping[str, Any], col: str, *, optional: bool = False, allow_int: bool = False) -> Any:
    v = row.get(col)
    if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v.strip() in _MISSING_STRINGS):
        if optional:
            return ""
        raise _Drop("NaN/None", col)
    if allow_int and isinstance(v, int | float) and not isinstance(v, bool):
        if isinstance(v, float) and not v.is_integer():
            raise _Drop("wrong type", col)
        return int(v)
    if not isinstance(v, str):
        raise _Drop("wrong type", col)
    if not v.strip() and not optional:
        raise _Drop("empty", col)
    return v


def _row_to_example(
    row: Mapping[str, Any], where: str, schema: Schema, cols: dict[str, str], system_prompt: str | None
) -> Example:
    if schema == "classification":
        label = _field(row, cols["label"], allow_int=True)
        return Example(
            text=_field(row, cols["text"]), label=label.strip() if isinstance(label, str) else label, where=where
        )
    if schema == "text":
        return Example(text=_field(row, cols["text"]), where=where)
    system = _field(row, cols["system"], optional=True) if "system" in cols else ""
    if schema == "messages":
        messages = _parse_messages(row.get(cols["messages"]), cols["messages"])
    elif schema == "alpaca":
        user = _field(row, cols["instruction"])
        extra = _field(row, cols["input"], optional=True) if "input" in cols else ""
        user = f"{user}\n\n{extra}" if extra.strip() else user
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": _field(row, cols["output"])}]
    else:
        messages = [
            {"role": "user", "content": _field(row, cols["prompt"])},
            {"role": "assistant", "content": _field(row, cols["response"])},
        ]
    system = system.strip() or system_prompt
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return Example(messages=messages, where=where)


def _parse_messages(value: Any, col: str) -> list[dict[str, str]]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise _Drop("NaN/None", col)
    if isinstance(value, str):  # CSV cells hold the list as a JSON string
        if not value.strip():
            raise _Drop("empty", col)
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _Drop("wrong type", col) from None
    if not isinstance(value, list) or not value:
        raise _Drop("empty" if value == [] else "wrong type", col)
    messages = []
    for m in value:
        if not isinstance(m, dict):
            raise _Drop("wrong type", col)
        role = m.get("role", m.get("from"))  # OpenAI {role, content} or ShareGPT {from, value}
        content = m.get("content", m.get("value"))
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(role, str) or not isinstance(content, str):
            raise _Drop("wrong type", col)
        role = _ROLE_ALIASES.get(role.strip().lower(), role.strip().lower())
        if role not in ("system", "user", "assistant", "tool"):
            raise _Drop("wrong type", col)
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise _Drop("no assistant reply", col)
    return messages


def label_vocabulary(labels: Sequence[str | int], given: Sequence[str] | None = None) -> list[str]:
    """Label names, index = label id: ``given`` as is; else sorted strings; else ``"0".."max"`` for integer ids.

    Raises:
        DataError: a string label is not in ``given``, or an integer id has no name in ``given``.
    """
    ints = [v for v in labels if isinstance(v, int)]
    if given is not None:
        names = [str(g) for g in given]
        unknown = sorted({str(v) for v in labels if isinstance(v, str) and v not in names})
        if unknown or (ints and max(ints) >= len(names)):
            bad = ", ".join(unknown[:10]) if unknown else f"id {max(ints)}"
            raise DataError(
                f"Labels not in the given label list ({', '.join(names)}): {bad}. Add them to the list or fix the rows."
            )
        return names
    if ints:
        return [str(i) for i in range(max(ints) + 1)]
    return sorted({str(v) for v in labels})


def check_labels(
    examples: list[Example], drops: dict[str, list[str]], given: Sequence[str] | None, report: DataReport
) -> tuple[list[Example], list[str]]:
    """Normalise labels (integer ids or names), drop unlabelled rows, count classes and fill the report.

    Raises:
        DataError: a single class, or labels outside ``given``.
    """
    # CSV cells are strings: a column of "0"/"1" holds integer ids, like JSON numbers do
    if all(isinstance(e.label, int) or re.fullmatch(r"-?\d+", str(e.label)) for e in examples):
        for e in examples:
            e.label = int(e.label)  # type: ignore[arg-type]
        for e in examples:
            if e.label < 0:  # type: ignore[operator]  # e.g. GLUE test sets mark unlabelled rows with -1
                drops["negative label (unlabelled?)"].append(e.where)
        examples = [e for e in examples if e.label >= 0]  # type: ignore[operator]
    else:
        for e in examples:
            e.label = str(e.label)
        mixed = _mixed_labels({str(e.label) for e in examples})
        if mixed:
            report.warnings.append(mixed)
    if not examples:
        return examples, list(given or [])
    counts = Counter(e.label for e in examples)
    if len(counts) < 2:
        only = next(iter(counts))
        raise DataError(
            f"Column {report.columns['label']!r} has a single class ({only!r}, {counts[only]} rows); "
            "classification needs at least 2 classes. Add rows of another class."
        )
    names = label_vocabulary([e.label for e in examples], given)  # type: ignore[misc]
    report.label_names = names
    report.label_counts = {str(k): v for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))}
    return examples, names


def _mixed_labels(labels: set[str]) -> str | None:
    """A warning when integer ids and words are mixed (``0``, ``1``, ``one``, ``zero``): each spelling becomes its
    own class, which is rarely what the file meant."""
    ints = sorted((v for v in labels if re.fullmatch(r"-?\d+", v)), key=int)
    words = sorted(v for v in labels if v not in ints)
    if not ints or not words:
        return None
    return (
        f"Labels mix integer ids ({', '.join(ints[:5])}) and words ({', '.join(words[:5])}): they are read as "
        f"{len(labels)} separate classes. If an id and a word name the same class (e.g. 1 and 'one'), write "
        "them the same way in the file."
    )


def label_ids(examples: Sequence[Example], names: Sequence[str]) -> list[int]:
    """Label id per example: integer labels are their own id; strings index ``names``."""
    index = {n: i for i, n in enumerate(names)}
    return [e.label if isinstance(e.label, int) else index[str(e.label)] for e in examples]
