"""The Classify tab: one text with probabilities and an explanation, a scored file with metrics, and the ladder from
zero-shot to fine-tuned: correct the labels inline, fine-tune on them, compare both methods on the same file."""

from __future__ import annotations

import csv
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from core import store
from core.adapters import AdapterError
from core.classify import ClassifyError
from core.classify.explain import METHOD as EXPLAIN_METHOD
from core.classify.scoring import BatchResult, Metrics, write_csv
from core.classify.service import METHODS, ClassifyService
from core.config import ConfigError, TrainConfig
from core.data import DataError
from core.engine import Engine
from core.train.jobs import JobBusyError
from demo.errors import user_error

log = logging.getLogger(__name__)

MODEL_QUEUE = "model"
"""concurrency_id shared with the Chat tab: every listener that runs a model queues behind one limit."""
EXPECTED = (ClassifyError, DataError, AdapterError, ConfigError, ValueError)
"""Errors whose message is the answer (bad labels, bad file, unknown adapter); anything else is unexpected."""
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
EXPLAIN_LABEL = "Which words pushed the prediction (occlusion: red supports, blue speaks against)"


def _raise(exc: BaseException, doing: str) -> gr.Error:
    """The gr.Error to raise for ``exc``: its message when expected, a logged short note otherwise."""
    if isinstance(exc, JobBusyError):
        return gr.Error(
            f"A training run is already in progress: {exc} Watch or stop it in the Fine-tune tab.", duration=10
        )
    if isinstance(exc, EXPECTED):
        return gr.Error(str(exc), duration=10)
    return user_error(exc, doing)


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


def adapter_names() -> list[str]:
    """Classification adapters in the library, newest first."""
    return [a.name for a in ClassifyService.adapters()]


def adapter_update(value: str | None = None) -> dict:
    """Fresh choices for the adapter picker (and a new value when given)."""
    if value is None:
        return gr.update(choices=adapter_names())
    return gr.update(choices=adapter_names(), value=value)


def metrics_markdown(m: Metrics | None, warnings: list[str] | None = None) -> str:
    """Accuracy and macro-F1 (with row counts) as Markdown; the warnings below."""
    lines = []
    if m is not None:
        lines.append(
            f"**Accuracy** {m.accuracy:.3f} · **macro-F1** {m.macro_f1:.3f} · {m.n} labelled rows"
            + (f" ({m.n_without_gold} without a label skipped)" if m.n_without_gold else "")
        )
    lines += [f"⚠️ {w}" for w in warnings or []]
    return "\n\n".join(lines)


def confusion_frame(m: Metrics) -> Any:
    """The confusion matrix as a heat-coloured table (a pandas Styler: no plotting library needed)."""
    frame = pd.DataFrame(m.confusion, columns=m.labels)
    frame.insert(0, "true ↓ / predicted →", m.labels)
    peak = max((max(row) for row in m.confusion), default=0) or 1

    def shade(col: pd.Series) -> list[str]:
        if col.name == "true ↓ / predicted →":
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
        rows.append(
            [
                i + 1,
                "" if r.get(text_column) is None else str(r.get(text_column)),
                gold,
                pred,
                round(conf, 3),
                gold or pred,
            ]
        )
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def build_classify_tab(engine: Engine) -> dict[str, gr.components.Component]:
    """Build the Classify tab inside the current Blocks context and wire its events; returns its components."""
    # engine.classify is reached only inside handlers: the service (and its models) load on first use, and test
    # doubles of the engine that serve only the Chat tab still build the app.
    model_kw: dict[str, Any] = {"concurrency_id": MODEL_QUEUE}
    private = {"api_visibility": "private"}

    # --- 1. one text ------------------------------------------------------------------------------------------------
    with gr.Row():
        with gr.Column(scale=3):
            text = gr.Textbox(
                label="Text", lines=4, placeholder="Paste a support ticket, a review, a message…", elem_id="df-cls-text"
            )
            labels = gr.Textbox(
                label="Labels (one per line or comma-separated; 'name: description' helps zero-shot)",
                value=DEFAULT_LABELS,
                lines=5,
                elem_id="df-cls-labels",
            )
            with gr.Row(equal_height=True):
                method = gr.Radio(
                    [(shown, key) for key, shown in METHODS.items()],
                    value="embedding",
                    label="Method",
                    scale=3,
                    elem_id="df-cls-method",
                )
                adapter = gr.Dropdown(
                    choices=adapter_names(),
                    value=None,
                    label="Adapter",
                    scale=2,
                    allow_custom_value=True,
                    visible=False,
                    elem_id="df-cls-adapter",
                    info="Classification adapters from the library (labels come from the adapter).",
                )
            run = gr.Button("Classify", variant="primary", elem_id="df-cls-run")
            examples = example_texts()
            if examples:
                gr.Examples(examples=[[t] for t in examples], inputs=[text], label="Try a ticket")
        with gr.Column(scale=2):
            label_out = gr.Label(num_top_classes=10, label="Class probabilities", elem_id="df-cls-label")
            highlights = gr.HighlightedText(
                label=EXPLAIN_LABEL, combine_adjacent=False, show_legend=False, elem_id="df-cls-explain"
            )
            info = gr.Markdown("", elem_id="df-cls-info")

    def show_adapter(choice: str):
        is_adapter = ClassifyService.method_key(choice) == "adapter"
        return gr.update(visible=is_adapter, choices=adapter_names()) if is_adapter else gr.update(visible=False)

    method.change(show_adapter, [method], [adapter], queue=False, **private)

    def ui_classify(text_value: str, spec: str, method_value: str, adapter_value: str | None):
        if not (text_value or "").strip():
            raise gr.Error("Type or paste a text to classify.", duration=5)
        try:
            pred, line, seconds = engine.classify.classify_timed(text_value, spec, method_value, adapter_value)
        except Exception as exc:
            raise _raise(exc, "classifying the text") from exc
        note = f"**{pred.label}** · {line} · {seconds * 1000:.0f} ms"
        return pred.probs, note + " · explaining…", note

    def ui_explain(text_value: str, spec: str, method_value: str, adapter_value: str | None, note: str):
        if ClassifyService.method_key(method_value) == "chat":
            # Occlusion re-scores one variant per word; with the chat model that is one prompt pass per word
            # (~38 s for 50 words with SmolLM2 on 2 cores), which would hold the model queue for everyone.
            return [], (
                f"{note} · no word highlights for the chat-likelihood method (too slow: one chat-model "
                "pass per word; the /explain endpoint still offers it)"
            )
        start = time.perf_counter()
        try:
            exp = engine.classify.explain(text_value, spec, method_value, adapter_value)
        except Exception as exc:
            raise _raise(exc, "explaining the prediction") from exc
        took = time.perf_counter() - start
        capped = f" (first {exp.occluded_words} words)" if exp.occluded_words < len(exp.spans) else ""
        about = f"p({exp.label}) = {exp.probability:.2f}"
        return exp.spans, f"{note} · explanation {took * 1000:.0f} ms{capped} for {about}"

    last_note = gr.State("")
    single_in = [text, labels, method, adapter]
    for trigger in (run.click, text.submit):
        trigger(ui_classify, single_in, [label_out, info, last_note], **private, **model_kw).success(
            ui_explain, [*single_in, last_note], [highlights, info], **private, **model_kw
        )

    def classify(
        text: str, labels: str = DEFAULT_LABELS, method: str = "embedding", adapter: str = ""
    ) -> dict[str, float]:
        """Scripting endpoint: label -> probability for one text.

        ``method``: 'embedding' (zero-shot, MiniLM), 'chat' (zero-shot, chat-model likelihood) or 'adapter'
        (fine-tuned; ``adapter`` names a classification adapter, whose own labels are used).
        """
        try:
            return engine.classify.classify(text, labels, method, adapter or None).probs
        except Exception as exc:
            raise _raise(exc, "classifying the text") from exc

    def explain(
        text: str, labels: str = DEFAULT_LABELS, method: str = "embedding", adapter: str = "", target_label: str = ""
    ) -> list[tuple[str, float]]:
        """Scripting endpoint: (word, score in [-1, 1]) per word, by occlusion, for the predicted label (or
        ``target_label``); positive words support it."""
        try:
            return engine.classify.explain(text, labels, method, adapter or None, target_label or None).spans
        except Exception as exc:
            raise _raise(exc, "explaining the prediction") from exc

    gr.api(classify, api_name="classify", **model_kw)
    gr.api(explain, api_name="explain", api_description=f"Word attributions; {EXPLAIN_METHOD}", **model_kw)

    # --- 2. a file --------------------------------------------------------------------------------------------------
    gr.Markdown(
        "### Score a file\nUpload a CSV, TSV or JSONL file: every row gets a predicted label and one "
        "probability column per label. With a label column you also get accuracy, macro-F1 and a confusion "
        "matrix."
    )
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            upload = gr.File(
                label="CSV / TSV / JSONL",
                type="filepath",
                file_types=[".csv", ".tsv", ".jsonl", ".json"],
                elem_id="df-cls-upload",
            )
            text_col = gr.Dropdown(choices=[], label="Text column", allow_custom_value=True, elem_id="df-cls-textcol")
            label_col = gr.Dropdown(
                choices=[NO_LABEL],
                value=NO_LABEL,
                label="Label column (optional)",
                allow_custom_value=True,
                elem_id="df-cls-labelcol",
            )
            score = gr.Button("Score file", variant="primary", elem_id="df-cls-score")
            scored_file = gr.File(label="Scored CSV", interactive=False, elem_id="df-cls-download")
        with gr.Column(scale=2):
            metrics = gr.Markdown("", elem_id="df-cls-metrics")
            confusion = gr.Dataframe(
                label="Confusion matrix (rows: true label, columns: predicted)",
                interactive=False,
                visible=False,
                elem_id="df-cls-confusion",
            )
    table = gr.Dataframe(
        headers=TABLE_COLUMNS,
        label=f"Scored rows (first {TABLE_ROWS}): fix wrong labels in "
        "the corrected_label column, then fine-tune on them",
        interactive=True,
        static_columns=[0, 1, 2, 3, 4],
        max_chars=160,
        wrap=True,
        max_height=420,
        column_widths=["6%", "44%", "13%", "13%", "9%", "15%"],
        elem_id="df-cls-table",
    )

    def fill_columns(path: str | None):
        if not path:
            return gr.update(choices=[], value=None), gr.update(choices=[NO_LABEL], value=NO_LABEL), ""
        try:
            cols, text_guess, label_guess = ClassifyService.file_columns(path)
        except Exception as exc:
            raise _raise(exc, "reading the file") from exc
        return (
            gr.update(choices=cols, value=text_guess),
            gr.update(choices=[NO_LABEL, *cols], value=label_guess or NO_LABEL),
            f"{Path(path).name}: columns {', '.join(cols)}. Pick the text "
            "column (and the label column if it has one), then press **Score file**.",
        )

    upload.upload(fill_columns, [upload], [text_col, label_col, metrics], queue=False, **private)
    upload.clear(fill_columns, [upload], [text_col, label_col, metrics], queue=False, **private)

    def score_file(
        file: str | None,
        text_column: str | None,
        label_column: str | None,
        labels: str,
        method: str,
        adapter: str | None,
        progress=gr.Progress(),
    ):  # noqa: B008
        """Score every row; returns the scored CSV (formula cells escaped) and the metrics as Markdown."""
        if not file:
            raise gr.Error("Upload a CSV, TSV or JSONL file first.", duration=5)
        label_column = _column(label_column)
        try:
            text_column = _column(text_column) or engine.classify.file_columns(file)[1]
            result = engine.classify.score_file(
                file,
                text_column,
                label_column,
                labels,
                method,
                adapter or None,
                lambda f: progress(f, desc="Scoring rows"),
            )
            out_dir = Path(tempfile.mkdtemp(prefix="demoforge-scored-"))
            out = write_csv(result, out_dir / f"{store.safe_name(Path(file).stem)}-scored.csv")
        except Exception as exc:
            raise _raise(exc, "scoring the file") from exc
        payload = {"table": table_frame(result, str(text_column), label_column), "confusion": result.metrics}
        head = f"Scored {len(result.rows)} rows" + ("." if result.metrics else " (no label column, so no metrics).")
        return str(out), "\n\n".join(x for x in (head, metrics_markdown(result.metrics, result.warnings)) if x), payload

    def render(payload: dict | None):
        if not payload:
            return gr.skip(), gr.skip()
        m = payload["confusion"]
        conf = gr.update(value=confusion_frame(m), visible=True) if m is not None else gr.update(visible=False)
        return payload["table"], conf

    scored = gr.State(None)
    score.click(
        score_file,
        [upload, text_col, label_col, labels, method, adapter],
        [scored_file, metrics, scored],
        api_name="score_file",
        **model_kw,
    ).success(render, [scored], [table, confusion], queue=False, **private)

    # --- 3. the ladder ----------------------------------------------------------------------------------------------
    gr.Markdown(
        "### From zero-shot to fine-tuned\nCorrect the labels above, fine-tune a MiniLM adapter on these "
        "rows, then compare zero-shot and fine-tuned on the same file."
    )
    with gr.Row(equal_height=True):
        ft_name = gr.Textbox(value="ticket-classifier", label="Adapter name", scale=2, elem_id="df-cls-ft-name")
        ft_minutes = gr.Slider(
            0.5, 30, value=2, step=0.5, label="Time budget (minutes)", scale=2, elem_id="df-cls-ft-minutes"
        )
        finetune = gr.Button("Fine-tune on these rows", variant="primary", scale=1, elem_id="df-cls-finetune")
        compare = gr.Button("Compare on this file", scale=1, elem_id="df-cls-compare")
    ladder_status = gr.Markdown("", elem_id="df-cls-ladder-status")
    comparison = gr.Dataframe(
        headers=["method", "accuracy", "macro-F1", "rows"],
        interactive=False,
        label="Zero-shot vs fine-tuned on this file",
        elem_id="df-cls-comparison",
    )

    def finetune_from_corrections(rows: pd.DataFrame | None, adapter_name: str, minutes: float):
        """Save the table's text + corrected_label as a training file and start a classification run on MiniLM."""
        if rows is None or len(rows) == 0 or "corrected_label" not in rows.columns or "text" not in rows.columns:
            raise gr.Error(
                "Score a file first: fine-tuning uses the table's text and corrected_label columns.", duration=6
            )
        rows = rows.fillna("")  # cells cleared in the browser arrive as NaN
        try:
            name = store.safe_name(adapter_name or "")
            path, n = engine.classify.save_corrections(list(rows["text"]), list(rows["corrected_label"]), name)
            run_id = engine.jobs.start(
                TrainConfig(
                    task="classification",
                    base_model="minilm",
                    data_path=str(path),
                    adapter_name=name,
                    time_budget_minutes=float(minutes),
                )
            )
        except Exception as exc:
            raise _raise(exc, "starting the fine-tuning run") from exc
        msg = (
            f"⏳ Started run `{run_id}` on {n} corrected rows (saved as `{path.name}`), for at most "
            f"{float(minutes):g} min. Watch it in the **Fine-tune** tab; when adapter **{name}** is ready it "
            "appears in the adapter list here: press **Compare on this file**."
        )
        return msg, name

    finetune.click(
        finetune_from_corrections,
        [table, ft_name, ft_minutes],
        [ladder_status, adapter],
        api_name="finetune_from_corrections",
        concurrency_limit=None,
    )

    def compare_methods(
        file: str | None,
        text_column: str | None,
        label_column: str | None,
        labels: str,
        adapter: str | None,
        progress=gr.Progress(),
    ):  # noqa: B008
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
        try:
            results = engine.classify.compare(
                file,
                _column(text_column),
                _column(label_column),
                labels,
                adapter,
                lambda f: progress(f, desc="Scoring with both methods"),
            )
        except Exception as exc:
            raise _raise(exc, "comparing methods") from exc
        frame = pd.DataFrame(
            [[line, round(m.accuracy, 3), round(m.macro_f1, 3), m.n] for line, m in results],
            columns=["method", "accuracy", "macro-F1", "rows"],
        )
        (_, zero), (_, tuned) = results
        delta = tuned.macro_f1 - zero.macro_f1
        return frame, f"Fine-tuned vs zero-shot: macro-F1 {'+' if delta >= 0 else ''}{delta:.3f}."

    compare.click(
        compare_methods,
        [upload, text_col, label_col, labels, adapter],
        [comparison, ladder_status],
        api_name="compare_methods",
        **model_kw,
    )

    return {
        "text": text,
        "labels": labels,
        "method": method,
        "adapter": adapter,
        "run": run,
        "label": label_out,
        "explanation": highlights,
        "info": info,
        "upload": upload,
        "text_column": text_col,
        "label_column": label_col,
        "score": score,
        "scored_file": scored_file,
        "metrics": metrics,
        "confusion": confusion,
        "table": table,
        "ft_name": ft_name,
        "ft_minutes": ft_minutes,
        "finetune": finetune,
        "compare": compare,
        "ladder_status": ladder_status,
        "comparison": comparison,
    }
