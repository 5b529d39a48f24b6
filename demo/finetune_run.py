"""The Fine-tune tab's handlers: typed module-level functions over the engine's training door.

Each takes the engine first (bound with ``functools.partial`` when the tab is built) and plain widget values; the
run settings arrive as one :class:`TrainSettings`, built from keyword widget values, not as 17 positional arguments.
Errors reach the visitor through :mod:`demo.errors`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import gradio as gr

from core import zerogpu
from core.config import TASK_DEFAULTS, ConfigError, LoraSettings, TrainConfig
from core.errors import DataError
from demo import render
from demo.errors import shows_errors, to_gr_error

if TYPE_CHECKING:
    from core.engine import Engine

TASKS = {"Chat (SFT)": "sft", "Classification": "classification"}
"""Task radio label -> TrainConfig.task."""
NO_DATA = "Pick a sample dataset or upload a file to see its validation report."
PREVIEW_ROWS = 20
READY_HINT = "pick it in the Chat or Classify tab."


def parse_columns(text: str | None) -> dict[str, str]:
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


def task_key(label: str) -> str:
    """The TrainConfig task of a task radio label (or of a task key itself)."""
    if label in TASKS.values():
        return label
    if label not in TASKS:
        raise ConfigError(f"Unknown task {label!r}; use one of: {', '.join(TASKS)}.")
    return TASKS[label]


@dataclass
class TrainSettings:
    """The run settings as the tab's widgets (and the /start_training API) give them; field names are the API's
    parameter names."""

    task: str = "Chat (SFT)"
    base_model: str = "default"
    columns: str = ""
    """Column mapping text, e.g. ``prompt=question, response=answer``."""
    adapter_name: str = "my-adapter"
    time_budget_minutes: float = 3.0
    """0 = no limit: train the epochs."""
    epochs: float = float(TASK_DEFAULTS["sft"]["epochs"])
    lr: float = float(TASK_DEFAULTS["sft"]["lr"])
    max_length: int = int(TASK_DEFAULTS["sft"]["max_length"])
    batch_size: int = int(TASK_DEFAULTS["sft"]["batch_size"])
    grad_accum: int = 1
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = LoraSettings().dropout
    eval_fraction: float = 0.1
    scheduler: Literal["cosine", "linear"] = "cosine"
    seed: int = 42

    @classmethod
    def from_widgets(cls, **values: Any) -> TrainSettings:
        """Settings from widget values (numbers arrive as floats, blanks as None); unknown names are refused."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(fields)
        if unknown:
            raise ConfigError(f"Unknown training setting(s): {', '.join(sorted(unknown))}.")
        out: dict[str, Any] = {}
        for name, value in values.items():
            default = fields[name].default
            if value is None or value == "":
                out[name] = default
            elif isinstance(default, bool | str):
                out[name] = str(value).strip()
            elif isinstance(default, int):
                out[name] = int(round(float(value)))
            else:
                out[name] = float(value)
        return cls(**out)

    def to_config(self, data_path: str) -> TrainConfig:
        """The run's TrainConfig (its checks say what is wrong with a value)."""
        return TrainConfig(
            data_path=str(data_path),
            adapter_name=self.adapter_name,
            task=task_key(self.task),  # type: ignore[arg-type]
            base_model=self.base_model.strip() or "default",
            columns=parse_columns(self.columns),
            time_budget_minutes=self.time_budget_minutes or None,
            epochs=self.epochs,
            lr=self.lr,
            max_length=self.max_length,
            batch_size=self.batch_size,
            grad_accum=self.grad_accum,
            eval_fraction=self.eval_fraction,
            scheduler=self.scheduler,
            seed=self.seed,
            lora=LoraSettings(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout),
        )


# --- data -----------------------------------------------------------------------------------------------------------


def validate_data(
    engine: Engine, task: str, base_model: str, columns: str, path: str | None, max_length: float
) -> tuple[str, str, str | None]:
    """Validate a file as a run would: (report Markdown, preview HTML, the reason it is refused or None)."""
    if not path:
        return NO_DATA, "", None
    try:
        loaded = engine.training.validate(
            path, task_key(task), (base_model or "").strip() or "default", parse_columns(columns), int(max_length)
        )
        table = engine.training.table(path)
    except (DataError, ConfigError) as exc:
        return render.refused_markdown(str(exc), engine.home), "", str(exc)
    except Exception as exc:
        raise to_gr_error(exc, "validating the data") from exc
    return (
        render.data_report_markdown(loaded.report),
        render.preview_html(table.rows, table.columns, PREVIEW_ROWS),
        None,
    )


@shows_errors("listing the sample datasets")
def sample_choices(engine: Engine) -> dict[str, Any]:
    """The sample picker's choices (filled when a page loads: the samples are the engine's to list)."""
    return gr.update(choices=[s.label for s in engine.training.samples()])


@shows_errors("picking the sample")
def pick_sample(engine: Engine, label: str | None) -> tuple[Any, Any, Any, Any]:
    """A bundled sample: its path for this session, its task and a suggested adapter name; clears the upload."""
    if not label:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    try:
        sample = engine.training.sample(label)
    except KeyError:
        names = ", ".join(s.label for s in engine.training.samples())
        raise gr.Error(f"No sample dataset named {label!r}; the samples are: {names}.", duration=8) from None
    task_label = next(k for k, v in TASKS.items() if v == sample.task)
    return str(sample.path), task_label, sample.adapter_name, None


@shows_errors("reading the upload")
def upload_data(
    engine: Engine, path: str | None, task: str, base_model: str, columns: str, max_length: float
) -> tuple[Any, Any, str, str, str | None]:
    """Keep the uploaded file for this session and validate it (also the scripting entry for uploads)."""
    if not path:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    report, preview, refused = validate_data(engine, task, base_model, columns, path, max_length)
    return path, None, report, preview, refused


@shows_errors("switching the task")
def task_defaults(task: str) -> tuple[float, float, int, int]:
    """The per-task defaults (core.config.TASK_DEFAULTS) for epochs, lr, max_length and batch size."""
    d = TASK_DEFAULTS[task_key(task)]
    return d["epochs"], d["lr"], d["max_length"], d["batch_size"]


# --- runs -----------------------------------------------------------------------------------------------------------


@shows_errors("starting the run")
def start_training(engine: Engine, data_path: str | None, refused: str | None, **widgets: Any) -> tuple[str, str]:
    """Start a run on this session's data file (picked sample or upload) with the widgets' settings."""
    zerogpu.refuse_training()  # before the data checks: on ZeroGPU no data makes a run possible
    if not data_path:
        raise gr.Error("Pick a sample dataset or upload a file first.", duration=6)
    if refused:
        raise gr.Error(
            f"This file cannot be used: {render.relative_paths(refused, engine.home)} Fix it (or the column mapping) "
            "and try again.",
            duration=10,
        )
    config = TrainSettings.from_widgets(**widgets).to_config(data_path)
    run_id = engine.training.start(config)
    started = render.run_status_html(engine.training.progress(run_id), engine.home)
    return run_id, started


@shows_errors("stopping the run")
def stop_training(engine: Engine) -> str:
    """Stop the live run (one runs at a time): it saves a checkpoint at the end of its current step."""
    if engine.training.stop() is None:
        raise gr.Error("No run is in progress.", duration=5)
    return '<div class="df-run-msg">Stopping: the run saves a checkpoint at the end of its current step…</div>'


@shows_errors("resuming the run")
def resume_training(engine: Engine, run_id: str | None) -> tuple[str, str]:
    """Continue a stopped run from its checkpoint."""
    zerogpu.refuse_training()
    if not run_id:
        raise gr.Error("Pick a stopped run to resume.", duration=5)
    rid = engine.training.resume(run_id)
    return rid, render.run_status_html(engine.training.progress(rid), engine.home)


@shows_errors("listing the runs")
def stopped_runs(engine: Engine) -> dict[str, Any]:
    """Choices for the resume picker: runs that stopped with a checkpoint."""
    return gr.update(choices=[r.run_id for r in engine.training.runs() if r.status == "stopped"])


def follow(engine: Engine, run_id: str | None, newest_seen: str | None) -> tuple[str | None, str | None]:
    """The run a page shows: the live one; else a run newer than any this page has seen (one started from the
    Classify tab or a script, even if it already ended); else the page's own. Returns (run, newest seen)."""
    active = engine.training.active()
    latest = active.run_id if active else engine.training.latest()
    if active is not None:
        run_id = active.run_id
    elif latest is not None and (run_id is None or newest_seen is None or latest > newest_seen):
        run_id = latest  # run ids start with their UTC start time, so they sort by age
    newest = max((x for x in (newest_seen, latest) if x), default=None)
    return run_id, newest


@shows_errors("following the run")
def refresh_run(engine: Engine, run_id: str | None, newest_seen: str | None, shown: str | None) -> tuple[Any, ...]:
    """Timer tick: rebuild the run's view from its folder, so a reopened page (or a second browser) shows the same
    thing. An ended run already on screen is not sent again."""
    rid, newest = follow(engine, run_id, newest_seen)
    if rid is None:
        return (gr.skip(),) * 7
    p = engine.training.progress(rid)
    key = f"{rid}|{p.status}|{p.step}|{len(p.loss_points)}"
    if not p.alive and key == shown:
        return rid, newest, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    log_tail = render.relative_paths(p.log_tail, engine.home)
    status = render.run_status_html(p, engine.home, READY_HINT)
    return rid, newest, key, status, render.loss_frame(p.loss_points), log_tail, p.status


def training_status(engine: Engine, run_id: str = "") -> dict[str, Any]:
    """A run's progress as plain JSON (the live or newest run when ``run_id`` is empty); paths made relative."""
    status = engine.training.status_json(run_id)
    if status.get("error"):
        status["error"] = render.relative_paths(status["error"], engine.home)
    if status.get("run_id"):
        status.setdefault("phase", render.run_phase(engine.training.progress(status["run_id"])))
    return status


def adapter_folder_name(adapter_dir: str | None, fallback: str | None) -> str | None:
    """The adapter's name in the library: its folder's name (the typed name, made safe) when known."""
    return Path(adapter_dir).name if adapter_dir else fallback
