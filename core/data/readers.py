"""Reading tables: CSV/TSV/JSON/JSONL files, a Hub dataset or parsed records -> rows keyed by column name.

Every refusal says where and why (line, column, byte offset) and how to fix the file; nothing here knows about
schemas or tasks (see :mod:`core.data.schema`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import DataError
from core.specs import is_hub_id

MIB = 1024 * 1024
DEFAULT_MAX_BYTES = 50 * MIB
_FILE_EXTS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_UNSUPPORTED = {".xlsx": "Excel", ".xls": "Excel", ".parquet": "Parquet", ".arrow": "Arrow", ".zip": "zip"}
# Leading bytes of binary formats people upload by mistake (often renamed to .csv), most specific first.
_SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive", "Unzip it and upload the CSV or JSONL file inside."),
    (b"PK\x05\x06", "an empty ZIP archive", "Upload the CSV or JSONL file itself."),
    (b"\x1f\x8b", "a gzip-compressed file", "Decompress it (gunzip) and upload the CSV or JSONL file."),
    (b"%PDF", "a PDF document", "Export the table as CSV (UTF-8) or JSONL and upload that."),
    (b"\xd0\xcf\x11\xe0", "an old Excel (.xls) or Office file", "In Excel: Save As > 'CSV UTF-8', then upload."),
    (b"PAR1", "a Parquet file", "Convert it to CSV or JSONL (pandas: df.to_csv(...)) and upload that."),
    (b"\x89PNG", "a PNG image", "Upload a CSV, TSV, JSON or JSONL table."),
    (b"\xff\xd8\xff", "a JPEG image", "Upload a CSV, TSV, JSON or JSONL table."),
)


def format_size(n_bytes: float) -> str:
    """Bytes as the user reads them: binary units, said as such (``52.4 MiB``), never 'MB' for MiB."""
    return f"{n_bytes / MIB:.1f} MiB" if n_bytes >= 0.1 * MIB else f"{n_bytes / 1024:.1f} KiB"


def binary_kind(raw: bytes) -> tuple[str, str] | None:
    """``(what it is, how to fix)`` when ``raw`` starts like a binary file rather than a text table, else None.

    A ZIP whose first entries are an Office manifest and ``xl/`` is an Excel workbook; NUL bytes in the first
    8 KiB mean binary data (UTF-8 text never holds them; UTF-16 files do, and they need re-saving anyway).
    """
    for magic, what, fix in _SIGNATURES:
        if raw.startswith(magic):
            if magic == b"PK\x03\x04" and b"[Content_Types].xml" in raw[:4096] and b"xl/" in raw[:65536]:
                return "an Excel workbook (.xlsx)", "In Excel: Save As > 'CSV UTF-8', then upload the .csv."
            return what, fix
    head = raw[:8192]
    if b"\x00" in head:
        if head.startswith((b"\xff\xfe", b"\xfe\xff")) or head[1:2] == b"\x00" or head[:1] == b"\x00":
            return "UTF-16 text", "Re-save it as UTF-8 (Excel: Save As > 'CSV UTF-8'; editors: encoding UTF-8)."
        return "binary data (it holds NUL bytes)", "Upload a CSV, TSV, JSON or JSONL text file."
    return None


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
        # An absolute path is the server's business (an upload's temp folder); a relative one is what the user typed.
        shown = path.name if path.is_absolute() else str(source)
        raise DataError(f"File not found: {shown}. Upload a CSV, TSV, JSON or JSONL file.")
    if path.suffix.lower() in _UNSUPPORTED:
        raise DataError(
            f"{path.name} is a {_UNSUPPORTED[path.suffix.lower()]} file; export it as CSV (UTF-8) "
            "or JSONL and upload that instead."
        )
    size = path.stat().st_size  # before reading: a huge upload must not fill memory
    if size > max_bytes:
        raise DataError(
            f"{path.name} is {format_size(size)}, over the {format_size(max_bytes)} limit. "
            "Upload a smaller sample (a few thousand rows is plenty for a LoRA demo)."
        )
    raw = path.read_bytes()
    binary = binary_kind(raw)
    if binary is not None:  # before decoding: "not valid UTF-8" would send the user to fix the wrong thing
        what, fix = binary
        raise DataError(f"{path.name} is not a text table: it looks like {what}. {fix}")
    text = _decode(raw, path.name)
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
            f"Hub dataset {dataset_id!r} split {split!r} is {format_size(ds.data.nbytes)}, over the "
            f"{format_size(max_bytes)} limit. Load a slice instead, e.g. split '{split}[:5000]'."
        )
    rows = ds.to_list()
    return _table_from_records(rows, [f"row {i + 1}" for i in range(len(rows))], "hub", dataset_id)


def _looks_offline(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(w in text for w in ("connection", "offline", "resolve", "timed out", "network"))


def _show(delim: str) -> str:
    return {"\t": "\\t"}.get(delim, delim)
