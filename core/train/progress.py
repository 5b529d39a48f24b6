"""A training run's progress as plain values for the UI: loss curves, step/total, ETA, speed, log tail."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
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
    phase: str | None = None
    """'final_eval' or 'saving' while a run evaluates and saves after its last step; None otherwise."""

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


class ProgressReader:
    """Follows one run's ``events.jsonl`` from where it last stopped: each refresh parses only the new lines.

    Thread-safe: several open pages may refresh the same run at once.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.offset = 0
        """Bytes of ``events.jsonl`` already read."""
        self.loss_points: list[dict[str, Any]] = []
        self.eval_metrics: dict[str, Any] = {}
        self.eta_s: float | None = None
        self.tokens_per_s: float | None = None
        self.elapsed_s: float | None = None
        self.phase: str | None = None

    def update(self, jobs: JobManager, events_path: Path | None = None) -> None:
        """Read the lines appended since the last call (from the start again if the file was replaced)."""
        with self._lock:
            if events_path is not None and events_path.is_file() and events_path.stat().st_size < self.offset:
                self._reset()  # a shorter file is a new file: start over
            events, self.offset = jobs.read_events(self.run_id, self.offset)
            for e in events:
                self._apply(e)

    def _apply(self, e: dict[str, Any]) -> None:
        kind = e.get("type")
        if kind == "step":
            self.loss_points.append({"step": e["step"], "value": e["loss"], "series": "train loss"})
            self.eta_s, self.tokens_per_s = e.get("eta_s"), e.get("tokens_per_s")
            self.elapsed_s = e.get("elapsed_s")
        elif kind == "eval":
            metrics = e.get("metrics") or {}
            self.eval_metrics.update(metrics)
            if metrics.get("eval_loss") is not None:
                self.loss_points.append({"step": e["step"], "value": metrics["eval_loss"], "series": "eval loss"})
        elif kind == "phase":
            self.phase, self.eta_s = e.get("phase"), e.get("eta_s", self.eta_s)
            self.elapsed_s = e.get("elapsed_s", self.elapsed_s)
        elif kind == "start":
            self.phase = None
            resumed = e.get("resumed_from_step")
            if resumed is not None:
                # steps after the checkpoint run again: their first points (a periodic checkpoint, then a crash)
                # would otherwise appear twice on the curve
                self.loss_points = [p for p in self.loss_points if p["step"] <= resumed]
        elif kind == "end":
            self.phase = None

    def fill(self, progress: RunProgress) -> None:
        """Copy what the events said into ``progress`` (copies: a page never shares a list with the reader)."""
        with self._lock:
            progress.loss_points = [dict(p) for p in self.loss_points]
            progress.metrics.update(self.eval_metrics)
            progress.eta_s, progress.tokens_per_s = self.eta_s, self.tokens_per_s
            progress.elapsed_s = self.elapsed_s
            progress.phase = self.phase if progress.alive else None


class ProgressCache:
    """One :class:`ProgressReader` per run, for a server that refreshes pages twice a second (keeps the newest)."""

    def __init__(self, max_runs: int = 8) -> None:
        self.max_runs = max_runs
        self._readers: dict[str, ProgressReader] = {}
        self._lock = threading.Lock()

    def reader(self, run_id: str) -> ProgressReader:
        with self._lock:
            found = self._readers.pop(run_id, None) or ProgressReader(run_id)
            self._readers[run_id] = found  # most recently used last
            while len(self._readers) > self.max_runs:
                self._readers.pop(next(iter(self._readers)))
            return found


def read_progress(
    jobs: JobManager, run_id: str, log_lines: int = 12, cache: ProgressCache | None = None
) -> RunProgress:
    """A run's progress from ``events.jsonl``, the job status and the log tail.

    With a ``cache``, the run's events are read from where the previous call stopped; without, from the start.
    """
    info: RunInfo = jobs.status(run_id)
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
    reader = cache.reader(run_id) if cache is not None else ProgressReader(run_id)
    reader.update(jobs, info.run_dir / "events.jsonl")
    reader.fill(progress)
    # A traceback names server paths; visitors may see the tail, so paths are shown relative to the home.
    progress.log_tail = store.redact_paths(_tail_lines(info.run_dir / "train.log", log_lines), jobs.home)
    return progress


def _tail_lines(path: Path, n: int, max_bytes: int = 16_384) -> str:
    """The last ``n`` lines of a log, reading at most its last ``max_bytes``."""
    if not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - max_bytes))
        text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-n:])


def latest_run(jobs: JobManager) -> str | None:
    """The run to show when a page opens: the live one, else the newest."""
    active = jobs.active()
    if active is not None:
        return active.run_id
    runs = sorted((d.name for d in jobs.runs_dir.iterdir() if (d / "config.yaml").is_file()), reverse=True)
    return runs[0] if runs else None
