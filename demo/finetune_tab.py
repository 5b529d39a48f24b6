"""The Fine-tune tab: upload or pick data, see its report, train a LoRA adapter live, stop/resume, re-attach.

Layout and wiring only; the handlers are in :mod:`demo.finetune_run`, the rendering in :mod:`demo.render`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial

import gradio as gr

from core import zerogpu
from core.config import TASK_DEFAULTS, LoraSettings
from core.engine import Engine
from demo import finetune_run as run
from demo import render

PRIVATE = {"api_visibility": "private"}


@dataclass
class TrainForm:
    """The widgets that make a run's settings; field names are the /start_training API's parameter names."""

    task: gr.Radio
    base_model: gr.Textbox
    columns: gr.Textbox
    adapter_name: gr.Textbox
    time_budget_minutes: gr.Slider
    epochs: gr.Number
    lr: gr.Number
    max_length: gr.Slider
    batch_size: gr.Slider
    grad_accum: gr.Slider
    lora_r: gr.Slider
    lora_alpha: gr.Slider
    lora_dropout: gr.Slider
    eval_fraction: gr.Slider
    scheduler: gr.Radio
    seed: gr.Number

    def as_inputs(self) -> dict[str, gr.components.Component]:
        """Parameter name -> widget, for ``inputs_kwargs`` (the handler gets the values by name)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass
class FinetuneTab:
    """The Fine-tune tab's components (for cross-tab wiring in ``demo.build_app``)."""

    form: TrainForm
    sample: gr.Dropdown
    upload: gr.File
    start: gr.Button
    stop: gr.Button
    report: gr.Markdown
    preview: gr.HTML
    status: gr.HTML
    plot: gr.LinePlot
    log: gr.Textbox
    runs: gr.Dropdown
    resume: gr.Button
    timer: gr.Timer
    run_id: gr.State
    data_path: gr.State
    run_status: gr.Textbox
    """Hidden: the shown run's status; its change (to finished) refreshes the adapter pickers."""


def _build_form(max_mb: int) -> tuple[TrainForm, gr.Dropdown, gr.File]:
    first = TASK_DEFAULTS["sft"]
    task = gr.Radio(list(run.TASKS), value="Chat (SFT)", label="Task", elem_id="df-ft-task")
    base = gr.Textbox(
        value="default",
        label="Base model",
        elem_id="df-ft-base",
        info="default = embedded SmolLM2 (chat) or MiniLM (classification); or a folder / Hub id",
    )
    # Choices are filled when a page loads: the samples are the engine's to list.
    sample = gr.Dropdown(
        choices=[], value=None, label="Sample dataset", elem_id="df-ft-sample", allow_custom_value=True
    )
    upload = gr.File(
        label=f"…or upload CSV / TSV / JSON / JSONL (up to {max_mb} MB)",  # Gradio refuses larger ones at once
        type="filepath",
        elem_id="df-ft-upload",
        file_types=[".csv", ".tsv", ".json", ".jsonl"],
    )
    columns = gr.Textbox(
        value="",
        label="Column mapping (optional)",
        placeholder="e.g. prompt=question, response=answer",
        elem_id="df-ft-columns",
    )
    name = gr.Textbox(value="my-adapter", label="Adapter name", elem_id="df-ft-name")
    budget = gr.Slider(
        0,
        60,
        value=3,
        step=0.5,
        label="Time budget (minutes)",
        elem_id="df-ft-budget",
        info="Steps are planned to finish within this time (0 = no limit, train the epochs); the best checkpoint "
        "is kept.",
    )
    with gr.Accordion("Advanced settings", open=False):
        form = TrainForm(
            task=task,
            base_model=base,
            columns=columns,
            adapter_name=name,
            time_budget_minutes=budget,
            # No minimum here: Gradio's own refusal ("Value -3 is less than minimum value 0.1") named no field;
            # the run's config check does ("epochs=-3.0 must be positive").
            epochs=gr.Number(value=first["epochs"], label="Epochs (upper bound)"),
            lr=gr.Number(value=first["lr"], label="Learning rate"),
            max_length=gr.Slider(32, 2048, value=first["max_length"], step=32, label="Max length (tokens)"),
            batch_size=gr.Slider(
                1,
                64,
                value=first["batch_size"],
                step=1,
                label="Batch size (packed rows for chat, texts for classification)",
            ),
            grad_accum=gr.Slider(1, 32, value=1, step=1, label="Gradient accumulation"),
            lora_r=gr.Slider(1, 128, value=16, step=1, label="LoRA rank r"),
            lora_alpha=gr.Slider(1, 256, value=32, step=1, label="LoRA alpha"),
            lora_dropout=gr.Slider(0.0, 0.5, value=LoraSettings().dropout, step=0.01, label="LoRA dropout"),
            eval_fraction=gr.Slider(0.0, 0.45, value=0.1, step=0.05, label="Eval fraction"),
            scheduler=gr.Radio(["cosine", "linear"], value="cosine", label="Schedule"),
            seed=gr.Number(value=42, precision=0, label="Seed"),
        )
    return form, sample, upload


def build_finetune_tab(engine: Engine, max_upload_mb: int) -> FinetuneTab:
    """Build the Fine-tune tab inside the current Blocks context and wire its events; returns its components."""
    if zerogpu.active():  # start and resume are refused too (demo/finetune_run.py, core/zerogpu.py)
        gr.Markdown(f"**{zerogpu.TRAINING_REFUSED}**", elem_id="df-ft-zerogpu")
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            form, sample, upload = _build_form(max_upload_mb)
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="df-ft-start")
                stop = gr.Button("Stop", variant="stop", elem_id="df-ft-stop")
        with gr.Column(scale=2):
            report = gr.Markdown(run.NO_DATA, elem_id="df-ft-report", latex_delimiters=[])
            preview = gr.HTML("", elem_id="df-ft-preview", css_template=render.PREVIEW_CSS, js_on_load=None)
            status = gr.HTML("", elem_id="df-ft-headline", css_template=render.RUN_CSS, js_on_load=None)
            plot = gr.LinePlot(
                x="step",
                y="loss",
                color="series",
                title="Loss",
                height=260,
                x_title="step",
                y_title="loss",
                color_title="",
                color_map=render.SERIES_COLORS,
                y_axis_format=render.LOSS_AXIS_FORMAT,
                elem_id="df-ft-plot",
            )
            log_tail = gr.Textbox(label="Log", lines=6, max_lines=12, interactive=False, elem_id="df-ft-log")
            with gr.Row():
                runs = gr.Dropdown(
                    label="Stopped runs", choices=[], elem_id="df-ft-runs", scale=3, allow_custom_value=True
                )
                resume = gr.Button("Resume selected run", elem_id="df-ft-resume", scale=1)
    tab = FinetuneTab(
        form=form,
        sample=sample,
        upload=upload,
        start=start,
        stop=stop,
        report=report,
        preview=preview,
        status=status,
        plot=plot,
        log=log_tail,
        runs=runs,
        resume=resume,
        timer=gr.Timer(1.0),
        run_id=gr.State(None),
        data_path=gr.State(None),
        run_status=gr.Textbox(visible=False, elem_id="df-ft-status"),
    )
    _wire(engine, tab)
    return tab


def _wire(engine: Engine, tab: FinetuneTab) -> None:
    form = tab.form
    refused = gr.State(None)  # why the session's data file cannot be used (None when it can)
    newest_seen, shown = gr.State(None), gr.State(None)

    gr.on(None, partial(run.sample_choices, engine), None, [tab.sample], queue=False, **PRIVATE)  # on page load
    report_out = [tab.report, tab.preview, refused]
    validate = partial(run.validate_data, engine)
    validate_in = [form.task, form.base_model, form.columns, tab.data_path, form.max_length]
    tab.sample.input(
        partial(run.pick_sample, engine),
        [tab.sample],
        [tab.data_path, form.task, form.adapter_name, tab.upload],
        queue=False,
        api_name="pick_sample",
    ).then(validate, validate_in, report_out, **PRIVATE)
    tab.upload.upload(
        partial(run.upload_data, engine),
        [tab.upload, form.task, form.base_model, form.columns, form.max_length],
        [tab.data_path, tab.sample, *report_out],
        api_name="upload_data",
    )
    form.task.change(
        run.task_defaults,
        [form.task],
        [form.epochs, form.lr, form.max_length, form.batch_size],
        queue=False,
        **PRIVATE,
    )
    for comp in (form.task, form.columns):
        comp.change(validate, validate_in, report_out, **PRIVATE)

    tab.start.click(
        partial(run.start_training, engine),
        inputs_kwargs={"data_path": tab.data_path, "refused": refused, **form.as_inputs()},
        outputs=[tab.run_id, tab.status],
        api_name="start_training",
        concurrency_limit=None,
    )
    tab.stop.click(
        partial(run.stop_training, engine), None, [tab.status], api_name="stop_training", concurrency_limit=None
    )
    tab.resume.click(
        partial(run.resume_training, engine),
        [tab.runs],
        [tab.run_id, tab.status],
        api_name="resume_training",
        concurrency_limit=None,
    )
    tab.timer.tick(
        partial(run.refresh_run, engine),
        [tab.run_id, newest_seen, shown],
        [tab.run_id, newest_seen, shown, tab.status, tab.plot, tab.log, tab.run_status],
        queue=False,
        show_progress="hidden",
        **PRIVATE,
    )
    tab.runs.focus(partial(run.stopped_runs, engine), None, [tab.runs], queue=False, **PRIVATE)

    def training_status(run_id: str = "") -> dict:
        """Scripting endpoint: a run's progress as plain JSON (the live or newest run when ``run_id`` is empty)."""
        return run.training_status(engine, run_id)

    gr.api(training_status, api_name="training_status")
