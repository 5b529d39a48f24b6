"""The Fine-tune tab: upload or pick data, see its report, train a LoRA adapter live, stop/resume, re-attach."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
import pandas as pd

from core.config import TASK_DEFAULTS, ConfigError, LoraSettings, TrainConfig
from core.data import DataError, read_table
from core.engine import Engine
from core.train.jobs import JobBusyError, JobError
from core.train.progress import RunProgress, latest_run, read_progress
from core.train.samples import by_label, samples
from demo.errors import user_error

log = logging.getLogger(__name__)

TASKS = {"Chat (SFT)": "sft", "Classification": "classification"}
DEFAULTS = TASK_DEFAULTS
PREVIEW_ROWS = 20


def parse_columns(text: str) -> dict[str, str]:
    """'text=body, label=tag' -> {'text': 'body', 'label': 'tag'}; a clear error for anything else."""
    mapping: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        role, sep, column = part.partition("=")
        if not sep or not role.strip() or not column.strip():
            raise ConfigError(f"Column mapping {part.strip()!r} must look like role=column, e.g. text=body.")
        mapping[role.strip()] = column.strip()
    return mapping


def preview_frame(path: str) -> pd.DataFrame:
    """The first rows of a data file as read by core.data (so the preview shows what training will see)."""
    table = read_table(path)
    rows = [
        {k: (v if isinstance(v, str | int | float) or v is None else str(v)) for k, v in r.items()}
        for r in table.rows[:PREVIEW_ROWS]
    ]
    return pd.DataFrame(rows, columns=table.columns)


def progress_html(p: RunProgress | None) -> str:
    """A real progress bar (Gradio has none outside a running event)."""
    if p is None:
        return ""
    pct = round(100 * p.fraction)
    return (
        f'<div id="df-train-progress" data-step="{p.step}" data-total="{p.total_steps or 0}">'
        f'<progress max="100" value="{pct}" style="width:100%;height:1.2rem"></progress>'
        f'<div style="font-size:0.85rem">{pct}%</div></div>'
    )


def build_finetune_tab(engine: Engine) -> dict[str, gr.components.Component]:
    """Build the Fine-tune tab inside the current Blocks context; returns its components."""
    data_path = gr.State(None)
    run_id = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            task = gr.Radio(list(TASKS), value="Chat (SFT)", label="Task", elem_id="df-ft-task")
            base = gr.Textbox(
                value="default",
                label="Base model",
                elem_id="df-ft-base",
                info="default = embedded SmolLM2 (chat) or MiniLM (classification); or a folder / Hub id",
            )
            sample = gr.Dropdown(
                choices=[s.label for s in samples()], value=None, label="Sample dataset", elem_id="df-ft-sample"
            )
            upload = gr.File(
                label="…or upload CSV / TSV / JSON / JSONL",
                type="filepath",
                elem_id="df-ft-upload",
                file_types=[".csv", ".tsv", ".json", ".jsonl"],
            )
            columns = gr.Textbox(
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
                info="Steps are planned to finish within this time (0 = no limit, train the epochs); "
                "the best checkpoint is kept.",
            )
            with gr.Accordion("Advanced settings", open=False):
                first = DEFAULTS["sft"]
                epochs = gr.Number(value=first["epochs"], label="Epochs (upper bound)", minimum=0.1)
                lr = gr.Number(value=first["lr"], label="Learning rate")
                max_length = gr.Slider(32, 2048, value=first["max_length"], step=32, label="Max length (tokens)")
                batch_size = gr.Slider(
                    1,
                    64,
                    value=first["batch_size"],
                    step=1,
                    label="Batch size (packed rows for chat, texts for classification)",
                )
                grad_accum = gr.Slider(1, 32, value=1, step=1, label="Gradient accumulation")
                lora_r = gr.Slider(1, 128, value=16, step=1, label="LoRA rank r")
                lora_alpha = gr.Slider(1, 256, value=32, step=1, label="LoRA alpha")
                lora_dropout = gr.Slider(0.0, 0.5, value=0.05, step=0.01, label="LoRA dropout")
                eval_fraction = gr.Slider(0.0, 0.45, value=0.1, step=0.05, label="Eval fraction")
                scheduler = gr.Radio(["cosine", "linear"], value="cosine", label="Schedule")
                seed = gr.Number(value=42, precision=0, label="Seed")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="df-ft-start")
                stop = gr.Button("Stop", variant="stop", elem_id="df-ft-stop")
        with gr.Column(scale=2):
            report = gr.Markdown(
                "Pick a sample dataset or upload a file to see its validation report.", elem_id="df-ft-report"
            )
            preview = gr.Dataframe(
                label="Preview", interactive=False, max_height=240, wrap=True, elem_id="df-ft-preview"
            )
            headline = gr.Markdown("", elem_id="df-ft-headline")
            bar = gr.HTML("", elem_id="df-ft-bar")
            plot = gr.LinePlot(
                x="step",
                y="value",
                color="series",
                title="Loss",
                height=260,
                x_title="step",
                y_title="loss",
                elem_id="df-ft-plot",
            )
            log_tail = gr.Textbox(label="Log", lines=6, max_lines=12, interactive=False, elem_id="df-ft-log")
            with gr.Row():
                runs = gr.Dropdown(
                    label="Stopped runs", choices=[], elem_id="df-ft-runs", scale=3, allow_custom_value=True
                )
                resume = gr.Button("Resume selected run", elem_id="df-ft-resume", scale=1)
    timer = gr.Timer(1.0)

    advanced = [
        epochs,
        lr,
        max_length,
        batch_size,
        grad_accum,
        lora_r,
        lora_alpha,
        lora_dropout,
        eval_fraction,
        scheduler,
        seed,
    ]

    def validate(task_label: str, base_model: str, column_text: str, path: str | None, length: float):
        """Run the same validation a training run would; show the report or the reason the file is refused."""
        if not path:
            return "Pick a sample dataset or upload a file to see its validation report.", None
        try:
            loaded = engine.validate_data(
                path, TASKS[task_label], base_model.strip() or "default", parse_columns(column_text), int(length)
            )
            return loaded.report.to_markdown(), preview_frame(path)
        except (DataError, ConfigError) as exc:
            return f"### ❌ This file cannot be used\n\n{exc}", None
        except Exception as exc:
            raise user_error(exc, "validating the data") from exc

    def pick_sample(label: str | None):
        if not label:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        s = by_label(label)
        task_label = next(k for k, v in TASKS.items() if v == s.task)
        return str(s.path), task_label, s.adapter_name, None

    def upload_data(path: str | None, task_label: str, base_model: str, column_text: str, length: float):
        """Keep the uploaded file for this session and validate it (also the scripting entry for uploads)."""
        if not path:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        text, frame = validate(task_label, base_model, column_text, path, length)
        return path, None, text, frame

    validate_in = [task, base, columns, data_path, max_length]
    sample.input(pick_sample, [sample], [data_path, task, name, upload], queue=False, api_name="pick_sample").then(
        validate, validate_in, [report, preview], api_visibility="private"
    )
    upload.upload(
        upload_data,
        [upload, task, base, columns, max_length],
        [data_path, sample, report, preview],
        api_name="upload_data",
    )

    def task_defaults(task_label: str):
        d = DEFAULTS[TASKS[task_label]]
        return d["epochs"], d["lr"], d["max_length"], d["batch_size"]

    task.change(task_defaults, [task], [epochs, lr, max_length, batch_size], queue=False, api_visibility="private")
    for comp in (task, columns):
        comp.change(validate, validate_in, [report, preview], api_visibility="private")

    def start_run(
        path: str | None,
        task_label: str,
        base_model: str,
        column_text: str,
        adapter: str,
        minutes: float,
        ep: float,
        rate: float,
        length: float,
        bs: float,
        ga: float,
        r: float,
        alpha: float,
        dropout: float,
        frac: float,
        sched: str,
        sd: float,
    ):
        """Start a run on this session's data file (picked sample or upload) with the widgets' settings."""
        if not path:
            raise gr.Error("Pick a sample dataset or upload a file first.", duration=6)
        try:
            config = TrainConfig(
                data_path=str(path),
                adapter_name=adapter,
                task=TASKS[task_label],
                base_model=base_model.strip() or "default",
                columns=parse_columns(column_text),
                time_budget_minutes=float(minutes) if minutes else None,
                epochs=float(ep),
                lr=float(rate),
                max_length=int(length),
                batch_size=int(bs),
                grad_accum=int(ga),
                eval_fraction=float(frac),
                scheduler=sched,
                seed=int(sd),
                lora=LoraSettings(r=int(r), alpha=int(alpha), dropout=float(dropout)),
            )
            rid = engine.jobs.start(config)
        except JobBusyError as exc:
            raise gr.Error(f"A run is in progress: {exc} Stop it, or wait for it to finish.", duration=8) from exc
        except (ConfigError, ValueError) as exc:
            raise gr.Error(str(exc), duration=8) from exc
        return rid, f"⏳ **starting** run `{rid}`…"

    start.click(
        start_run,
        [data_path, task, base, columns, name, budget, *advanced],
        [run_id, headline],
        api_name="start_training",
        concurrency_limit=None,
    )

    def stop_run(rid: str | None) -> str:
        """Stop this page's run, or the live run when the page has none (e.g. a script, or a reopened tab)."""
        active = engine.jobs.active()
        rid = rid or (active.run_id if active else None)
        if not rid:
            raise gr.Error("No run is in progress.", duration=5)
        engine.jobs.stop(rid, wait=False)
        return "⏸ Stopping: the run saves a checkpoint at the end of its current step…"

    stop.click(stop_run, [run_id], [headline], api_name="stop_training", concurrency_limit=None)

    def resume_run(rid: str | None) -> tuple[str, str]:
        if not rid:
            raise gr.Error("Pick a stopped run to resume.", duration=5)
        try:
            return engine.jobs.resume(rid), f"⏳ **resuming** run `{rid}`…"
        except (JobBusyError, JobError) as exc:
            raise gr.Error(str(exc), duration=8) from exc

    resume.click(resume_run, [runs], [run_id, headline], api_name="resume_training", concurrency_limit=None)

    def refresh(rid: str | None):
        """Timer tick: rebuild the run's view from its folder, so a reopened page (or a second browser) shows the
        same thing; with no run on this page yet, attach to a live one if there is one."""
        if not rid:
            active = engine.jobs.active()
            if active is None:
                return (gr.skip(),) * 6
            rid = active.run_id
        p = read_progress(engine.jobs, rid)
        frame = pd.DataFrame(p.loss_points or [], columns=["step", "value", "series"])
        head = p.headline()
        if p.status in ("finished", "time_budget") and p.adapter_name:
            head += f"\n\nAdapter **{p.adapter_name}** is ready: pick it in the Chat or Classify tab."
        elif p.error:
            head += f"\n\n{p.error}"
        return rid, head, progress_html(p), frame, p.log_tail, p.status

    run_status_box = gr.Textbox(visible=False, elem_id="df-ft-status")
    timer.tick(
        refresh,
        [run_id],
        [run_id, headline, bar, plot, log_tail, run_status_box],
        queue=False,
        show_progress="hidden",
        api_visibility="private",
    )

    def runs_update():
        choices = [r.run_id for r in engine.jobs.list_runs() if r.status == "stopped"]
        return gr.update(choices=choices)

    runs.focus(runs_update, None, [runs], queue=False, api_visibility="private")

    def training_status(run_id: str = "") -> dict[str, Any]:
        """Scripting endpoint: a run's progress as plain JSON (the live or newest run when ``run_id`` is empty)."""
        rid = run_id or latest_run(engine.jobs)
        if rid is None:
            return {"run_id": None, "status": "none"}
        p = read_progress(engine.jobs, rid)
        return {
            "run_id": p.run_id,
            "status": p.status,
            "step": p.step,
            "total_steps": p.total_steps,
            "eta_s": p.eta_s,
            "tokens_per_s": p.tokens_per_s,
            "adapter_name": p.adapter_name,
            "error": p.error,
            "metrics": p.metrics,
            "loss_points": p.loss_points,
        }

    gr.api(training_status, api_name="training_status")
    return {
        "task": task,
        "base": base,
        "sample": sample,
        "upload": upload,
        "columns": columns,
        "name": name,
        "budget": budget,
        "start": start,
        "stop": stop,
        "report": report,
        "preview": preview,
        "headline": headline,
        "bar": bar,
        "plot": plot,
        "log": log_tail,
        "runs": runs,
        "resume": resume,
        "timer": timer,
        "run_id": run_id,
        "data_path": data_path,
        "run_status": run_status_box,
    }
