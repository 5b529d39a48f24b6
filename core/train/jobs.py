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
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from core import adapters, store
from core.config import TrainConfig
from core.errors import JobBusyError, JobError

REPO_ROOT = Path(__file__).resolve().parents[2]
RunStatus = Literal["starting", "running", "finished", "stopped", "time_budget", "failed"]
# A run id is one folder name: no separators, no leading dot, short enough for every file system.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_RUN_NAME_CHARS = 48
STOP_FILE = "stop_requested.json"
"""Written before the SIGTERM: a worker that dies of it before training started was stopped, not crashed."""


def new_run_id(name: str) -> str:
    """``YYYYmmdd-HHMMSS-<safe name>`` (UTC), sortable by start time; the name part is capped so ids stay short."""
    short = store.safe_name(name)[:_RUN_NAME_CHARS].rstrip(".-_") or "run"
    return f"{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}-{short}"


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
    """``adapter_name`` is the folder name the adapter is (or will be) saved under; ``adapter_dir`` and ``error``
    name paths relative to the DemoForge home, so they can be shown to anyone."""

    @property
    def alive(self) -> bool:
        return self.status in ("starting", "running")


@dataclass
class _EventScan:
    """What status() needs from a run's ``events.jsonl``, kept between calls (:meth:`JobManager._scan`)."""

    inode: int = 0
    """The file it read: another file under the same name (replaced) is read from its start."""
    offset: int = 0
    """Bytes parsed: only complete lines, so a line being written is read on the next call."""
    step: int = 0
    total_steps: int | None = None
    marks: list[tuple[int, dict[str, Any]]] = dataclasses.field(default_factory=list)
    """(byte offset of the line, event) of every start and end event: an attempt's own start from its offset."""

    def take(self, chunk: bytes) -> None:
        """Parse the complete lines of ``chunk``, read from :attr:`offset` on."""
        for line in chunk[: chunk.rfind(b"\n") + 1].split(b"\n")[:-1]:
            at, e = self.offset, _parse(line)
            if e is None and line.rfind(b'{"type"') > 0:
                # a worker killed mid-line leaves half an event; the next attempt's first event follows it on
                # the same line (the attempt's events_offset points at it)
                cut = line.rfind(b'{"type"')
                at, e = at + cut, _parse(line[cut:])
            self.offset += len(line) + 1
            kind = e.get("type") if e is not None else None
            if kind in ("step", "end") and e.get("step") is not None:
                self.step, self.total_steps = e["step"], e.get("total_steps", self.total_steps)
            elif kind == "start":
                self.total_steps = e.get("total_steps")
            if kind in ("start", "end"):
                self.marks.append((at, e))


def _parse(line: bytes) -> dict[str, Any] | None:
    """One event, or None for a line that is not one (half written, not UTF-8, not an object)."""
    try:
        e = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    return e if isinstance(e, dict) else None


class JobManager:
    """Starts, follows and stops training workers; one run at a time.

    Args:
        runs_dir: where run folders live (default ``runs/`` under the home).
        grace_s: how long :meth:`stop` waits after SIGTERM (the worker finishes its step and checkpoints)
            before SIGKILL.
        python: interpreter for the worker.
        home: the DemoForge home, fixed for this manager's life (the engine passes its own; None reads
            :func:`core.store.home` once). Workers inherit it, so runs and adapters never land in two homes.
    """

    def __init__(
        self,
        runs_dir: Path | None = None,
        grace_s: float = 60.0,
        python: str = sys.executable,
        home: Path | None = None,
    ) -> None:
        self.home = Path(home) if home is not None else store.home()
        self.runs_dir = Path(runs_dir) if runs_dir is not None else store.subdir("runs", self.home)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.grace_s = grace_s
        self.python = python
        self._procs: dict[str, subprocess.Popen] = {}  # workers this instance spawned (poll() reaps them)
        self._lock = threading.Lock()
        self._scans: dict[str, _EventScan] = {}  # what status() has read of each run's events so far
        self._scan_lock = threading.Lock()

    # --- starting ----------------------------------------------------------------------------------------------------

    def start(self, config: TrainConfig, nproc: int = 1) -> str:
        """Write ``runs/<id>/config.yaml`` and start the worker; returns the run id.

        ``nproc > 1`` runs ``torchrun --standalone --nproc_per_node nproc`` (gloo on CPU, NCCL on GPUs).

        Raises:
            JobBusyError: another run is still in progress.
            AdapterError: the adapter name is taken (a run never replaces an adapter) or unusable.
        """
        with self._lock, self._start_lock():
            self.check_can_start(config)
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
            with contextlib.suppress(Exception):  # an unreadable config fails in the worker with its own message
                adapters.new_adapter_name(TrainConfig.from_yaml(run_dir / "config.yaml").adapter_name, self.home)
            if not (run_dir / "checkpoint" / "position.json").is_file():
                raise JobError(f"Run {run_id} has no checkpoint to resume from.")
            if self.status(run_id).status == "finished":
                raise JobError(f"Run {run_id} already finished; start a new run instead.")
            self._spawn(run_id, run_dir, ["--resume", str(run_dir)], nproc)
            return run_id

    def check_can_start(self, config: TrainConfig) -> str:
        """Refuse a run that could not end well: another run is live, or its adapter name is taken or too long.

        Returns:
            The folder name the adapter will be saved under (tell the user when it differs from what they typed).

        Raises:
            JobBusyError: another run is in progress. AdapterError: the name is taken or unusable.
        """
        self._refuse_if_busy()
        return adapters.new_adapter_name(config.adapter_name, self.home)

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
            "DEMOFORGE_HOME": str(self.home),
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
        }
        (run_dir / STOP_FILE).unlink(missing_ok=True)
        events = run_dir / "events.jsonl"
        offset = events.stat().st_size if events.is_file() else 0  # where this attempt's events begin (resume)
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
            "events_offset": offset,
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
        """Current state from the run folder: the last end event of the latest attempt wins; no end event and no
        live worker = crashed, unless a stop was asked for before training started (then it was stopped)."""
        run_dir = self._dir(run_id)
        step, total_steps, marks = self._scan(run_id, run_dir / "events.jsonl")
        worker = self._worker(run_dir) or {}
        info = RunInfo(run_id, run_dir, "starting", pid=self._pid(run_dir))
        with contextlib.suppress(Exception):
            cfg = TrainConfig.from_yaml(run_dir / "config.yaml")
            info.task = cfg.task
            info.adapter_name = store.safe_name(cfg.adapter_name)  # the name it is listed under once saved
        info.step, info.total_steps = step, total_steps
        # Only this attempt's events decide its state: a resumed run's earlier end event is history.
        attempt = [e for at, e in marks if at >= int(worker.get("events_offset", 0))]
        started = any(e.get("type") == "start" for e in attempt)
        end = next((e for e in reversed(attempt) if e.get("type") == "end"), None)
        alive = self._alive(run_id, run_dir)
        if end is not None and not alive:
            info.status, info.error = end.get("status", "failed"), end.get("error")
            info.metrics = end.get("metrics") or {}
            if end.get("adapter_dir"):
                info.adapter_dir = store.relative_to_home(end["adapter_dir"], self.home)
        elif alive:
            info.status = "running" if started else "starting"
        elif not started and (run_dir / STOP_FILE).is_file():
            info.status = "stopped"  # SIGTERM arrived while the worker was still importing: nothing was trained
        else:
            info.status, info.crashed = "failed", True
            info.error = (
                "The worker exited without reporting an end (killed, out of memory or crashed); see "
                f"{store.relative_to_home(run_dir / 'stderr.log', self.home)}: " + _tail(run_dir / "stderr.log")
            )
        if info.error:
            info.error = store.redact_paths(info.error, self.home)
        return info

    def _scan(self, run_id: str, path: Path) -> tuple[int, int | None, list[tuple[int, dict[str, Any]]]]:
        """(step, total steps, start/end marks) of the run's events, brought up to date: only the lines appended
        since the last call are parsed. status() is polled every second by every open Fine-tune page; parsing the
        whole file each time cost ~10 ms per poll after 1,000 steps and grew with the run, on the cores the run
        trains on. Returns a snapshot taken under the lock."""
        with self._scan_lock:
            stat = path.stat() if path.is_file() else None
            size, inode = (stat.st_size, stat.st_ino) if stat else (0, 0)
            scan = self._scans.get(run_id)
            if scan is None or size < scan.offset or inode != scan.inode:  # new, or another file: from the start
                scan = self._scans[run_id] = _EventScan(inode=inode)
            if size > scan.offset:
                with open(path, "rb") as fh:
                    fh.seek(scan.offset)
                    scan.take(fh.read())
            return scan.step, scan.total_steps, list(scan.marks)

    def list_runs(self) -> list[RunInfo]:
        """All runs, newest first."""
        dirs = [d for d in self.runs_dir.iterdir() if self._is_run(d)]
        return [self.status(d.name) for d in sorted(dirs, key=lambda d: d.name, reverse=True)]

    def active(self) -> RunInfo | None:
        """The run whose worker is alive, if any: also found after a server restart (pid file + liveness)."""
        for d in sorted(self.runs_dir.iterdir(), reverse=True):
            if self._is_run(d) and (d / "worker.json").is_file() and self._alive(d.name, d):
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
        store.atomic_write_json(run_dir / STOP_FILE, {"at": dt.datetime.now(dt.timezone.utc).isoformat()})
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
        # A run id is checked as a folder name (not re-sanitised: safe_name would cut a long id and miss it).
        run_dir = self.runs_dir / run_id if _RUN_ID.fullmatch(run_id or "") else None
        if run_dir is None or not self._is_run(run_dir):
            raise JobError(f"Unknown run {run_id!r}. Pick one from the list of runs.")
        return run_dir

    @staticmethod
    def _is_run(path: Path) -> bool:
        return _RUN_ID.fullmatch(path.name) is not None and (path / "config.yaml").is_file()

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
    """The last ``chars`` of a log (the caller removes absolute paths before showing it)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "(no stderr)"
    return text[-chars:] if text else "(empty)"
