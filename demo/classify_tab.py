"""The Classify tab: one text with probabilities and an explanation, a scored file with metrics, and the ladder from
zero-shot to fine-tuned: correct the labels inline, fine-tune on them (progress shown here), compare both methods.

Layout and wiring only; the handlers are in :mod:`demo.classify_run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr

from core.classify.explain import METHOD as EXPLAIN_METHOD
from core.classify.service import METHODS
from core.engine import Engine
from demo import classify_run as run
from demo import render
from demo.classify_run import DEFAULT_LABELS, NO_LABEL, TABLE_COLUMNS, TABLE_ROWS, adapter_names, adapter_update
from demo.errors import shows_errors
from demo.queue import MODEL_QUEUE

__all__ = ["DEFAULT_LABELS", "TABLE_COLUMNS", "ClassifyTab", "adapter_names", "adapter_update", "build_classify_tab"]

EXPLAIN_LABEL = "Which words pushed the prediction (occlusion: red supports, blue speaks against)"
PRIVATE = {"api_visibility": "private"}
MODEL_KW: dict[str, Any] = {"concurrency_id": MODEL_QUEUE}


@dataclass
class ClassifyTab:
    """The Classify tab's components (for cross-tab wiring in ``demo.build_app``)."""

    text: gr.Textbox
    labels: gr.Textbox
    method: gr.Radio
    adapter: gr.Dropdown
    run: gr.Button
    label: gr.Label
    explanation: gr.HighlightedText
    info: gr.Markdown
    upload: gr.File
    text_column: gr.Dropdown
    label_column: gr.Dropdown
    score: gr.Button
    scored_file: gr.File
    metrics: gr.Markdown
    confusion: gr.Dataframe
    table: gr.Dataframe
    ft_name: gr.Textbox
    ft_minutes: gr.Slider
    finetune: gr.Button
    compare: gr.Button
    ladder_status: gr.Markdown
    ft_run: gr.Textbox
    """Hidden: the id of the run started from the corrections (also the /finetune_from_corrections answer)."""
    ft_status: gr.HTML
    ft_timer: gr.Timer
    comparison: gr.Dataframe


def build_classify_tab(engine: Engine, max_upload_mb: int) -> ClassifyTab:
    """Build the Classify tab inside the current Blocks context and wire its events; returns its components."""
    # The engine is reached only inside handlers: the classifiers load on first use, and test doubles of the engine
    # that serve only the Chat tab still build the app. The adapter choices arrive when a page loads.
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
                    choices=[],
                    value=None,
                    label="Adapter",
                    scale=2,
                    allow_custom_value=True,
                    visible=False,
                    elem_id="df-cls-adapter",
                    info=run.ADAPTER_INFO,
                )
            run_btn = gr.Button("Classify", variant="primary", elem_id="df-cls-run")
            examples = run.example_texts()
            if examples:
                gr.Examples(examples=[[t] for t in examples], inputs=[text], label="Try a ticket")
        with gr.Column(scale=2):
            label_out = gr.Label(num_top_classes=10, label="Class probabilities", elem_id="df-cls-label")
            highlights = gr.HighlightedText(
                label=EXPLAIN_LABEL, combine_adjacent=False, show_legend=False, elem_id="df-cls-explain"
            )
            info = gr.Markdown("", elem_id="df-cls-info", latex_delimiters=[])

    gr.Markdown(
        "### Score a file\nUpload a CSV, TSV or JSONL file: every row gets a predicted label and one "
        "probability column per label. With a label column you also get accuracy, macro-F1 and a confusion "
        "matrix."
    )
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            upload = gr.File(
                label=f"CSV / TSV / JSONL (up to {max_upload_mb} MB)",
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
            metrics = gr.Markdown("", elem_id="df-cls-metrics", latex_delimiters=[])
            confusion = gr.Dataframe(
                label="Confusion matrix (rows: true label, columns: predicted)",
                interactive=False,
                visible=False,
                elem_id="df-cls-confusion",
            )
    table = gr.Dataframe(
        headers=TABLE_COLUMNS,
        label=f"Scored rows (first {TABLE_ROWS}): fix wrong labels in the corrected_label column, then fine-tune on "
        "them",
        interactive=True,
        static_columns=[0, 1, 2, 3, 4],
        max_chars=160,
        wrap=True,
        max_height=420,
        column_widths=["6%", "44%", "13%", "13%", "9%", "15%"],
        elem_id="df-cls-table",
    )

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
    ladder_status = gr.Markdown("", elem_id="df-cls-ladder-status", latex_delimiters=[])
    ft_status = gr.HTML("", elem_id="df-cls-ft-status", css_template=render.RUN_CSS, js_on_load=None)
    comparison = gr.Dataframe(
        headers=["method", "accuracy", "macro-F1", "rows"],
        interactive=False,
        label="Zero-shot vs fine-tuned on this file",
        elem_id="df-cls-comparison",
    )
    tab = ClassifyTab(
        text=text,
        labels=labels,
        method=method,
        adapter=adapter,
        run=run_btn,
        label=label_out,
        explanation=highlights,
        info=info,
        upload=upload,
        text_column=text_col,
        label_column=label_col,
        score=score,
        scored_file=scored_file,
        metrics=metrics,
        confusion=confusion,
        table=table,
        ft_name=ft_name,
        ft_minutes=ft_minutes,
        finetune=finetune,
        compare=compare,
        ladder_status=ladder_status,
        ft_run=gr.Textbox(visible=False, elem_id="df-cls-ft-run"),
        ft_status=ft_status,
        ft_timer=gr.Timer(1.0, active=False),
        comparison=comparison,
    )
    _wire(engine, tab)
    return tab


def _wire(engine: Engine, tab: ClassifyTab) -> None:
    tab.method.change(
        partial(run.show_adapter, engine), [tab.method, tab.adapter], [tab.adapter], queue=False, **PRIVATE
    )

    # --- one text
    last_note = gr.State("")
    single_in = [tab.text, tab.labels, tab.method, tab.adapter]
    for trigger in (tab.run.click, tab.text.submit):
        trigger(
            partial(run.classify_text, engine), single_in, [tab.label, tab.info, last_note], **PRIVATE, **MODEL_KW
        ).success(
            partial(run.explain_text, engine),
            [*single_in, last_note],
            [tab.explanation, tab.info],
            **PRIVATE,
            **MODEL_KW,
        )

    @shows_errors("classifying the text")
    def classify(
        text: str, labels: str = DEFAULT_LABELS, method: str = "embedding", adapter: str = ""
    ) -> dict[str, float]:
        """Scripting endpoint: label -> probability for one text.

        ``method``: 'embedding' (zero-shot, MiniLM), 'chat' (zero-shot, chat-model likelihood) or 'adapter'
        (fine-tuned; ``adapter`` names a classification adapter, whose own labels are used).
        """
        return engine.classify.classify(text, labels, method, adapter or None).probs

    @shows_errors("explaining the prediction")
    def explain(
        text: str, labels: str = DEFAULT_LABELS, method: str = "embedding", adapter: str = "", target_label: str = ""
    ) -> list[tuple[str, float]]:
        """Scripting endpoint: (word, score in [-1, 1]) per word, by occlusion, for the predicted label (or
        ``target_label``); positive words support it."""
        return engine.classify.explain(text, labels, method, adapter or None, target_label or None).spans

    gr.api(classify, api_name="classify", **MODEL_KW)
    gr.api(explain, api_name="explain", api_description=f"Word attributions; {EXPLAIN_METHOD}", **MODEL_KW)

    # --- a file
    fill = partial(run.fill_columns, engine)
    for event in (tab.upload.upload, tab.upload.clear):
        event(fill, [tab.upload], [tab.text_column, tab.label_column, tab.metrics], queue=False, **PRIVATE)
    scored = gr.State(None)
    tab.score.click(
        partial(run.score_file, engine),
        [tab.upload, tab.text_column, tab.label_column, tab.labels, tab.method, tab.adapter],
        [tab.scored_file, tab.metrics, scored],
        api_name="score_file",
        **MODEL_KW,
    ).success(run.show_scores, [scored], [tab.table, tab.confusion], queue=False, **PRIVATE)

    # --- the ladder: corrections -> a run followed here -> compare
    tab.finetune.click(
        partial(run.finetune_from_corrections, engine),
        [tab.table, tab.ft_name, tab.ft_minutes],
        [tab.ladder_status, tab.ft_run, tab.ft_status],
        api_name="finetune_from_corrections",
        concurrency_limit=None,
    ).success(lambda: gr.Timer(active=True), None, [tab.ft_timer], queue=False, **PRIVATE)
    tab.ft_timer.tick(
        partial(run.follow_corrections_run, engine),
        [tab.ft_run],
        [tab.ft_status, tab.ft_timer, tab.method, tab.adapter],
        queue=False,
        show_progress="hidden",
        **PRIVATE,
    )
    tab.compare.click(
        partial(run.compare_methods, engine),
        [tab.upload, tab.text_column, tab.label_column, tab.labels, tab.adapter],
        [tab.comparison, tab.ladder_status],
        api_name="compare_methods",
        **MODEL_KW,
    )
