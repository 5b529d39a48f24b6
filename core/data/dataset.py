"""Datasets in, clear reports out: read CSV/TSV/JSON/JSONL (or a Hub dataset), detect the schema, validate, report.

Tokenisation and packing live in :mod:`core.tokenize`; :func:`load_data` calls it when a tokenizer is given so the
report can show token lengths and drop (SFT) or truncate (classification) rows over ``max_length``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from core.data import tokenize as tok
from core.errors import DataError
from core.specs import is_hub_id

Task = Literal["sft", "classification"]
Schema = Literal["messages", "prompt_response", "alpaca", "text", "classification"]
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
T = TypeVar("T")

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
_MISSING_STRINGS = frozenset({"nan", "NaN", "NAN", "None", "null", "NULL", "<NA>", "N/A", "#N/A"})
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}
_FILE_EXTS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_UNSUPPORTED = {".xlsx": "Excel", ".xls": "Excel", ".parquet": "Parquet", ".arrow": "Arrow", ".zip": "zip"}
_SFT_SCHEMAS: tuple[tuple[Schema, tuple[str, ...]], ...] = (
    ("messages", ("messages",)),
    ("alpaca", ("instruction", "output")),
    ("prompt_response", ("prompt", "response")),
)
_SFT_ROLES = {"messages", "instruction", "input", "output", "prompt", "response", "system"}
SAMPLE_ROWS = 3


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

    def to_markdown(self, max_labels: int = 20) -> str:
        """A short Markdown report: summary, token lengths, warnings, drops, labels, samples."""
        cols = ", ".join(f"{role} ← `{col}`" for role, col in self.columns.items())
        out = [
            f"### Data report: `{self.source}`",
            f"- **Task**: {self.task} (schema `{self.schema}`, format {self.format})",
            f"- **Columns**: {cols}",
            f"- **Rows**: {self.rows_read} read, **{self.rows_kept} kept**, {self.rows_dropped} dropped",
        ]
        if self.token_lengths:
            t = self.token_lengths
            limit = f"; max_length {self.max_length}: {t['over_max_length']} over" if self.max_length else ""
            out.append(f"- **Tokens per row**: p50 {t['p50']}, p90 {t['p90']}, p99 {t['p99']}, max {t['max']}{limit}")
        if self.max_length is not None and self.too_long_policy:
            done = f" ({self.truncated} rows)" if self.too_long_policy == "truncated" else ""
            out.append(f"- Rows over {self.max_length} tokens are **{self.too_long_policy}**{done}")
        out += [f"\n> ⚠️ {w}" for w in self.warnings]
        if self.dropped:
            out += ["", "| dropped because | rows | e.g. |", "|---|---:|---|"]
            out += [f"| {r} | {n} | {', '.join(self.dropped_where.get(r, []))} |" for r, n in self.dropped.items()]
        if self.label_counts:
            items = list(self.label_counts.items())
            out += ["", f"| label ({len(items)} classes) | rows |", "|---|---:|"]
            out += [f"| {_cell(k)} | {v} |" for k, v in items[:max_labels]]
            if len(items) > max_labels:
                out.append(f"| … {len(items) - max_labels} more (smallest: {_cell(items[-1][0])}) | {items[-1][1]} |")
        if self.samples:
            out += ["", "**Sample rows**", ""]
            out += [f"- `{_cell(json.dumps(s, ensure_ascii=False), 200)}`" for s in self.samples]
        return "\n".join(out)


@dataclass
class LoadedData:
    """Validated examples, their report and (when a tokenizer was given) their token ids, index-aligned."""

    examples: list[Example]
    report: DataReport
    label_names: list[str] | None = None
    tokenized: list[tok.TokenizedExample] | list[tok.EncodedText] | None = None


@dataclass
class RawTable:
    """Rows as read, before any schema is applied."""

    rows: list[dict[str, Any]]
    """One dict per row, keyed by the cleaned (stripped) column names; CSV cells are strings or None."""
    where: list[str]
    """Location of each row in the source (``line 5``, ``item 3``, ``row 7``)."""
    columns: list[str]
    format: str
    """``csv``, ``tsv``, ``json``, ``jsonl``, ``hub`` or ``records``."""


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
    examples, drops = _to_examples(table, schema, cols, system_prompt)
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
        examples, names = _check_labels(examples, drops, label_names, report)
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
        _label_warnings(report)
    if report.rows_dropped > 0.1 * report.rows_read:
        report.warnings.append(f"{report.rows_dropped} of {report.rows_read} rows were dropped; see the reasons below.")
    if len(examples) < 20:
        report.warnings.append(f"Only {len(examples)} usable rows: expect the model to overfit; 100+ is better.")
    report.samples = [_sample(e) for e in examples[:SAMPLE_ROWS]]
    return LoadedData(examples, report, names, tokenized)


# ---------------------------------------------------------------- reading


def read_table(
    source: str | Path | Sequence[Mapping[str, Any]],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    fmt: str | None = None,
    hub_split: str = "train",
) -> RawTable:
    """Read rows as dicts keyed by stripped column names; raises :class:`DataError` with a location on bad input."""
    if not isinstance(source, str | Path):
        rows = [dict(r) for r in source]
        return _table_from_records(rows, [f"item {i + 1}" for i in range(len(rows))], "records")
    path = Path(source)
    if not path.exists():
        if isinstance(source, str) and is_hub_id(source) and path.suffix.lower() not in _FILE_EXTS:
            return _read_hub(source, hub_split, max_bytes)
        raise DataError(f"File not found: {source}. Upload a CSV, TSV, JSON or JSONL file.")
    if path.suffix.lower() in _UNSUPPORTED:
        raise DataError(
            f"{path.name} is a {_UNSUPPORTED[path.suffix.lower()]} file; export it as CSV (UTF-8) "
            "or JSONL and upload that instead."
        )
    size = path.stat().st_size  # before reading: a huge upload must not fill memory
    if size > max_bytes:
        raise DataError(
            f"{path.name} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit. "
            "Upload a smaller sample (a few thousand rows is plenty for a LoRA demo)."
        )
    text = _decode(path.read_bytes(), path.name)
    if not text.strip():
        raise DataError(f"{path.name} is empty. Expected a header line and at least one data row.")
    fmt = fmt or _FILE_EXTS.get(path.suffix.lower()) or _sniff(text)
    if fmt in ("csv", "tsv"):
        return _read_delimited(text, fmt, path.name, max_bytes)
    if fmt == "json" and text.lstrip()[:1] == "{" and _is_jsonl(text):
        fmt = "jsonl"  # a .json file holding one object per line is common; read it as what it is
    if fmt == "jsonl":
        return _read_jsonl(text, path.name)
    if fmt == "json":
        return _read_json(text, path.name)
    raise DataError(f"Unknown format {fmt!r} for {path.name}; use csv, tsv, json or jsonl.")


def _decode(raw: bytes, name: str) -> str:
    bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = e.start + bom
        line = raw[:offset].count(b"\n") + 1
        raise DataError(
            f"{name} is not valid UTF-8: byte 0x{raw[offset]:02x} at byte offset {offset} (line {line}). "
            "Re-save the file as UTF-8 (Excel: Save As > 'CSV UTF-8'; editors: choose encoding UTF-8) and upload "
            "it again."
        ) from None
    return text


def _sniff(text: str) -> str:
    first = text.lstrip()[:1]
    if first == "[":
        return "json"
    if first == "{":
        return "jsonl" if _is_jsonl(text) else "json"
    header = text.lstrip().split("\n", 1)[0]
    return "tsv" if header.count("\t") > 0 and header.count("\t") >= header.count(",") else "csv"


def _is_jsonl(text: str) -> bool:
    try:
        json.loads(text)
        return False
    except json.JSONDecodeError:
        pass
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _read_delimited(text: str, fmt: str, name: str, max_bytes: int) -> RawTable:
    header_line = text.split("\n", 1)[0]
    # European Excel writes ';' and some tools write tabs into .csv: pick the delimiter the header uses
    delim = "\t" if fmt == "tsv" else max((",", ";", "\t"), key=lambda d: (header_line.count(d), d == ","))
    # A field can be as large as the file; the default 128 KiB limit rejects long documents. C long caps it.
    csv.field_size_limit(max(csv.field_size_limit(), min(max_bytes, 2**31 - 1)))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    try:
        header = next(reader)
        columns = _clean_header(header, name)
        rows, where, last = [], [], reader.line_num
        for rec in reader:
            start, last = last + 1, reader.line_num
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                continue  # blank line
            if len(rec) > len(columns):
                if any(v.strip() for v in rec[len(columns) :]):
                    raise DataError(
                        f"{name} line {start}: {len(rec)} fields but the header has {len(columns)} "
                        f"({', '.join(columns)}). Quote fields that contain '{_show(delim)}' (\"like{delim} this\") "
                        "or export as TSV/JSONL."
                    )
                rec = rec[: len(columns)]  # trailing empty cells from spreadsheets
            rows.append(dict(zip(columns, rec + [None] * (len(columns) - len(rec)), strict=True)))
            where.append(f"line {start}")
    except csv.Error as e:
        raise DataError(
            f"{name} line {reader.line_num}: cannot parse {fmt.upper()} ({e}). "
            "Check for an unclosed quote around there."
        ) from None
    if not rows:
        raise DataError(f"{name} has a header ({', '.join(columns)}) but no data rows. Add rows below the header.")
    return RawTable(rows, where, columns, fmt)


def _clean_header(header: list[str], name: str) -> list[str]:
    cols = [h.strip().lstrip("\ufeff").strip() or f"column_{i + 1}" for i, h in enumerate(header)]
    dup = [c for c, n in Counter(c.lower() for c in cols).items() if n > 1]
    if dup:
        raise DataError(
            f"{name}: column name(s) {', '.join(dup)} appear more than once in the header "
            f"({', '.join(cols)}). Rename them so each column is unique."
        )
    return cols


def _read_jsonl(text: str, name: str) -> RawTable:
    rows, where = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{name} line {n}, column {e.colno}: broken JSON ({e.msg}). Each line must be one "
                'complete JSON object, e.g. {"text": "...", "label": "..."}.'
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{name} line {n}: expected a JSON object ({{...}}), found a {type(obj).__name__}.")
        rows.append(obj)
        where.append(f"line {n}")
    return _table_from_records(rows, where, "jsonl", name)


def _read_json(text: str, name: str) -> RawTable:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{name}: broken JSON at line {e.lineno}, column {e.colno} ({e.msg}). Check for a missing "
            "comma, quote or bracket there; the file must be one array of objects [{...}, ...]."
        ) from None
    if not isinstance(data, list):
        raise DataError(f"{name}: expected a JSON array of objects [{{...}}, ...], found a {type(data).__name__}.")
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise DataError(f"{name} item {i + 1}: expected a JSON object {{...}}, found a {type(obj).__name__}.")
    return _table_from_records(data, [f"item {i + 1}" for i in range(len(data))], "json", name)


def _table_from_records(rows: list[dict], where: list[str], fmt: str, name: str = "data") -> RawTable:
    if not rows:
        raise DataError(f"{name} has no rows. Expected at least one record.")
    columns: dict[str, None] = {}  # ordered union: later rows may add keys
    clean_rows = []
    for row in rows:
        clean = {str(k).strip().lstrip("\ufeff"): v for k, v in row.items()}
        columns.update(dict.fromkeys(clean))
        clean_rows.append(clean)
    return RawTable(clean_rows, where, _clean_header(list(columns), name), fmt)


def _read_hub(dataset_id: str, split: str, max_bytes: int) -> RawTable:
    offline = any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    hint = "Upload a CSV, TSV, JSON or JSONL file instead."
    if offline:
        raise DataError(f"Cannot reach the Hugging Face Hub to load {dataset_id!r} (offline mode). {hint}")
    try:
        import datasets  # slow import; only Hub ids need it

        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as e:  # noqa: BLE001 - any failure here is reported to the user the same way
        reason = "cannot reach the Hugging Face Hub" if _looks_offline(e) else "could not load it"
        raise DataError(
            f"Hub dataset {dataset_id!r} (split {split!r}): {reason} ({type(e).__name__}: {e}). {hint}"
        ) from None
    if ds.data.nbytes > max_bytes:
        raise DataError(
            f"Hub dataset {dataset_id!r} split {split!r} is {ds.data.nbytes / 1e6:.0f} MB, over the "
            f"{max_bytes / 1e6:.0f} MB limit. Load a slice instead, e.g. split '{split}[:5000]'."
        )
    rows = ds.to_list()
    return _table_from_records(rows, [f"row {i + 1}" for i in range(len(rows))], "hub", dataset_id)


def _looks_offline(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(w in text for w in ("connection", "offline", "resolve", "timed out", "network"))


# ---------------------------------------------------------------- schema


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


# ---------------------------------------------------------------- rows -> examples


def _to_examples(
    table: RawTable, schema: Schema, cols: dict[str, str], system_prompt: str | None
) -> tuple[list[Example], dict[str, list[str]]]:
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


# ---------------------------------------------------------------- labels, tokens, warnings


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


def _check_labels(
    examples: list[Example], drops: dict[str, list[str]], given: Sequence[str] | None, report: DataReport
) -> tuple[list[Example], list[str]]:
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


def label_ids(examples: Sequence[Example], names: Sequence[str]) -> list[int]:
    """Label id per example: integer labels are their own id; strings index ``names``."""
    index = {n: i for i, n in enumerate(names)}
    return [e.label if isinstance(e.label, int) else index[str(e.label)] for e in examples]


def _label_warnings(report: DataReport) -> None:
    counts = report.label_counts or {}
    big, small = max(counts.values()), min(counts.values())
    if big > 5 * small:
        report.warnings.append(
            f"Imbalanced labels: the largest class has {big} rows, the smallest {small} "
            f"({big / small:.0f}x). Accuracy will flatter the model; watch per-class scores."
        )
    rare = [k for k, v in counts.items() if v < 5]
    if rare:
        report.warnings.append(
            f"Classes with fewer than 5 examples: {', '.join(rare[:10])}"
            + (" ..." if len(rare) > 10 else "")
            + ". Add examples or merge them."
        )


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
        report.token_lengths = _percentiles(lengths, max_length)
        return examples, encoded
    if any(e.messages for e in examples) and tok.ensure_chat_template(tokenizer):
        report.warnings.append("The tokenizer has no chat template; using ChatML (<|im_start|>role ... <|im_end|>).")
    tokenized = [
        tok.tokenize_chat(tokenizer, e.messages) if e.messages else tok.tokenize_text(tokenizer, e.text or "")
        for e in examples
    ]
    report.token_lengths = _percentiles([len(t) for t in tokenized], max_length)
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


def _percentiles(lengths: Sequence[int], max_length: int | None) -> dict[str, int]:
    s = sorted(lengths)

    def p(q: float) -> int:  # nearest-rank percentile
        return s[max(0, math.ceil(q / 100 * len(s)) - 1)]

    over = sum(n > max_length for n in s) if max_length else 0
    return {"p50": p(50), "p90": p(90), "p99": p(99), "max": s[-1], "over_max_length": over}


# ---------------------------------------------------------------- splits and fingerprints


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


# ---------------------------------------------------------------- small helpers


def _is_file(source: Any) -> bool:
    return isinstance(source, str | Path) and Path(source).is_file()


def _name(source: Any) -> str:
    if _is_file(source):
        return Path(source).name
    return str(source) if isinstance(source, str) else "records"


def _show(delim: str) -> str:
    return {"\t": "\\t"}.get(delim, delim)


def _cell(text: str, limit: int = 80) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _sample(e: Example) -> dict[str, Any]:
    if e.messages:
        return {"where": e.where, "messages": [{**m, "content": _cell(m["content"], 120)} for m in e.messages]}
    out: dict[str, Any] = {"where": e.where, "text": _cell(e.text or "", 160)}
    if e.label is not None:
        out["label"] = e.label
    return out
