"""The Classify tab's handlers: typed module-level functions over ``engine.classify``, ``engine.training`` and
``engine.library``. Each takes the engine first (bound with ``functools.partial`` when the tab is built); errors
reach the visitor through :mod:`demo.errors`."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from core.config import TrainConfig
from demo import render
from demo.errors import shows_errors
from demo.finetune_run import adapter_folder_name

if TYPE_CHECKING:
    from core.classify.scoring import BatchResult, Metrics
    from core.engine import Engine

DEFAULT_LABELS = (
    "billing: payments, invoices, refunds and plan prices\n"
    "bug: something is broken or not working\n"
    "feature_request: a request for a new feature or improvement\n"
    "account_access: login, passwords and two-factor access to the account\n"
    "how_to: questions about how to use the product"
)
EXAMPLES_FILE = Path(__file__).resolve().parent.parent / "assets" / "data" / "ticket_triage_test.csv"
NO_LABEL = "(none)"
TABLE_COLUMNS = ["row", "text", "true_label", "predicted_label", "confidence", "corrected_label"]
TABLE_ROWS = 1000
"""Rows shown in the editable table (and so available for corrections); the CSV download has every row."""
SCORED_PREFIX = "demoforge-scored"
CONFUSION_CORNER = "true ↓ / predicted →"
LADDER_HINT = "press Compare on this file (the adapter is picked above)."


def _column(value: str | None) -> str | None:
    return None if not value or value.strip() in ("", NO_LABEL) else value.strip()


def example_texts(n: int = 5) -> list[str]:
    """A few texts of the held-out ticket sample, one per label where possible."""
    if not EXAMPLES_FILE.is_file():
        return []
    with EXAMPLES_FILE.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    picked: dict[str, str] = {}
    for r in rows:
        if r.get("text") and r.get("label") and r["label"] not in picked:
            picked[r["label"]] = r["text"]
    return list(picked.values())[:n]


def adapter_names(engine: Engine) -> list[str]:
    """Classification adapters in the library, newest first."""
    return [a.name for a in engine.library.list("classification")]


def adapter_update(engine: Engine, value: str | None = None) -> dict[str, Any]:
    """Fresh choices for the adapter picker (and a new value when given)."""
    if value is None:
        return gr.update(choices=adapter_names(engine))
    return gr.update(choices=adapter_names(engine), value=value)


def confusion_frame(m: Metrics) -> Any:
    """The confusion matrix as a heat-coloured table (a pandas Styler: no plotting library needed)."""
    frame = pd.DataFrame(m.confusion, columns=m.labels)
    frame.insert(0, CONFUSION_CORNER, m.labels)
    peak = max((max(row) for row in m.confusion), default=0) or 1

    def shade(col: pd.Series) -> list[str]:
        if col.name == CONFUSION_CORNER:
            return ["font-weight: bold"] * len(col)
        out = []
        for i, v in enumerate(col):
            hue = "34, 139, 34" if m.labels[i] == col.name else "220, 60, 60"  # diagonal green, errors red
            out.append(f"background-color: rgba({hue}, {0.12 + 0.75 * v / peak:.2f})" if v else "")
        return out

    return frame.style.apply(shade)


def table_frame(result: BatchResult, text_column: str, label_column: str | None) -> pd.DataFrame:
    """The editable table: first rows with the prediction and a corrected_label prefilled with the truth, else
    the prediction."""
    rows = []
    for i, r in enumerate(result.rows[:TABLE_ROWS]):
        gold = "" if label_column is None or r.get(label_column) is None else str(r.get(label_column)).strip()
        pred = str(r["predicted_label"])
        conf = max(float(r.get(f"p_{x}") or 0.0) for x in result.labels)
        text = "" if r.get(text_column) is None else str(r.get(text_column))
        rows.append([i + 1, text, gold, pred, round(conf, 3), gold or pred])
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


# --- one text ---------------------------------------------------------------------------------------------------


ADAPTER_INFO = "Classification adapters from the library (labels come from the adapter)."
NO_ADAPTER_INFO = (
    "No classification adapter yet: fine-tune one in the Fine-tune tab (task: classification), or score a "
    'file below and press "Fine-tune on these rows".'
)


def show_adapter(engine: Engine, method: str, current: str | None = None) -> dict[str, Any]:
    """The adapter picker is shown (with fresh choices) for the fine-tuned method only, with an adapter picked: the
    one already chosen while it still exists, else the newest (an empty picker read as 'no adapters here'). With
    none in the library its hint says how to make one."""
    if method != "adapter":
        return gr.update(visible=False)
    names = adapter_names(engine)
    value = current if current in names else (names[0] if names else None)
    info = ADAPTER_INFO if names else NO_ADAPTER_INFO
    return gr.update(visible=True, choices=names, value=value, info=info)


@shows_errors("classifying the text", duration=10)
def classify_text(
    engine: Engine, text: str, labels: str, method: str, adapter: str | None
) -> tuple[dict[str, float], str, str]:
    """Probabilities, then a line with the label, method and latency (the explanation follows)."""
    if not (text or "").strip():
        raise gr.Error("Type or paste a text to classify.", duration=5)
    pred, line, seconds = engine.classify.classify_timed(text, labels, method, adapter)
    note = f"**{render.md(pred.label)}** · {render.md(line)} · {seconds * 1000:.0f} ms"
    return pred.probs, note + " · explaining…", note


@shows_errors("explaining the prediction", duration=10)
def explain_text(
    engine: Engine, text: str, labels: str, method: str, adapter: str | None, note: str
) -> tuple[list[tuple[str, float]], str]:
    """Word highlights by occlusion (not for the chat-likelihood method: one chat-model pass per word)."""
    if method == "chat":
        # ~38 s for 50 words with SmolLM2 on 2 cores would hold the model queue for everyone.
        return [], (
            f"{note} · no word highlights for the chat-likelihood method (too slow: one chat-model "
            "pass per word; the /explain endpoint still offers it)"
        )
    start = time.perf_counter()
    exp = engine.classify.explain(text, labels, method, adapter)
    took = time.perf_counter() - start
    capped = f" (first {exp.occluded_words} words)" if exp.occluded_words < len(exp.spans) else ""
    about = f"p({render.md(exp.label)}) = {exp.probability:.2f}"
    return exp.spans, f"{note} · explanation {took * 1000:.0f} ms{capped} for {about}"


# --- a file -----------------------------------------------------------------------------------------------------


@shows_errors("reading the file", duration=10)
def fill_columns(engine: Engine, path: str | None) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Column pickers with guesses for a freshly uploaded file."""
    if not path:
        return gr.update(choices=[], value=None), gr.update(choices=[NO_LABEL], value=NO_LABEL), ""
    cols, text_guess, label_guess = engine.classify.file_columns(path)
    return (
        gr.update(choices=cols, value=text_guess),
        gr.update(choices=[NO_LABEL, *cols], value=label_guess or NO_LABEL),
        f"{render.md(Path(path).name)}: columns {render.md(', '.join(cols))}. Pick the text column (and the label "
        "column if it has one), then press **Score file**.",
    )


@shows_errors("scoring the file", duration=10)
def score_file(
    engine: Engine,
    file: str | None,
    text_column: str | None,
    label_column: str | None,
    labels: str,
    method: str,
    adapter: str | None,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's way to ask for a progress tracker
) -> tuple[str, str, dict[str, Any]]:
    """Score every row; returns the scored CSV (formula cells escaped), the metrics as Markdown, and what the
    table and confusion matrix show."""
    if not file:
        raise gr.Error("Upload a CSV, TSV or JSONL file first.", duration=5)
    label_col = _column(label_column)
    text_col = _column(text_column) or engine.classify.file_columns(file)[1]
    result = engine.classify.score_file(
        file, text_col, label_col, labels, method, adapter or None, lambda f: progress(f, desc="Scoring rows")
    )
    out = engine.scratch_dir(SCORED_PREFIX) / f"{Path(file).stem[:60] or 'scored'}-scored.csv"
    engine.classify.write_csv(result, out)
    payload = {"table": table_frame(result, str(text_col), label_col), "confusion": result.metrics}
    head = f"Scored {len(result.rows)} rows" + ("." if result.metrics else " (no label column, so no metrics).")
    note = "\n\n".join(x for x in (head, render.metrics_markdown(result.metrics, result.warnings)) if x)
    return str(out), note, payload


def show_scores(payload: dict[str, Any] | None) -> tuple[Any, Any]:
    """The editable table and the confusion matrix (hidden without a label column)."""
    if not payload:
        return gr.skip(), gr.skip()
    m = payload["confusion"]
    conf = gr.update(value=confusion_frame(m), visible=True) if m is not None else gr.update(visible=False)
    return payload["table"], conf


# --- the ladder -------------------------------------------------------------------------------------------------


@shows_errors("starting the fine-tuning run", duration=10)
def finetune_from_corrections(
    engine: Engine, rows: pd.DataFrame | None, adapter_name: str, minutes: float
) -> tuple[str, str, str]:
    """Save the table's text + corrected_label as a training file and start a classification run on MiniLM;
    returns (note, run id, the run's status)."""
    if rows is None or len(rows) == 0 or "corrected_label" not in rows.columns or "text" not in rows.columns:
        raise gr.Error("Score a file first: fine-tuning uses the table's text and corrected_label columns.", duration=6)
    rows = rows.fillna("")  # cells cleared in the browser arrive as NaN
    name = (adapter_name or "").strip() or "classifier"
    path, n = engine.classify.save_corrections(list(rows["text"]), list(rows["corrected_label"]), name)
    config = TrainConfig(
        task="classification",
        base_model="minilm",
        data_path=str(path),
        adapter_name=name,
        time_budget_minutes=float(minutes),
    )
    run_id = engine.training.start(config)
    note = (
        f"Started run {render.md(run_id)} on {n} corrected rows (saved as {render.md(path.name)}), for at most "
        f"{float(minutes):g} min. Its progress shows below (and in the **Fine-tune** tab); when the adapter is "
        "ready it is picked here: then press **Compare on this file**."
    )
    return note, run_id, render.run_status_html(engine.training.progress(run_id), engine.home, LADDER_HINT)


@shows_errors("following the fine-tuning run", duration=10)
def follow_corrections_run(engine: Engine, run_id: str | None) -> tuple[Any, Any, Any, Any]:
    """Timer tick while the ladder's run is alive: its status here; once it ends the timer stops and, when the
    adapter is ready, the method and adapter pickers switch to it."""
    if not run_id:
        return gr.skip(), gr.Timer(active=False), gr.skip(), gr.skip()
    p = engine.training.progress(run_id)
    status = render.run_status_html(p, engine.home, LADDER_HINT)
    if p.alive:
        return status, gr.skip(), gr.skip(), gr.skip()
    if p.status in ("finished", "time_budget"):
        name = adapter_folder_name(p.adapter_dir, p.adapter_name)
        return status, gr.Timer(active=False), "adapter", adapter_update(engine, name)
    return status, gr.Timer(active=False), gr.skip(), gr.skip()


@shows_errors("comparing methods", duration=10)
def compare_methods(
    engine: Engine,
    file: str | None,
    text_column: str | None,
    label_column: str | None,
    labels: str,
    adapter: str | None,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's way to ask for a progress tracker
) -> tuple[pd.DataFrame, str]:
    """Score the file with zero-shot (MiniLM) and with the fine-tuned adapter; accuracy and macro-F1 of each."""
    if not file:
        raise gr.Error("Upload a labelled file first.", duration=5)
    if not _column(label_column):
        raise gr.Error("Comparing needs the true labels: pick the file's label column.", duration=6)
    if not adapter:
        raise gr.Error(
            "Pick a fine-tuned adapter (method 'Fine-tuned adapter'), or fine-tune one on the rows above first.",
            duration=6,
        )
    report = engine.classify.compare_report(
        file,
        _column(text_column),
        _column(label_column),
        labels,
        adapter,
        lambda f: progress(f, desc="Scoring with both methods"),
    )
    results = report.results
    frame = pd.DataFrame(
        [[line, round(m.accuracy, 3), round(m.macro_f1, 3), m.n] for line, m in results],
        columns=["method", "accuracy", "macro-F1", "rows"],
    )
    (_, zero), (_, tuned) = results
    delta = tuned.macro_f1 - zero.macro_f1
    summary = f"Fine-tuned vs zero-shot: macro-F1 {'+' if delta >= 0 else ''}{delta:.3f}."
    # When the adapter loses to zero-shot, say why and what to do (too few rows per class, unseen labels...).
    return frame, f"{summary}\n\n**Advice:** {report.advice}" if report.advice else summary
