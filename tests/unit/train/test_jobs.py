"""JobManager: worker processes that are refused when busy, found again after a restart, stopped, and reported
as crashed (never finished) when they die without an end event."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from core.train.jobs import JobBusyError, JobError, JobManager
from tests.toy_data import sft_cfg, write_sft


def wait_until(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def has_step(jm: JobManager, run_id: str, step: int = 1) -> bool:
    return any(e["type"] == "step" and e["step"] >= step for e in jm.read_events(run_id)[0])


@pytest.fixture
def jm(demoforge_home: Path, monkeypatch: pytest.MonkeyPatch) -> JobManager:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return JobManager(grace_s=30)


def test_busy_reattach_after_restart_and_stop(
    jm: JobManager, tiny_models: dict[str, Path], tmp_path: Path, demoforge_home: Path
) -> None:
    cfg = sft_cfg(tiny_models, write_sft(tmp_path / "d.jsonl"), max_steps=100_000, adapter_name="long run")
    run_id = jm.start(cfg)
    run_dir = demoforge_home / "runs" / run_id
    assert run_id.endswith("-long-run") and (run_dir / "config.yaml").is_file()
    assert json.loads((run_dir / "worker.json").read_text())["pid"] > 0
    with pytest.raises(JobBusyError, match="already in progress"):
        jm.start(cfg)
    wait_until(lambda: has_step(jm, run_id, 2))

    restarted = JobManager()  # a new server process knows nothing but the run folders
    found = restarted.active()
    assert found is not None and found.run_id == run_id and found.status == "running" and found.step >= 1
    with pytest.raises(JobBusyError):
        restarted.start(cfg)
    info = restarted.stop(run_id, grace_s=30)
    assert info.status == "stopped" and not info.crashed, info
    assert (run_dir / "checkpoint" / "position.json").is_file()
    assert restarted.active() is None
    # the original parent sees the exit once the kernel has torn the process down (its cmdline is already empty)
    assert jm.wait(run_id, 10) and jm.active() is None
    assert [r.run_id for r in restarted.list_runs()] == [run_id]


def test_sigkilled_worker_is_crashed_and_leaves_no_adapter(
    jm: JobManager, tiny_models: dict[str, Path], tmp_path: Path, demoforge_home: Path
) -> None:
    cfg = sft_cfg(tiny_models, write_sft(tmp_path / "d.jsonl"), max_steps=100_000, adapter_name="killed")
    run_id = jm.start(cfg)
    wait_until(lambda: has_step(jm, run_id, 2))
    pid = json.loads((demoforge_home / "runs" / run_id / "worker.json").read_text())["pid"]
    os.killpg(pid, signal.SIGKILL)
    assert jm.wait(run_id, 30)
    for manager in (jm, JobManager()):
        info = manager.status(run_id)
        assert info.status == "failed" and info.crashed and "without reporting an end" in (info.error or "")
    adapters = demoforge_home / "adapters"
    visible = [p.name for p in adapters.iterdir() if not p.name.startswith(".")] if adapters.exists() else []
    assert visible == [], "a killed run must not leave an adapter that looks finished"
    assert jm.active() is None  # a crashed run does not block the next one


def test_finished_run_and_incremental_events(
    jm: JobManager, tiny_models: dict[str, Path], tmp_path: Path, demoforge_home: Path
) -> None:
    run_id = jm.start(sft_cfg(tiny_models, write_sft(tmp_path / "d.jsonl"), max_steps=6, adapter_name="short"))
    seen, offset = [], 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        new, offset = jm.read_events(run_id, offset)
        seen += new
        if seen and seen[-1]["type"] == "end":
            break
        time.sleep(0.05)
    assert [e["type"] for e in seen][0] == "start" and seen[-1]["status"] == "finished"
    assert seen == jm.read_events(run_id)[0], "incremental reads see each event exactly once"
    assert jm.wait(run_id, 30)
    info = jm.status(run_id)
    assert info.status == "finished" and info.step == 6 and Path(info.adapter_dir or "").is_dir()
    with pytest.raises(JobError, match="no checkpoint"):
        jm.resume(run_id)


def test_partial_lines_and_recycled_pids(jm: JobManager, demoforge_home: Path) -> None:
    run_dir = demoforge_home / "runs" / "20260101-000000-fake"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("data_path: d.jsonl\nadapter_name: fake\n")
    (run_dir / "events.jsonl").write_text('{"type": "start", "total_steps": 5}\n{"type": "st')
    # the pid exists (this test process) but is not this run's worker: must not count as running
    (run_dir / "worker.json").write_text(json.dumps({"pid": os.getpid(), "pgid": os.getpid()}))
    events, offset = jm.read_events(run_dir.name)
    assert events == [{"type": "start", "total_steps": 5}]
    with open(run_dir / "events.jsonl", "a") as fh:
        fh.write('ep", "step": 1, "total_steps": 5}\n')
    more, _ = jm.read_events(run_dir.name, offset)
    assert more == [{"type": "step", "step": 1, "total_steps": 5}]
    assert jm.active() is None
    info = jm.status(run_dir.name)
    assert info.status == "failed" and info.crashed and info.step == 1
    with pytest.raises(JobError, match="Unknown run"):
        jm.status("../etc")


def test_stop_before_training_started_is_a_stop(jm: JobManager, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    run_id = jm.start(sft_cfg(tiny_models, write_sft(tmp_path / "d.jsonl"), adapter_name="early"))
    info = jm.stop(run_id, grace_s=30)  # the worker is still importing torch: default SIGTERM kills it
    assert info.status == "stopped" and not info.crashed, info
    assert jm.active() is None
