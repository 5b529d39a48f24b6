"""What a worker tells the world: ``events.jsonl`` + ``train.log``, the stop flag its signals set, its start time.

Event types: ``start``, ``step``, ``eval``, ``checkpoint``, ``plan`` (a time budget re-planned the total),
``phase`` (``final_eval`` | ``saving``, with an ``eta_s``) and ``end``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def process_start() -> float:
    """This process's start on the ``time.monotonic()`` clock: a time budget counts the interpreter's start-up and
    the imports too. Linux reads it from ``/proc``; elsewhere it is now."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat[stat.rfind(")") + 2 :].split()[19])  # field 22, starttime, in clock ticks since boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic()
    return time.monotonic() - max(0.0, age)


@dataclass
class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it after each step, saves a checkpoint and exits cleanly."""

    requested: bool = False
    signal_name: str | None = None

    def install(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self.requested, self.signal_name = True, signal.Signals(signum).name

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


class EventLog:
    """``events.jsonl`` (one JSON object per line) and ``train.log`` (for humans), flushed per line.

    Disabled on non-main processes, so ranks never interleave writes. ``elapsed_s`` counts from ``t0`` (the
    worker's start).
    """

    def __init__(self, run_dir: Path, enabled: bool = True, t0: float | None = None) -> None:
        self.enabled = enabled
        self.t0 = time.monotonic() if t0 is None else t0
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._events = open(run_dir / "events.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - lives with the run
            self._log = open(run_dir / "train.log", "a", encoding="utf-8")  # noqa: SIM115

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Write one event (adds ``type``, ``time`` and ``elapsed_s``) and its log line."""
        event = {
            "type": type_,
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "elapsed_s": round(time.monotonic() - self.t0, 2),
            **fields,
        }
        if self.enabled:
            self._events.write(json.dumps(event, default=str) + "\n")
            self._events.flush()
            self.log(_describe(event))
        return event

    def log(self, line: str) -> None:
        if self.enabled:
            self._log.write(f"{dt.datetime.now().strftime('%H:%M:%S')} {line}\n")
            self._log.flush()

    def close(self) -> None:
        if self.enabled:
            self._events.close()
            self._log.close()


def _describe(e: dict[str, Any]) -> str:
    if e["type"] == "step":
        return (
            f"step {e['step']}/{e['total_steps']} epoch {e['epoch']:.2f} loss {e['loss']:.4f} lr {e['lr']:.2e} "
            f"{e['tokens_per_s']:.0f} tok/s eta {e['eta_s']:.0f}s"
        )
    if e["type"] == "eval":
        return f"eval at step {e['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in e["metrics"].items())
    rest = {k: v for k, v in e.items() if k not in ("type", "time")}
    return f"{e['type']}: {json.dumps(rest, default=str)}"
