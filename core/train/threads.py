"""Training's CPU thread count, chosen from measured steps: fewer threads when other work takes the cores.

torch's OpenMP threads meet at a barrier after every parallel region. When something else wants a core (the
app's chat decoding beside a run, another process on a shared Space), one of two threads is descheduled and the
other waits for it at every barrier. Measured on a 2-core machine, a SmolLM2 LoRA step (2 x 256 tokens): 3.8 s on
2 threads and 6.8 s on 1 when quiet; with one busy process beside it, 12.5 s on 2 threads and 6.8 s on 1.

The signal is the process's CPU share: CPU seconds per step over (wall seconds x threads). A quiet step measured
0.98-0.99 on 2 threads, a contended one 0.62-0.64. Only a low share starts a probe of fewer threads, so a quiet
SmolLM2 run never paid for one (a tiny model's serial Python work can lower the share: its probes back off). A run
that moved to fewer threads tries one step more again now and then, keeping whichever trains a token fastest.
"""

from __future__ import annotations

import logging
import statistics
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class TrainThreads:
    """Picks the thread count for the next training step from the last steps' timings."""

    most: int
    """All the threads the run may use (torch's count at the start: one per core)."""
    window: int = 3
    """Steps measured per count before comparing (training steps are long and alike)."""
    contended_share: float = 0.8
    """CPU share below which the current count is taken as contended and fewer threads are tried."""
    probe_every: int = 40
    """Steps between probes of more threads after a switch to fewer (doubles after each losing probe)."""
    margin: float = 0.1
    """A probe must train a token this much faster to take over."""
    current: int = field(init=False)
    switches: int = field(init=False, default=0)
    _recent: deque[tuple[float, float]] = field(init=False)
    """(seconds per token, CPU share) of the last steps on ``current``."""
    _probe: list[float] = field(init=False, default_factory=list)
    _probing: int | None = field(init=False, default=None)
    _since: int = field(init=False, default=0)
    _wait: int = field(init=False, default=0)
    """Steps on ``current`` before the next probe of more threads."""
    _down_wait: int = field(init=False, default=0)
    """Steps on a contended ``current`` before the next probe of fewer (grows when fewer did not help)."""

    def __post_init__(self) -> None:
        if self.most < 1:
            raise ValueError(f"thread count must be >= 1: {self.most}")
        self.current = self.most
        self._recent = deque(maxlen=self.window)
        self._wait = self.probe_every

    @property
    def probing(self) -> bool:
        """Whether the next step is a probe (its time says little about the run's pace)."""
        return self._probing is not None

    def threads(self) -> int:
        """The count for the next step."""
        return self._probing if self._probing is not None else self.current

    def record(self, seconds: float, cpu_seconds: float, tokens: int) -> None:
        """Account one step that ran on :meth:`threads` threads: ``tokens`` trained in ``seconds`` of wall time and
        ``cpu_seconds`` of the process's CPU time."""
        if self.most < 2 or seconds <= 0:
            return
        per_token = seconds / max(tokens, 1)
        if self._probing is not None:
            self._probe.append(per_token)
            if len(self._probe) >= self.window:
                self._settle()
            return
        share = cpu_seconds / (seconds * self.current)
        self._recent.append((per_token, share))
        self._since += 1
        if len(self._recent) < self.window:
            return
        contended = statistics.median(s for _, s in self._recent) < self.contended_share
        if self.current > 1 and contended and self._since >= self._down_wait:
            self._start(max(1, self.current // 2))
        elif self.current < self.most and self._since >= self._wait:
            self._start(min(self.most, 2 * self.current))  # one step up: "all cores" may be far more than a quota

    def _start(self, threads: int) -> None:
        self._probing, self._probe = threads, []

    def _settle(self) -> None:
        """Keep the probed count if it trained a token clearly faster; either way measure afresh."""
        assert self._probing is not None
        base = statistics.median(t for t, _ in self._recent)
        won = statistics.median(self._probe) < (1 - self.margin) * base
        if won:
            log.info(
                "training threads %d -> %d (%.3f -> %.3f s per token)",
                self.current,
                self._probing,
                base,
                statistics.median(self._probe),
            )
            self.current, self.switches, self._wait = self._probing, self.switches + 1, self.probe_every
            self._down_wait = 0
        elif self._probing > self.current:
            self._wait = min(2 * self._wait, 16 * self.probe_every)
        else:  # fewer threads did not help: the contention is not at the barriers; look again much later
            self._down_wait = min(max(2 * self._down_wait, 4 * self.window), 16 * self.probe_every)
        self._recent.clear()
        self._probing, self._since = None, 0
