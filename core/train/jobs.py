"""Training runs as worker processes: start, follow events, stop, list, and find a running one after a restart.

A worker process, not a thread: an out-of-memory or a crash in training never takes the server down, and the
same command (``python -m core.train``, or ``torchrun`` for several processes) is the multi-process path.
Everything the manager knows lives in the run folder (``config.yaml``, ``worker.json``, ``events.jsonl``), so a
new :class:`JobManager` after a server restart sees exactly what the old one saw.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from core import store
from core.config import TrainConfig
from core.errors import JobBusyError, JobError

REPO_ROOT = Path(__file__).resolve().parents[2]
RunStatus = Literal["starting", "running", "finished", "stopped", "time_budget", "failed"]


def new_run_id(name: str) -> str:
    """``YYYYmmdd-HHMMSS-<safe name>`` (UTC), sortable by start time."""
    return f"{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}-{store.safe_name(name)}"


@dataclass
class RunInfo:
    """A run as the UI shows it. ``status`` is never 'finished' unless the worker wrote a finished end event."""

    run_id: str
    run_dir: Path
    status: RunStatus
    pid: int | None = None
    adapter_name: str | None = None
    task: str | None = None
    step: int = 0
    total_steps: int | None = None
    error: str | None = None
    crashed: bool = False
    """True when the worker died without writing an end event (killed, out of memory, segfault)."""
    adapter_dir: str | None = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.status in ("starting", "running")


class JobManager:
    """Starts, follows and stops training workers; one run at a time.

    Args:
        runs_dir: where run folders live (default ``runs/`` under the DemoForge home).
        grace_s: how long :meth:`stop` waits after SIGTERM (the worker finishes its step and checkpoints)
            before SIGKILL.
        python: interpreter for the worker.
    """

    def __init__(self, runs_dir: Path | None = None, grace_s: float = 60.0, python: str = sys.executable) -> None:
        self.runs_dir = Path(runs_dir) if runs_dir is not None else store.subdir("runs")
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.grace_s = grace_s
        self.python = python
        self._procs: dict[str, subprocess.Popen] = {}  # workers this instance spawned (poll() reaps them)
        self._lock = threading.Lock()

    # --- starting ----------------------------------------------------------------------------------------------------

    def start(self, config: TrainConfig, nproc: int = 1) -> str:
        """Write ``runs/<id>/config.yaml`` and start the worker; returns the run id.

        ``nproc > 1`` runs ``torchrun --standalone --nproc_per_node nproc`` (gloo on CPU, NCCL on GPUs).

        Raises:
            JobBusyError: another run is still in progress.
        """
        with self._lock, self._start_lock():
            self._refuse_if_busy()
            run_id = new_run_id(config.adapter_name)
            run_dir = self.runs_dir / run_id
            n = 2
            while run_dir.exists():
                run_dir = self.runs_dir / f"{run_id}-{n}"
                n += 1
            run_id = run_dir.name
            run_dir.mkdir(parents=True)
            cfg = dataclasses.replace(config, run_dir=str(run_dir), resume_from=None)
            store.atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
            args = [str(run_dir / "config.yaml"), "--run-dir", str(run_dir)]
            self._spawn(run_id, run_dir, args, nproc)
            return run_id

    def resume(self, run_id: str, nproc: int = 1) -> str:
        """Continue a stopped run from its checkpoint in the same folder (same events file); returns the run id."""
        with self._lock, self._start_lock():
            self._refuse_if_busy()
            run_dir = self._dir(run_id)
            if not (run_dir / "checkpoint" / "position.json").is_file():
                raise JobError(f"Run {run_id} has no checkpoint to resume from.")
            if self.status(run_id).status == "finished":
                raise JobError(f"Run {run_id} already finished; start a new run instead.")
            self._spawn(run_id, run_dir, ["--resume", str(run_dir)], nproc)
            return run_id

    def _spawn(self, run_id: str, run_dir: Path, args: list[str], nproc: int) -> None:
        if nproc > 1:
            cmd = [
                self.python,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                str(nproc),
                "-m",
                "core.train",
                *args,
            ]
        else:
            cmd = [self.python, "-m", "core.train", *args]
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "DEMOFORGE_HOME": str(store.home()),
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
        }
        with open(run_dir / "stdout.log", "ab") as out, open(run_dir / "stderr.log", "ab") as err:
            # A new session (process group): stop() signals the whole group, torchrun's ranks included, and a
            # Ctrl-C in the server's terminal does not reach the worker.
            proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self._procs[run_id] = proc
        info = {
            "pid": proc.pid,
            "pgid": proc.pid,
            "cmd": cmd,
            "run_dir": str(run_dir),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        store.atomic_write_json(run_dir / "worker.json", info)

    @contextlib.contextmanager
    def _start_lock(self):  # noqa: ANN202 - a lock file, so two server processes cannot both start a run
        import fcntl

        with open(self.runs_dir / ".start.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _refuse_if_busy(self) -> None:
        running = self.active()
        if running is not None:
            where = f" (step {running.step}/{running.total_steps})" if running.total_steps else ""
            raise JobBusyError(
                f"A training run is already in progress: {running.run_id}{where}. Stop it or wait "
                "for it to finish before starting another."
            )

    # --- following ---------------------------------------------------------------------------------------------------

    def read_events(self, run_id: str, since_offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Events appended since ``since_offset`` (bytes), and the offset to pass next time.

        Only complete lines are returned, so a line being written is picked up on the next call.
        """
        path = self._dir(run_id) / "events.jsonl"
        if not path.is_file():
            return [], since_offset
        with open(path, "rb") as fh:
            fh.seek(since_offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1
        events = []
        for line in chunk[:end].splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
        return events, since_offset + end

    def status(self, run_id: str) -> RunInfo:
        """Current state from the run folder: the last end event wins; no end event and no live worker = crashed."""
        run_dir = self._dir(run_id)
        events, _ = self.read_events(run_id)
        info = RunInfo(run_id, run_dir, "starting", pid=self._pid(run_dir))
        with contextlib.suppress(Exception):
            cfg = TrainConfig.from_yaml(run_dir / "config.yaml")
            info.adapter_name, info.task = cfg.adapter_name, cfg.task
        last_start = max((i for i, e in enumerate(events) if e.get("type") == "start"), default=-1)
        for e in events:
            if e.get("type") in ("step", "end") and e.get("step") is not None:
                info.step, info.total_steps = e["step"], e.get("total_steps", info.total_steps)
            elif e.get("type") == "start":
                info.total_steps = e.get("total_steps")
        end = next((e for e in reversed(events[last_start + 1 :]) if e.get("type") == "end"), None)
        alive = self._alive(run_id, run_dir)
        if end is not None and not alive:
            info.status, info.error = end.get("status", "failed"), end.get("error")
            info.adapter_dir, info.metrics = end.get("adapter_dir"), end.get("metrics") or {}
        elif alive:
            info.status = "running" if last_start >= 0 else "starting"
        else:
            info.status, info.crashed = "failed", True
            info.error = (
                f"The worker exited without reporting an end (killed, out of memory or crashed); see "
                f"{run_dir / 'stderr.log'}: " + _tail(run_dir / "stderr.log")
            )
        return info

    def list_runs(self) -> list[RunInfo]:
        """All runs, newest first."""
        dirs = [d for d in self.runs_dir.iterdir() if d.is_dir() and (d / "config.yaml").is_file()]
        return [self.status(d.name) for d in sorted(dirs, key=lambda d: d.name, reverse=True)]

    def active(self) -> RunInfo | None:
        """The run whose worker is alive, if any: also found after a server restart (pid file + liveness)."""
        for d in sorted(self.runs_dir.iterdir(), reverse=True):
            if d.is_dir() and (d / "worker.json").is_file() and self._alive(d.name, d):
                return self.status(d.name)
        return None

    # --- stopping ----------------------------------------------------------------------------------------------------

    def stop(self, run_id: str, grace_s: float | None = None, wait: bool = True) -> RunInfo:
        """SIGTERM the worker's process group (it checkpoints at the end of the step and exits); SIGKILL after
        ``grace_s``. With ``wait=False`` only the SIGTERM is sent."""
        run_dir = self._dir(run_id)
        pgid = self._pgid(run_dir)
        if pgid is None or not self._alive(run_id, run_dir):
            return self.status(run_id)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        if not wait:
            return self.status(run_id)
        grace = grace_s if grace_s is not None else self.grace_s
        if not self.wait(run_id, grace):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.wait(run_id, 10)
            self._append_end(
                run_dir, "failed", f"The worker did not stop within {grace:.0f}s after SIGTERM and was killed."
            )
        elif self.status(run_id).crashed and not any(e.get("type") == "start" for e in self.read_events(run_id)[0]):
            # SIGTERM arrived while the worker was still importing, before it could handle signals: nothing was
            # trained, so this is a stop, not a crash (and there is no checkpoint to resume).
            self._append_end(run_dir, "stopped", None)
        return self.status(run_id)

    @staticmethod
    def _append_end(run_dir: Path, status: str, error: str | None) -> None:
        with open(run_dir / "events.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"type": "end", "status": status, "error": error, "written_by": "jobs"}) + "\n")

    def wait(self, run_id: str, timeout: float | None = None) -> bool:
        """Block until the worker exits; False on timeout."""
        run_dir = self._dir(run_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._alive(run_id, run_dir):
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    # --- liveness ----------------------------------------------------------------------------------------------------

    def _dir(self, run_id: str) -> Path:
        run_dir = self.runs_dir / store.safe_name(run_id)
        if run_id != run_dir.name or not run_dir.is_dir():
            raise JobError(f"Unknown run {run_id!r} in {self.runs_dir}.")
        return run_dir

    @staticmethod
    def _worker(run_dir: Path) -> dict[str, Any] | None:
        try:
            return json.loads((run_dir / "worker.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def _pid(self, run_dir: Path) -> int | None:
        info = self._worker(run_dir)
        return int(info["pid"]) if info else None

    def _pgid(self, run_dir: Path) -> int | None:
        info = self._worker(run_dir)
        return int(info.get("pgid", info["pid"])) if info else None

    def _alive(self, run_id: str, run_dir: Path) -> bool:
        """Our child: ``poll()``. After a restart: the pid exists, is not a zombie, and its command line is this
        run's ``core.train`` worker (a recycled pid belonging to another program does not count)."""
        proc = self._procs.get(run_id)
        if proc is not None and proc.pid == self._pid(run_dir):
            return proc.poll() is None
        pid = self._pid(run_dir)
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by someone else; the cmdline check below decides
        proc_dir = Path(f"/proc/{pid}")
        if not proc_dir.is_dir():
            return True  # no procfs (macOS): trust the pid
        try:
            stat = (proc_dir / "stat").read_text()
            # 'Z' with one task left is a real zombie; with more, the main thread has exited while other threads
            # (OpenMP, torch) are still finishing, so the worker is still winding down.
            if stat[stat.rfind(")") + 2 :].startswith("Z") and len(os.listdir(proc_dir / "task")) <= 1:
                return False
            cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        return "core.train" in cmdline and str(run_dir) in cmdline


def _tail(path: Path, chars: int = 400) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "(no stderr)"
    return text[-chars:] if text else "(empty)"
