"""A training run's progress as plain values for the UI: loss curves, step/total, ETA, speed, log tail."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core import store
from core.train.jobs import JobManager, RunInfo


@dataclass
class RunProgress:
    """Everything the Fine-tune tab shows about one run, rebuilt from its folder on every refresh."""

    run_id: str
    status: str
    """starting | running | finished | stopped | time_budget | failed"""
    adapter_name: str | None = None
    task: str | None = None
    step: int = 0
    total_steps: int | None = None
    eta_s: float | None = None
    tokens_per_s: float | None = None
    elapsed_s: float | None = None
    loss_points: list[dict[str, Any]] = field(default_factory=list)
    """Rows of {'step', 'value', 'series'} with series 'train loss' or 'eval loss' (for a LinePlot)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """The latest eval metrics."""
    error: str | None = None
    adapter_dir: str | None = None
    log_tail: str = ""

    @property
    def fraction(self) -> float:
        """0..1 progress; 1 once the run ended, whatever the step."""
        if self.status in ("finished", "time_budget"):
            return 1.0
        if not self.total_steps:
            return 0.0
        return min(1.0, self.step / self.total_steps)

    @property
    def alive(self) -> bool:
        return self.status in ("starting", "running")

    def headline(self) -> str:
        """One Markdown line: status, step/total, ETA, speed."""
        icon = {"finished": "✅", "time_budget": "✅", "stopped": "⏸", "failed": "❌"}.get(self.status, "⏳")
        parts = [f"{icon} **{self.status.replace('_', ' ')}**", f"run `{self.run_id}`"]
        if self.total_steps:
            parts.append(f"step {self.step}/{self.total_steps}")
        if self.alive and self.eta_s is not None:
            parts.append(f"ETA {_duration(self.eta_s)}")
        if self.tokens_per_s:
            parts.append(f"{self.tokens_per_s:,.0f} tokens/s")
        if self.elapsed_s is not None:
            parts.append(f"elapsed {_duration(self.elapsed_s)}")
        return " · ".join(parts)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def read_progress(jobs: JobManager, run_id: str, log_lines: int = 12) -> RunProgress:
    """Rebuild a run's progress from ``events.jsonl``, the job status and the log tail."""
    info: RunInfo = jobs.status(run_id)
    events, _ = jobs.read_events(run_id)
    progress = RunProgress(
        run_id=run_id,
        status=info.status,
        adapter_name=info.adapter_name,
        task=info.task,
        step=info.step,
        total_steps=info.total_steps,
        error=info.error,
        adapter_dir=info.adapter_dir,
        metrics=dict(info.metrics),
    )
    for e in events:
        kind = e.get("type")
        if kind == "step":
            progress.loss_points.append({"step": e["step"], "value": e["loss"], "series": "train loss"})
            progress.eta_s, progress.tokens_per_s = e.get("eta_s"), e.get("tokens_per_s")
            progress.elapsed_s = e.get("elapsed_s")
        elif kind == "eval":
            metrics = e.get("metrics") or {}
            progress.metrics.update(metrics)
            if metrics.get("eval_loss") is not None:
                progress.loss_points.append({"step": e["step"], "value": metrics["eval_loss"], "series": "eval loss"})
        elif kind == "start" and e.get("resumed"):
            progress.loss_points = [p for p in progress.loss_points if p["step"] <= e.get("step", 0)]
    log = info.run_dir / "train.log"
    if log.is_file():
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-log_lines:])
        progress.log_tail = store.redact_paths(tail, jobs.home)  # a traceback names server paths; visitors see it
    return progress


def latest_run(jobs: JobManager) -> str | None:
    """The run to show when a page opens: the live one, else the newest."""
    active = jobs.active()
    if active is not None:
        return active.run_id
    runs = sorted((d.name for d in jobs.runs_dir.iterdir() if (d / "config.yaml").is_file()), reverse=True)
    return runs[0] if runs else None
