"""Training as the UI uses it: samples, validation, start/stop/resume, and a run's progress.

The engine owns one :class:`Training`; the Fine-tune and Classify tabs reach runs only through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from core.config import TrainConfig
from core.data import MIB, LoadedData, RawTable, read_table
from core.train.jobs import JobManager, RunInfo
from core.train.progress import ProgressCache, RunProgress, latest_run, read_progress
from core.train.samples import Sample, by_label, samples


class Training:
    """Start, follow and stop LoRA runs; validate data exactly as a run would."""

    def __init__(self, jobs: Callable[[], JobManager], validate: Callable[..., LoadedData], max_bytes: int) -> None:
        """Args:
        jobs: returns the engine's job manager (created lazily).
        validate: ``Engine.validate_data`` (tokenises with the run's tokenizer).
        max_bytes: the upload limit (a whole number of MiB), applied to previews, to the check at start and to
            the worker's reading of the file (through ``TrainConfig.max_data_mb``).
        """
        self._jobs, self._validate, self.max_bytes = jobs, validate, max_bytes
        # Pages refresh a run twice a second: each run's events are read on from where the last refresh stopped.
        self._progress = ProgressCache()

    @property
    def jobs(self) -> JobManager:
        return self._jobs()

    # --- data ---------------------------------------------------------------------------------------------------

    @staticmethod
    def samples(task: str | None = None) -> list[Sample]:
        """The bundled sample datasets (optionally for one task)."""
        return samples(task)

    @staticmethod
    def sample(label: str) -> Sample:
        """The bundled sample shown as ``label``."""
        return by_label(label)

    def validate(
        self,
        path: str,
        task: str,
        base_model: str = "default",
        columns: dict[str, str] | None = None,
        max_length: int = 256,
    ) -> LoadedData:
        """Read, validate and tokenise a file as a run would; raises DataError with the reason."""
        return self._validate(path, task, base_model, columns, max_length)

    def table(self, path: str) -> RawTable:
        """The rows of a data file as core.data reads them (for a preview)."""
        return read_table(path, max_bytes=self.max_bytes)

    # --- runs ---------------------------------------------------------------------------------------------------

    def check_name(self, adapter_name: str) -> str:
        """The folder name a new adapter called ``adapter_name`` gets (AdapterError when taken or too long)."""
        from core import adapters

        return adapters.new_adapter_name(adapter_name, self.jobs.home)

    def start(self, config: TrainConfig) -> str:
        """Check everything a worker would trip over, then start the run in a worker process; returns its id.

        Refused before any process starts: another live run, a taken or unusable adapter name, and data the
        upload report refused (the same DataError text), read with the server's size limit.

        Raises:
            JobBusyError, AdapterError, DataError: with the message for the user.
        """
        limit_mb = max(1, self.max_bytes // MIB)
        config = dataclasses.replace(config, max_data_mb=min(config.max_data_mb or limit_mb, limit_mb))
        self.jobs.check_can_start(config)
        self.validate(config.data_path, config.task, config.base_model, config.columns or None, config.max_length)
        if config.eval_path:
            read_table(config.eval_path, max_bytes=self.max_bytes)
        return self.jobs.start(config)

    def stop(self, run_id: str | None = None) -> RunInfo | None:
        """Ask a run (default: the live one) to stop; returns its state, or None when nothing runs."""
        active = self.jobs.active()
        rid = run_id or (active.run_id if active else None)
        return self.jobs.stop(rid, wait=False) if rid else None

    def resume(self, run_id: str) -> str:
        """Continue a stopped run from its checkpoint."""
        return self.jobs.resume(run_id)

    def active(self) -> RunInfo | None:
        """The run whose worker is alive, if any."""
        return self.jobs.active()

    def runs(self) -> list[RunInfo]:
        """All runs, newest first."""
        return self.jobs.list_runs()

    def progress(self, run_id: str) -> RunProgress:
        """A run's progress as plain values (loss points, step/total, ETA, log tail)."""
        return read_progress(self.jobs, run_id, cache=self._progress)

    def latest(self) -> str | None:
        """The run a page shows when it opens: the live one, else the newest."""
        return latest_run(self.jobs)

    def status_json(self, run_id: str = "") -> dict[str, Any]:
        """A run's progress as plain JSON (the live or newest run when ``run_id`` is empty)."""
        rid = run_id or self.latest()
        if rid is None:
            return {"run_id": None, "status": "none"}
        p = self.progress(rid)
        return {
            "run_id": p.run_id,
            "status": p.status,
            "phase": p.phase,
            "step": p.step,
            "total_steps": p.total_steps,
            "eta_s": p.eta_s,
            "tokens_per_s": p.tokens_per_s,
            "adapter_name": p.adapter_name,
            "error": p.error,
            "metrics": p.metrics,
            "loss_points": p.loss_points,
        }
