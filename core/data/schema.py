"""Schema detection: which task, which schema and which column plays which role, from the header alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from core.errors import DataError

Task = Literal["sft", "classification"]
Schema = Literal["messages", "prompt_response", "alpaca", "text", "classification"]

# Column aliases, most specific first; matched on stripped, lower-cased headers.
ALIASES: dict[str, tuple[str, ...]] = {
    "messages": ("messages", "conversations", "conversation", "chat", "dialogue", "dialog"),
    "instruction": ("instruction",),
    "input": ("input", "context"),
    "output": ("output",),
    "prompt": ("prompt", "question", "query", "user", "input"),
    "response": ("response", "completion", "answer", "output", "assistant", "chosen"),
    "system": ("system", "system_prompt"),
    "text": ("text", "sentence", "content", "utterance", "review", "message", "document", "body", "query", "input"),
    "label": ("label", "labels", "category", "intent", "class", "target", "sentiment", "topic", "tag"),
}
# Spreadsheet and pandas spellings of a missing value; an empty cell is counted separately as "empty".
_SFT_SCHEMAS: tuple[tuple[Schema, tuple[str, ...]], ...] = (
    ("messages", ("messages",)),
    ("alpaca", ("instruction", "output")),
    ("prompt_response", ("prompt", "response")),
)
_SFT_ROLES = {"messages", "instruction", "input", "output", "prompt", "response", "system"}


def detect_schema(
    columns: Sequence[str], task: Task | None = None, mapping: Mapping[str, str] | None = None
) -> tuple[Task, Schema, dict[str, str]]:
    """Pick the task, the schema and the role -> column mapping from the header.

    Explicit ``mapping`` entries win; the rest are found by the aliases in :data:`ALIASES`, case-insensitively.

    Raises:
        DataError: a mapped column does not exist, or the columns fit no schema (message lists expected vs found).
    """
    by_lower = {c.lower(): c for c in columns}
    fixed: dict[str, str] = {}
    for role, col in (mapping or {}).items():
        if role not in ALIASES:
            raise DataError(f"Unknown mapping role {role!r}; use one of: {', '.join(ALIASES)}.")
        if col.strip().lower() not in by_lower:
            raise DataError(
                f"The mapping names column {col!r} for {role!r}, but the columns are: {', '.join(columns)}."
            )
        fixed[role] = by_lower[col.strip().lower()]

    def find(role: str, exclude: Sequence[str] = ()) -> str | None:
        if role in fixed:
            return fixed[role]
        return next((by_lower[a] for a in ALIASES[role] if a in by_lower and by_lower[a] not in exclude), None)

    def pick(*roles: str) -> dict[str, str] | None:
        found: dict[str, str] = {}
        for r in roles:
            col = find(r, exclude=list(found.values()))
            if col is None:
                return None
            found[r] = col
        return found

    if task is None and "label" in fixed:
        task = "classification"
    elif task is None and fixed.keys() & _SFT_ROLES:
        task = "sft"
    if task != "classification":
        for schema, roles in _SFT_SCHEMAS:
            found = pick(*roles)
            if found:
                for optional in ("input", "system") if schema == "alpaca" else ("system",):
                    col = find(optional, exclude=list(found.values()))
                    if col:
                        found[optional] = col
                return "sft", schema, found
    if task != "sft":
        found = pick("label", "text")
        if found:
            return "classification", "classification", {"text": found["text"], "label": found["label"]}
    text = find("text") if task != "classification" else None
    if text:
        return "sft", "text", {"text": text}
    expected = (
        "text (or sentence, content, ...) and label (or category, intent, ...)"
        if task == "classification"
        else "messages; or prompt + response; or instruction + input + output; or text"
    )
    raise DataError(
        f"Missing columns: expected {expected}; found {', '.join(columns) or 'none'}. Rename the "
        "columns or set the column mapping (e.g. text='your_column')."
    )
