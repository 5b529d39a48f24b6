"""Core values rendered for the browser: the data report, a data preview, a run's status, the loss curve.

Core returns plain values; this module turns them into Markdown, HTML or a typed data frame. Every piece of user
text (file names, column names, labels, cells, chat turns, error messages) is escaped here, because Gradio's
Markdown lets inline HTML through (a CSV cell holding ``<svg onload=…>`` would otherwise become live markup).
Status is shown with words and CSS, not emoji: Chromium on a bare Linux has no emoji font and draws boxes.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from core.data import DataReport
    from core.train.progress import RunProgress

SERIES = ("train loss", "eval loss")
"""The loss plot's two lines; both are always in the frame so the legend (fixed when the chart is first drawn)
names both from the first point on."""
SERIES_COLORS = {"train loss": "#2563eb", "eval loss": "#ea580c"}
LOSS_DIGITS = 3
"""Significant digits of the plotted losses (the axis ticks use the same)."""
LOSS_AXIS_FORMAT = f".{LOSS_DIGITS}~g"
"""d3-format for the loss axis: 3 significant digits, trailing zeros dropped (2.35, 0.0812)."""
MAX_CELL = 160
"""Characters of a preview cell or chat turn shown before it is cut with an ellipsis."""

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>:@$=])")
_ABS_PATH = re.compile(r"(?<![\w.~-])/(?:[^\s'\"`:;,()<>\[\]{}|]+/)*[^\s'\"`:;,()<>\[\]{}|]*")
_HOME_PARTS = ("runs", "adapters", "uploads", "tmp", "models")
_REPO = Path(__file__).resolve().parent.parent

# --- escaping ---------------------------------------------------------------------------------------------------


def esc(value: object) -> str:
    """``value`` as HTML text (for gr.HTML): ``<``, ``>``, ``&`` and quotes become entities."""
    return html.escape("" if value is None else str(value), quote=True)


def md(value: object, limit: int | None = None) -> str:
    """``value`` as literal Markdown text on one line: HTML is escaped, Markdown punctuation backslash-escaped (no
    emphasis, links, autolinks, headings or table breaks can come from user text), newlines become spaces."""
    text = " ".join(("" if value is None else str(value)).split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def _cut(text: str, limit: int = MAX_CELL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def relative_paths(text: str | None, home: Path | None = None) -> str:
    """``text`` with absolute server paths made relative: to the DemoForge home (``runs/<id>/stderr.log``), to the
    app's folder (``core/train/loop.py``), else cut to the file name. Visitors never see where the server keeps
    things; a builder still finds the file under the home."""
    if not text:
        return ""
    roots = [r for r in (home, _REPO) if r is not None]

    def shorten(match: re.Match[str]) -> str:
        found = match.group(0)
        path = Path(found)
        for root in roots:
            try:
                return str(path.relative_to(root))
            except ValueError:
                continue
        parts = path.parts
        for i, part in enumerate(parts):  # another home (a test's, a restarted server's): keep from its subfolder
            if part in _HOME_PARTS and i + 1 < len(parts):
                return str(Path(*parts[i:]))
        if "site-packages" in parts:
            return str(Path(*parts[parts.index("site-packages") + 1 :]))
        return path.name or found

    return _ABS_PATH.sub(shorten, text)


# --- data -------------------------------------------------------------------------------------------------------


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, Mapping) and "role" in m for m in value)


def conversation_html(messages: Sequence[Mapping[str, Any]], limit: int = MAX_CELL) -> str:
    """Chat turns as labelled bubbles (role, then the text), escaped."""
    turns = []
    for m in messages:
        role = str(m.get("role", "")).strip().lower() or "turn"
        kind = role if role in ("user", "assistant", "system") else "other"
        content = _cut(" ".join(str(m.get("content", "")).split()), limit)
        turns.append(
            f'<div class="df-turn df-turn-{kind}"><span class="df-role">{esc(role)}</span> {esc(content)}</div>'
        )
    return f'<div class="df-conv">{"".join(turns)}</div>'


def _cell_html(value: Any) -> str:
    if _is_conversation(value):
        return conversation_html(value)
    if value is None:
        return ""
    if isinstance(value, dict | list):
        import json

        value = json.dumps(value, ensure_ascii=False)
    return esc(_cut(" ".join(str(value).split())))


PREVIEW_CSS = """
table { border-collapse: collapse; width: 100%; font-size: 0.85rem; }
th, td { border-bottom: 1px solid var(--border-color-primary); padding: 4px 6px; text-align: left;
         vertical-align: top; }
th { font-weight: 600; position: sticky; top: 0; background: var(--block-background-fill); }
.df-preview-scroll { max-height: 260px; overflow: auto; }
.df-conv { display: flex; flex-direction: column; gap: 3px; }
.df-turn { border-radius: 6px; padding: 2px 6px; }
.df-turn-user { background: var(--color-accent-soft); }
.df-turn-assistant { background: var(--background-fill-secondary); }
.df-turn-system, .df-turn-other { font-style: italic; }
.df-role { font-weight: 600; font-size: 0.75rem; text-transform: uppercase; opacity: 0.7; margin-right: 4px; }
.df-preview-note { font-size: 0.8rem; opacity: 0.75; margin: 2px 0; }
"""
"""Scoped CSS for the data preview (gr.HTML css_template): conversations as bubbles."""


def preview_html(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], shown: int = 20) -> str:
    """The first ``shown`` rows as an HTML table; a column of chat turns is drawn as a conversation."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell_html(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows[:shown]
    )
    note = f'<p class="df-preview-note">First {min(shown, len(rows))} of {len(rows)} rows as read.</p>'
    return f'{note}<div class="df-preview-scroll"><table><tr>{head}</tr>{body}</table></div>'


def _sample_markdown(sample: Mapping[str, Any]) -> str:
    where = md(sample.get("where", ""))
    messages = sample.get("messages")
    if _is_conversation(messages):
        # core's report cut the turns for its own Markdown table (escaping '|'); undo that escape before ours
        turns = [
            f"**{md(m.get('role', ''))}:** {md(str(m.get('content', '')).replace(chr(92) + '|', '|'))}"
            for m in messages
        ]
        return f"- {where}  \n  " + "  \n  ".join(turns)
    text = md(str(sample.get("text", "")).replace("\\|", "|"))
    label = f" → **{md(sample['label'])}**" if sample.get("label") is not None else ""
    return f"- {where}: {text}{label}"


def data_report_markdown(report: DataReport, max_labels: int = 20) -> str:
    """What validation found, as Markdown: summary, token lengths, warnings, drops, labels, sample rows."""
    cols = ", ".join(f"{md(role)} ← {md(col)}" for role, col in report.columns.items())
    out = [
        f"### Data report: {md(Path(report.source).name or report.source)}",
        f"- **Task**: {md(report.task)} (schema {md(report.schema)}, format {md(report.format)})",
        f"- **Columns**: {cols}",
        f"- **Rows**: {report.rows_read} read, **{report.rows_kept} kept**, {report.rows_dropped} dropped",
    ]
    if report.token_lengths:
        t = report.token_lengths
        limit = f"; max_length {report.max_length}: {t['over_max_length']} over" if report.max_length else ""
        out.append(f"- **Tokens per row**: p50 {t['p50']}, p90 {t['p90']}, p99 {t['p99']}, max {t['max']}{limit}")
    if report.max_length is not None and report.too_long_policy:
        done = f" ({report.truncated} rows)" if report.too_long_policy == "truncated" else ""
        out.append(f"- Rows over {report.max_length} tokens are **{report.too_long_policy}**{done}")
    out += [f"\n> **Warning:** {md(w)}" for w in report.warnings]
    if report.dropped:
        out += ["", "| dropped because | rows | e.g. |", "|---|---:|---|"]
        out += [
            f"| {md(r)} | {n} | {md(', '.join(report.dropped_where.get(r, [])))} |" for r, n in report.dropped.items()
        ]
    if report.label_counts:
        items = list(report.label_counts.items())
        out += ["", f"| label ({len(items)} classes) | rows |", "|---|---:|"]
        out += [f"| {md(k, 80)} | {v} |" for k, v in items[:max_labels]]
        if len(items) > max_labels:
            smallest = md(items[-1][0], 80)
            out.append(f"| … {len(items) - max_labels} more (smallest: {smallest}) | {items[-1][1]} |")
    if report.samples:
        out += ["", "**Sample rows**", ""]
        out += [_sample_markdown(s) for s in report.samples]
    return "\n".join(out)


def refused_markdown(reason: str, home: Path | None = None) -> str:
    """The report shown instead when a file cannot be used: the reason, escaped, paths made relative."""
    return f"### This file cannot be used\n\n{md(relative_paths(reason, home))}"


# --- training runs ----------------------------------------------------------------------------------------------

STATUS_WORDS = {
    "starting": ("run", "starting"),
    "running": ("run", "running"),
    "finished": ("ok", "finished"),
    "time_budget": ("ok", "finished at the time budget"),
    "stopped": ("warn", "stopped"),
    "failed": ("err", "failed"),
}
"""status -> (CSS kind, words shown)."""
PHASE_WORDS = {"final_eval": "final evaluation…", "saving": "saving the adapter…"}

RUN_CSS = """
.df-run-line { display: flex; flex-wrap: wrap; gap: 4px 10px; align-items: center; font-size: 0.95rem; }
.df-badge { border-radius: 999px; padding: 1px 10px; font-weight: 600; font-size: 0.85rem; color: #fff; }
.df-badge-run { background: #2563eb; }
.df-badge-ok { background: #15803d; }
.df-badge-warn { background: #b45309; }
.df-badge-err { background: #b91c1c; }
.df-phase { font-style: italic; }
.df-bar { position: relative; height: 14px; border-radius: 7px; margin: 6px 0 2px;
          background: var(--background-fill-secondary); border: 1px solid var(--border-color-primary);
          overflow: hidden; }
.df-bar-fill { height: 100%; background: var(--color-accent); }
.df-bar-label { font-size: 0.8rem; opacity: 0.8; }
.df-run-msg { margin-top: 4px; }
.df-run-err { margin-top: 4px; white-space: pre-wrap; font-family: var(--font-mono); font-size: 0.8rem;
              color: #b91c1c; max-height: 10rem; overflow: auto; }
"""
"""Scoped CSS for a run's status (gr.HTML css_template)."""


def duration(seconds: float) -> str:
    """``75`` -> ``1m 15s``; ``9`` -> ``9s``."""
    s = max(0, int(seconds))
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def run_fraction(p: RunProgress) -> float:
    """0..1 of the planned steps done. A finished run is 1; a run cut by the time budget shows how far it got."""
    if p.status == "finished":
        return 1.0
    if not p.total_steps:
        return 0.0
    return max(0.0, min(1.0, p.step / p.total_steps))


def run_phase(p: RunProgress) -> str | None:
    """``final_eval`` / ``saving`` while a run finishes (None otherwise, and before core reports phases)."""
    phase = getattr(p, "phase", None)
    return phase if p.alive and phase in PHASE_WORDS else None


def _headline_parts(p: RunProgress) -> list[tuple[str, str]]:
    """(text, CSS class) pieces of a run's line after its status: run, step/total, ETA or phase, speed, elapsed."""
    parts = [(f"run {p.run_id}", "")]
    if p.total_steps:
        parts.append((f"step {p.step}/{p.total_steps}", ""))
    phase = run_phase(p)
    if phase:
        parts.append((PHASE_WORDS[phase], "df-phase"))  # instead of an ETA frozen during the final eval and save
    elif p.alive and p.eta_s is not None:
        parts.append((f"ETA {duration(p.eta_s)}", ""))
    if p.tokens_per_s:
        parts.append((f"{p.tokens_per_s:,.0f} tokens/s", ""))
    if p.elapsed_s is not None:
        parts.append((f"elapsed {duration(p.elapsed_s)}", ""))
    return parts


def run_headline(p: RunProgress) -> str:
    """One plain line: status, run, step/total, ETA or the finishing phase, speed, elapsed."""
    status = STATUS_WORDS.get(p.status, ("run", p.status))[1]
    return " · ".join([status, *(text for text, _ in _headline_parts(p))])


def _final_metrics(metrics: Mapping[str, Any]) -> str:
    shown = []
    for key, name in (("eval_loss", "eval loss"), ("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        value = metrics.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            shown.append(f"{name} {value:.3g}")
    return ", ".join(shown)


def run_status_html(p: RunProgress | None, home: Path | None = None, ready_hint: str = "") -> str:
    """A run as HTML: a status badge and line, a bar with the real fraction, then what to do next or why it
    failed (paths relative to the home)."""
    if p is None:
        return ""
    kind, words = STATUS_WORDS.get(p.status, ("run", p.status))
    line = " · ".join(
        f'<span class="{cls}">{esc(text)}</span>' if cls else esc(text) for text, cls in _headline_parts(p)
    )
    phase = run_phase(p)
    pct = round(100 * run_fraction(p))
    steps = f" · {p.step}/{p.total_steps} steps" if p.total_steps else ""
    out = [
        f'<div class="df-run" data-status="{esc(p.status)}" data-step="{p.step}" data-total="{p.total_steps or 0}"'
        f' data-fraction="{run_fraction(p):.4f}" data-phase="{esc(phase or "")}">',
        f'<div class="df-run-line"><span class="df-badge df-badge-{kind}">{esc(words)}</span> {line}</div>',
        f'<div class="df-bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="{pct}">'
        f'<div class="df-bar-fill" style="width:{pct}%"></div></div>',
        f'<div class="df-bar-label">{pct}%{steps}</div>',
    ]
    if p.status in ("finished", "time_budget") and p.adapter_name:
        name = Path(p.adapter_dir).name if p.adapter_dir else p.adapter_name
        metrics = _final_metrics(p.metrics)
        out.append(
            f'<div class="df-run-msg">Adapter <b>{esc(name)}</b> is ready'
            + (f" ({esc(metrics)})" if metrics else "")
            + f": {esc(ready_hint or 'pick it in the Chat or Classify tab.')}</div>"
        )
    elif p.status == "stopped":
        out.append('<div class="df-run-msg">Stopped with a checkpoint: resume it below, or start a new run.</div>')
    if p.error:
        out.append(f'<div class="df-run-err">{esc(relative_paths(p.error, home))}</div>')
    out.append("</div>")
    return "".join(out)


def _significant(value: float, digits: int = LOSS_DIGITS) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def loss_frame(points: Iterable[Mapping[str, Any]]) -> pd.DataFrame | None:
    """Loss points as a typed frame for gr.LinePlot: ``step`` int, ``loss`` float (3 significant digits),
    ``series`` text.

    The types matter: the chart's spec (axis types, colour domain) is fixed when it is first drawn, and an
    untyped (object) column makes Gradio call the losses categories. Each series without a point yet gets one
    empty (NaN) row, so both lines are in the legend from the start; a line mark skips the empty value. None (an
    empty plot) before the first point.
    """
    rows = [
        (int(p["step"]), _significant(float(p["value"])), str(p["series"]))
        for p in points
        if p.get("value") is not None and math.isfinite(float(p["value"]))
    ]
    if not rows:
        return None
    first = min(r[0] for r in rows)
    present = {r[2] for r in rows}
    rows += [(first, math.nan, s) for s in SERIES if s not in present]
    return pd.DataFrame(
        {
            "step": pd.Series([r[0] for r in rows], dtype="int64"),
            "loss": pd.Series([r[1] for r in rows], dtype="float64"),
            "series": pd.Series([r[2] for r in rows], dtype="string"),
        }
    )


# --- classification -------------------------------------------------------------------------------------------


def metrics_markdown(metrics: Any | None, warnings: Sequence[str] = ()) -> str:
    """Accuracy and macro-F1 (with row counts) as Markdown; the scoring warnings below, escaped."""
    lines = []
    if metrics is not None:
        skipped = f" ({metrics.n_without_gold} without a label skipped)" if metrics.n_without_gold else ""
        lines.append(
            f"**Accuracy** {metrics.accuracy:.3f} · **macro-F1** {metrics.macro_f1:.3f} · "
            f"{metrics.n} labelled rows{skipped}"
        )
    lines += [f"**Warning:** {md(w)}" for w in warnings]
    return "\n\n".join(lines)


# --- storage notice -----------------------------------------------------------------------------------------------


def storage_notice(reason: str | None) -> str:
    """The builder's warning when the home is lost on restart (see ``core.store.storage_lost_on_restart``); '' when
    storage is persistent."""
    if reason is None:
        return ""
    fix = (
        "enable persistent storage in the Space's settings (Settings, Persistent storage); after the restart "
        "DemoForge keeps its home in `/data/demoforge`."
        if reason == "no_storage"
        else "the Space has persistent storage at `/data`, but `DEMOFORGE_HOME` points elsewhere: remove that "
        "variable (the home then goes to `/data/demoforge`) or set it to a folder under `/data`."
    )
    return (
        "**Storage is not persistent.** This Space keeps adapters, arena votes and training runs on a disk that is "
        f"wiped when it restarts or rebuilds, so they will be lost. To keep them, {fix}"
    )
