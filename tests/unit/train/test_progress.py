"""A run's progress from its events: resumes that replay steps, incremental reading, the final phases."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.train.jobs import JobManager
from core.train.progress import ProgressCache, read_progress
from demo.render import run_headline
from tests.toy_data import write_sft

RUN_ID = "20260101-000000-toy"


def _write(run_dir: Path, events: list[dict], mode: str = "a") -> None:
    with open(run_dir / "events.jsonl", mode, encoding="utf-8") as fh:
        fh.writelines(json.dumps(e) + "\n" for e in events)


def _steps(lo: int, hi: int, total: int = 10) -> list[dict]:
    return [
        {"type": "step", "step": s, "total_steps": total, "loss": 1.0 / s, "eta_s": 10.0 - s, "elapsed_s": s}
        for s in range(lo, hi + 1)
    ]


@pytest.fixture
def jobs(tmp_path: Path, demoforge_home: Path) -> JobManager:
    from tests.toy_data import sft_cfg

    jm = JobManager(runs_dir=tmp_path / "runs")
    run_dir = jm.runs_dir / RUN_ID
    run_dir.mkdir()
    cfg = sft_cfg({"llama": tmp_path}, write_sft(tmp_path / "d.jsonl"))
    cfg.to_yaml(run_dir / "config.yaml")
    return jm


@pytest.fixture
def live_worker(jobs: JobManager) -> Iterator[subprocess.Popen]:
    """A process the job manager takes for this run's live worker (its command line names core.train and the run)."""
    run_dir = jobs.runs_dir / RUN_ID
    code = "import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, "core.train", str(run_dir)])
    (run_dir / "worker.json").write_text(json.dumps({"pid": proc.pid, "pgid": proc.pid}))
    yield proc
    proc.kill()
    proc.wait()


def test_resume_from_a_periodic_checkpoint_draws_each_step_once(jobs: JobManager) -> None:
    """The worker checkpointed at step 4, ran on to step 6 (an eval at 5), crashed, and resumed from step 4."""
    run_dir = jobs.runs_dir / RUN_ID
    _write(run_dir, [{"type": "start", "total_steps": 10, "resumed_from_step": None}, *_steps(1, 4)])
    _write(run_dir, [{"type": "checkpoint", "step": 4, "reason": "periodic"}, *_steps(5, 6)])
    _write(run_dir, [{"type": "eval", "step": 5, "metrics": {"eval_loss": 0.9}}])
    _write(run_dir, [{"type": "start", "total_steps": 10, "resumed_from_step": 4}, *_steps(5, 10)])
    _write(run_dir, [{"type": "eval", "step": 10, "metrics": {"eval_loss": 0.5}}])
    _write(run_dir, [{"type": "end", "status": "finished", "step": 10, "total_steps": 10}])
    for cache in (None, ProgressCache()):
        progress = read_progress(jobs, RUN_ID, cache=cache)
        train = [p["step"] for p in progress.loss_points if p["series"] == "train loss"]
        evals = [(p["step"], p["value"]) for p in progress.loss_points if p["series"] == "eval loss"]
        assert train == list(range(1, 11)) and evals == [(10, 0.5)]
        assert progress.status == "finished" and progress.phase is None


def test_cached_reader_parses_only_new_lines_and_matches_a_full_read(
    jobs: JobManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = jobs.runs_dir / RUN_ID
    offsets: list[int] = []
    read_events = jobs.read_events

    def spy(run_id: str, since_offset: int = 0) -> tuple[list[dict], int]:
        offsets.append(since_offset)
        return read_events(run_id, since_offset)

    monkeypatch.setattr(jobs, "read_events", spy)
    cache = ProgressCache()
    _write(run_dir, [{"type": "start", "total_steps": 10, "resumed_from_step": None}, *_steps(1, 3)])
    first = read_progress(jobs, RUN_ID, cache=cache)
    size = (run_dir / "events.jsonl").stat().st_size
    _write(run_dir, _steps(4, 5))
    offsets.clear()
    second = read_progress(jobs, RUN_ID, cache=cache)
    assert offsets == [size]  # the progress reader reads on from where it stopped; status() keeps its own scan
    assert [p["step"] for p in first.loss_points] == [1, 2, 3]  # the first page's list was not extended later
    assert second.loss_points == read_progress(jobs, RUN_ID).loss_points
    assert [p["step"] for p in second.loss_points] == [1, 2, 3, 4, 5] and second.eta_s == 5.0
    _write(run_dir, [{"type": "start", "total_steps": 4, "resumed_from_step": None}, *_steps(1, 2, 4)], mode="w")
    replaced = read_progress(jobs, RUN_ID, cache=cache)  # a shorter file is read from its start
    assert [p["step"] for p in replaced.loss_points] == [1, 2]


def test_final_phases_show_while_the_worker_lives_and_clear_at_the_end(
    jobs: JobManager, live_worker: subprocess.Popen
) -> None:
    run_dir = jobs.runs_dir / RUN_ID
    cache = ProgressCache()
    _write(run_dir, [{"type": "start", "total_steps": 10, "resumed_from_step": None}, *_steps(1, 10)])
    progress = read_progress(jobs, RUN_ID, cache=cache)
    assert progress.status == "running" and progress.phase is None and progress.eta_s == 0.0
    _write(run_dir, [{"type": "phase", "phase": "final_eval", "step": 10, "eta_s": 7.5, "elapsed_s": 11}])
    progress = read_progress(jobs, RUN_ID, cache=cache)
    assert progress.phase == "final_eval" and progress.eta_s == 7.5
    assert "final evaluation" in run_headline(progress)  # the UI shows the phase, not a frozen ETA
    _write(run_dir, [{"type": "phase", "phase": "saving", "step": 10, "eta_s": 2.0, "elapsed_s": 17}])
    assert read_progress(jobs, RUN_ID, cache=cache).phase == "saving"
    _write(run_dir, [{"type": "end", "status": "finished", "step": 10, "total_steps": 10}])
    live_worker.kill()
    live_worker.wait()
    progress = read_progress(jobs, RUN_ID, cache=cache)
    assert progress.status == "finished" and progress.phase is None and progress.fraction == 1.0
