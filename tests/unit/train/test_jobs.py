"""JobManager: worker processes that are refused when busy, found again after a restart, stopped, and reported
as crashed (never finished) when they die without an end event."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from core import store
from core.config import ConfigError, TrainConfig
from core.data import MIB, DataError, load_data
from core.errors import AdapterError
from core.train.jobs import REPO_ROOT, STOP_FILE, JobBusyError, JobError, JobManager, new_run_id
from core.train.service import Training
from tests.toy_data import sft_cfg, write_cls, write_sft


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
        assert f"see runs/{run_id}/stderr.log" in info.error and str(demoforge_home) not in info.error
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
    assert info.status == "finished" and info.step == 6 and info.adapter_dir == "adapters/short"
    assert (demoforge_home / info.adapter_dir).is_dir(), "adapter_dir is relative to the home (no server paths)"
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
    with pytest.raises(JobError, match="Unknown run") as e:
        jm.status("../etc")
    assert str(demoforge_home) not in str(e.value)


def test_status_parses_only_what_was_appended_and_keeps_attempts_apart(
    jm: JobManager, demoforge_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Fine-tune page polls status() every second for the whole run: it must not parse the whole (growing)
    events file each time. A resumed attempt's state comes from its own events only."""
    import core.train.jobs as jobs_mod

    run_dir = demoforge_home / "runs" / "20260101-000000-poll"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("data_path: d.jsonl\nadapter_name: poll\n")
    first = [{"type": "start", "total_steps": 900}]
    first += [{"type": "step", "step": i, "total_steps": 900, "loss": 1.0} for i in range(1, 501)]
    first += [{"type": "end", "status": "stopped", "step": 500, "total_steps": 900}]
    text = "".join(json.dumps(e) + "\n" for e in first)
    (run_dir / "events.jsonl").write_text(text)
    (run_dir / "worker.json").write_text(json.dumps({"pid": os.getpid(), "pgid": os.getpid()}))
    info = jm.status(run_dir.name)
    assert (info.status, info.step, info.total_steps) == ("stopped", 500, 900)

    # a resume: the new attempt starts at the file's current size; its end event is half written
    (run_dir / "worker.json").write_text(
        json.dumps({"pid": os.getpid(), "pgid": os.getpid(), "events_offset": len(text.encode())})
    )
    parsed: list[bytes] = []  # event lines (bytes); worker.json is read as text
    real_loads = json.loads

    def counting_loads(raw: str | bytes, *a: object, **k: object) -> object:
        if isinstance(raw, bytes):
            parsed.append(raw)
        return real_loads(raw, *a, **k)

    monkeypatch.setattr(jobs_mod.json, "loads", counting_loads)
    with open(run_dir / "events.jsonl", "a") as fh:
        fh.write(json.dumps({"type": "start", "total_steps": 900, "resumed_from_step": 500}) + "\n")
        fh.write(json.dumps({"type": "step", "step": 501, "total_steps": 900}) + '\n{"type": "end", "sta')
    info = jm.status(run_dir.name)
    assert len(parsed) == 2  # the two new complete lines, not the 502 before them
    assert (info.step, info.total_steps) == (501, 900)
    assert info.status == "failed" and info.crashed  # this attempt has no end yet and no live worker
    with open(run_dir / "events.jsonl", "a") as fh:
        fh.write('tus": "finished", "step": 900, "total_steps": 900, "metrics": {"final_loss": 0.5}}\n')
    info = jm.status(run_dir.name)
    assert (info.status, info.step, info.metrics) == ("finished", 900, {"final_loss": 0.5})
    assert len(parsed) == 3
    # a replaced (shorter) file is read from its start
    (run_dir / "events.jsonl").write_text(json.dumps({"type": "start", "total_steps": 7}) + "\n")
    (run_dir / "worker.json").write_text(json.dumps({"pid": os.getpid(), "pgid": os.getpid()}))
    info = jm.status(run_dir.name)
    assert (info.step, info.total_steps) == (0, 7)  # no step yet: 0, as the progress bar divides by it


def test_an_attempt_after_a_half_written_line_is_still_found(jm: JobManager, demoforge_home: Path) -> None:
    """A worker killed mid-line leaves half an event; the resumed attempt's start follows on the same line, and
    an undecodable line is skipped, not re-read forever."""
    run_dir = demoforge_home / "runs" / "20260101-000000-glued"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("data_path: d.jsonl\nadapter_name: glued\n")
    head = b'{"type": "start", "total_steps": 9}\n\xff\xfe not utf-8\n{"type": "step", "st'
    (run_dir / "events.jsonl").write_bytes(head)
    me = {"pid": os.getpid(), "pgid": os.getpid()}
    (run_dir / "worker.json").write_text(json.dumps(me | {"events_offset": len(head)}))
    with open(run_dir / "events.jsonl", "ab") as fh:
        fh.write(b'{"type": "start", "total_steps": 9, "resumed_from_step": 0}\n')
        fh.write(b'{"type": "step", "step": 3, "total_steps": 9}\n')
    (run_dir / STOP_FILE).touch()  # a stop was asked for, but this attempt had started: its death is a crash
    info = jm.status(run_dir.name)
    assert (info.status, info.crashed, info.step, info.total_steps) == ("failed", True, 3, 9), info
    with open(run_dir / "events.jsonl", "ab") as fh:
        fh.write(b'{"type": "end", "status": "finished", "step": 9, "total_steps": 9}\n')
    assert jm.status(run_dir.name).status == "finished"


def test_stop_before_training_started_is_a_stop(jm: JobManager, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    run_id = jm.start(sft_cfg(tiny_models, write_sft(tmp_path / "d.jsonl"), adapter_name="early"))
    info = jm.stop(run_id, grace_s=30)  # the worker is still importing torch: default SIGTERM kills it
    assert info.status == "stopped" and not info.crashed, info
    assert jm.active() is None


# --- faults found by the probe (issue 8.5) --------------------------------------------------------------------------


def fake_adapter(home: Path, name: str) -> Path:
    path = home / "adapters" / name
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    (path / "adapter_card.json").write_text(json.dumps({"name": name, "task": "sft"}))
    return path


def fake_run(home: Path, run_id: str, stderr: str = "", events: str = "") -> Path:
    run_dir = home / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("data_path: d.jsonl\nadapter_name: fake\n")
    (run_dir / "events.jsonl").write_text(events)
    (run_dir / "stderr.log").write_text(stderr)
    (run_dir / "worker.json").write_text(json.dumps({"pid": os.getpid(), "pgid": os.getpid()}))  # not its worker
    return run_dir


def test_new_run_never_replaces_an_adapter_with_the_same_cleaned_name(
    jm: JobManager, tiny_models: dict[str, Path], tmp_path: Path, demoforge_home: Path
) -> None:
    existing = fake_adapter(demoforge_home, "id")
    data = write_sft(tmp_path / "d.jsonl")
    for typed in ("../id", "id", " id "):
        with pytest.raises(AdapterError, match="An adapter named 'id' already exists") as e:
            jm.start(sft_cfg(tiny_models, data, adapter_name=typed))
        assert "never replaces" in str(e.value)
    assert "('../id' is saved as 'id')" in str(
        pytest.raises(AdapterError, jm.start, sft_cfg(tiny_models, data, adapter_name="../id")).value
    )
    runs = [d for d in (demoforge_home / "runs").iterdir() if d.is_dir()]
    assert runs == [], "refused before a run folder or a worker exists"
    assert (existing / "adapter_model.safetensors").read_bytes() == b"weights"
    training = Training(lambda: jm, lambda *a: None, 50 * MIB)
    assert training.check_name("my new adapter") == "my-new-adapter"  # the UI can say what it is saved as


def test_long_adapter_names_are_refused_and_long_run_ids_stay_manageable(jm: JobManager, demoforge_home: Path) -> None:
    with pytest.raises(ConfigError, match="300 characters long; use at most 64"):
        TrainConfig(data_path="d.csv", adapter_name="n" * 300)
    # A run left by an older version with an 80-character id: status, stop, listing and latest all resolve it.
    long_id = "20260101-000000-" + "n" * 64
    fake_run(demoforge_home, long_id)
    short_id = new_run_id("y" * 64)
    assert len(short_id) <= 16 + 48
    assert jm.status(long_id).run_id == long_id
    assert jm.stop(long_id, wait=False).status == "failed"
    assert [r.run_id for r in jm.list_runs()] == [long_id]
    training = Training(lambda: jm, lambda *a: None, 50 * MIB)
    assert training.status_json()["run_id"] == long_id and training.stop(long_id) is not None
    for bad in ("", ".", "..", "../etc", "a/b", ".hidden"):
        with pytest.raises(JobError, match="Unknown run"):
            jm.status(bad)


def test_start_is_refused_when_the_upload_was_refused(jm: JobManager, tmp_path: Path, demoforge_home: Path) -> None:
    """The report refused the file; Training.start must refuse it with the same text, before any worker starts."""
    zipped = tmp_path / "data.csv"
    zipped.write_bytes(b"PK\x03\x04" + b"\x00" * 200)

    def validate(path: str, task: str, base: str, columns: dict | None, max_length: int):
        return load_data(path, task, mapping=columns, max_bytes=50 * MIB)

    training = Training(lambda: jm, validate, 50 * MIB)
    with pytest.raises(DataError) as report:
        training.validate(str(zipped), "classification")
    with pytest.raises(DataError) as start:
        training.start(TrainConfig(data_path=str(zipped), adapter_name="refused", task="classification"))
    assert str(start.value) == str(report.value) and "not a text table" in str(start.value)
    assert not [d for d in (demoforge_home / "runs").iterdir() if d.is_dir()], "no run folder, no worker"


def test_server_upload_limit_reaches_the_worker_config(jm: JobManager, tmp_path: Path) -> None:
    """--max-upload-mb 2 -> TrainConfig.max_data_mb 2: the worker reads with the limit the report used."""
    started: list[TrainConfig] = []

    class Jobs:
        home = jm.home

        def check_can_start(self, config: TrainConfig) -> str:
            return config.adapter_name

        def start(self, config: TrainConfig) -> str:
            started.append(config)
            return "run"

    data = write_cls(tmp_path / "c.csv")
    training = Training(Jobs, lambda *a: None, 2 * MIB)
    training.start(TrainConfig(data_path=str(data), adapter_name="a", task="classification"))
    training.start(TrainConfig(data_path=str(data), adapter_name="b", task="classification", max_data_mb=1))
    training.start(TrainConfig(data_path=str(data), adapter_name="c", task="classification", max_data_mb=500))
    assert [c.max_data_mb for c in started] == [2, 1, 2], "the server's limit, never more"


def test_worker_reads_data_with_the_configured_limit(tmp_path: Path) -> None:
    from core.train.batches import load_train_data
    from tests.conftest import build_tiny_tokenizer

    words = " ".join(["good movie"] * 26_000)  # ~260 KB per row: 6 rows ~ 1.5 MiB
    path = tmp_path / "big.csv"
    path.write_text("text,label\n" + "".join(f"{words},{'ab'[i % 2]}\n" for i in range(6)))
    assert 1 * MIB < path.stat().st_size < 2 * MIB
    cfg = TrainConfig(data_path=str(path), adapter_name="big", task="classification", max_length=32)
    tok = build_tiny_tokenizer()
    with pytest.raises(DataError, match=r"over the 1\.0 MiB limit"):
        load_train_data(dataclasses.replace(cfg, max_data_mb=1), tok)
    assert len(load_train_data(dataclasses.replace(cfg, max_data_mb=2), tok).train_rows) >= 4


def test_stop_during_startup_without_waiting_is_a_stop(
    jm: JobManager, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """The UI stops with wait=False; a worker killed by that SIGTERM while importing is stopped, not crashed."""
    run_id = jm.start(sft_cfg(tiny_models, write_sft(tmp_path / "d.jsonl"), adapter_name="early-nowait"))
    jm.stop(run_id, wait=False)
    assert jm.wait(run_id, 60)
    for manager in (jm, JobManager()):  # also after a server restart
        info = manager.status(run_id)
        assert info.status == "stopped" and not info.crashed and info.error is None, info


def test_crash_tail_is_kept_without_server_paths(jm: JobManager, demoforge_home: Path) -> None:
    traceback = (
        "Traceback (most recent call last):\n"
        f'  File "{REPO_ROOT}/core/train/runner.py", line 1, in run\n'
        f'  File "{sys.prefix}/lib/python3/site-packages/torch/nn/functional.py", line 2\n'
        f"OSError: cannot write {demoforge_home}/runs/x/checkpoint\n"
    )
    run_dir = fake_run(demoforge_home, "20260101-000000-crash", stderr=traceback)
    info = jm.status(run_dir.name)
    assert info.crashed and "OSError: cannot write runs/x/checkpoint" in (info.error or "")
    assert 'File "core/train/runner.py"' in info.error and "<python>/lib/python3/site-packages/torch" in info.error
    for secret in (str(demoforge_home), str(REPO_ROOT), sys.prefix, str(store.home().parent)):
        assert secret not in info.error
    # an error a worker wrote into its end event is shown without server paths too
    end = {"type": "end", "status": "failed", "error": f"DataError: File not found: {demoforge_home}/uploads/x.csv"}
    run_dir = fake_run(demoforge_home, "20260101-000001-err", events=json.dumps(end) + "\n")
    assert jm.status(run_dir.name).error == "DataError: File not found: uploads/x.csv"
    # the Fine-tune tab's log tail: the worker's traceback without server paths
    from core.train.progress import read_progress

    (run_dir / "train.log").write_text(traceback)
    tail = read_progress(jm, run_dir.name).log_tail
    assert 'File "core/train/runner.py"' in tail and str(demoforge_home) not in tail and str(REPO_ROOT) not in tail


def test_engine_owns_one_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine resolves the home once; a later DEMOFORGE_HOME change cannot split a server across two homes."""
    from core.config import AppConfig
    from core.engine import Engine

    first, second = tmp_path / "first", tmp_path / "second"
    monkeypatch.setenv("DEMOFORGE_HOME", str(first))
    engine = Engine(AppConfig(max_upload_mb=7))
    monkeypatch.setenv("DEMOFORGE_HOME", str(second))
    fake_adapter(first, "mine")
    assert engine.home == first and engine.jobs.home == first and engine.jobs.runs_dir == first / "runs"
    assert [a.name for a in engine.library.list()] == ["mine"] and engine.library.get(
        "mine"
    ).path.parent.parent == first
    assert engine.scratch_dir("scored").parent == first / "tmp"
    zipped = engine.library.zip("mine")
    assert zipped.parent.parent == first / "tmp" and zipped.is_file()
    assert engine.training.max_bytes == 7 * MIB and engine.classify.max_bytes == 7 * MIB
    spawned: list[dict] = []

    class FakePopen:
        pid = os.getpid()

        def __init__(self, cmd: list[str], env: dict[str, str], **kw: object) -> None:
            spawned.append(env)

        def poll(self) -> int:
            return 0

    monkeypatch.setattr("core.train.jobs.subprocess.Popen", FakePopen)
    engine.jobs.start(TrainConfig(data_path="d.csv", adapter_name="x"))
    assert spawned[0]["DEMOFORGE_HOME"] == str(first), "the worker saves into the engine's home"
    assert not second.exists() or not any(second.iterdir())
