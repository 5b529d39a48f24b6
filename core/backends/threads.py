"""Pick llama.cpp's compute thread count by measuring decode steps while serving.

ggml's threads meet at a spinning barrier after every operation (hundreds per token). On a quiet machine two
threads on 2 cores decode ~1.9x faster than one; but when anything else wants a core (the Gradio server streaming
to 8 visitors, other processes on a shared Space), a descheduled thread leaves the other spinning for a whole time
slice at every barrier, and two threads fell to 1-3 tok/s while one thread kept 15-19 tok/s (measured on this
2-core machine at load ~6). Neither count is right everywhere, so the scheduler measures: it runs on the best
count and now and then tries another for a few steps, keeping whichever decodes a token fastest.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field


def candidates(most: int) -> tuple[int, ...]:
    """Thread counts worth trying on ``most`` usable CPUs: all of them, half, and one."""
    return tuple(sorted({1, max(1, most // 2), max(1, most)}, reverse=True))


@dataclass
class ThreadTuner:
    """Chooses the thread count for the next decode step from the measured seconds per token of recent steps.

    Only steps with the same shape are compared (running tokens only, no prompt chunk), and a probe runs right
    after the steps it is compared with, so a change in load or batch size between them is small. A probe that
    loses doubles the wait before the next one (a losing probe step can be 10x slower under contention).
    """

    choices: tuple[int, ...]
    """Thread counts to choose from; the first is where it starts."""
    window: int = 6
    """Steps measured per count before comparing."""
    probe_every: int = 48
    """Steps on the current count before trying another (doubles after each losing probe, up to 32x)."""
    margin: float = 0.1
    """A probe must be this much faster per token to take over (measurement noise must not flip it back and forth)."""
    warmup: int = 6
    """Decode steps ignored at the start: the first steps after a load run on cold caches and weights still being
    paged in, and once made the count measured first look slower than the probe after it (a quiet 2-core machine
    switched to 1 thread, which decodes at 50 tok/s instead of 85 and prefills in 370 ms instead of 195)."""
    current: int = field(init=False)
    switches: int = field(init=False, default=0)
    _recent: deque[float] = field(init=False)
    _probe: list[float] = field(init=False, default_factory=list)
    _probing: int | None = field(init=False, default=None)
    _wait: int = field(init=False)
    _since: int = field(init=False, default=0)
    _next: int = field(init=False, default=0)
    _warm: int = field(init=False, default=0)
    """Decode steps seen of the warm-up."""
    _settled: float | None = field(init=False, default=None)
    """Seconds per token on the current count when it was last chosen or confirmed."""

    def __post_init__(self) -> None:
        if not self.choices or min(self.choices) < 1:
            raise ValueError(f"thread counts must be >= 1: {self.choices}")
        self.current = self.choices[0]
        self._recent = deque(maxlen=self.window)
        self._wait = 0  # try the others as soon as the first window is measured: a bad start may be 10x slower

    def threads(self) -> int:
        """The count for the next decode-only step (a probe's count while one runs).

        Steps with prompt tokens run on :attr:`current`, the settled count: a probe is measured on decode steps
        only, and a visitor's prefill must not pay for a losing probe (one thread prefills 2x slower here)."""
        return self._probing if self._probing is not None else self.current

    def record(self, seconds: float, tokens: int, decode_only: bool) -> None:
        """Account one step: ``tokens`` decoded in ``seconds``; only decode-only steps are compared."""
        if not decode_only or tokens < 1 or len(self.choices) < 2:
            return
        if self._warm < self.warmup:
            self._warm += 1
            return
        per_token = seconds / tokens
        if self._probing is None:
            self._recent.append(per_token)
            self._since += 1
            full = len(self._recent) == self.window
            if full and self._settled is not None and statistics.median(self._recent) > 2 * self._settled:
                self._wait = 0  # the current count got much slower (the machine got busy): look again now
            if full and self._since >= self._wait:
                others = [c for c in self.choices if c != self.current]
                self._probing = others[self._next % len(others)]
                self._next += 1
                self._probe = []
            return
        self._probe.append(per_token)
        base = statistics.median(self._recent)
        # Stop a probe early when its first step is already far worse: under contention a step can take 10x.
        hopeless = len(self._probe) == 1 and per_token > 3 * base
        if len(self._probe) < self.window and not hopeless:
            return
        if not hopeless and statistics.median(self._probe) < (1 - self.margin) * base:
            self.current, self.switches, self._wait = self._probing, self.switches + 1, self.probe_every
            self._recent = deque(self._probe, maxlen=self.window)
        else:
            self._wait = min(max(2 * self._wait, self.probe_every), 32 * self.probe_every)
        self._probing, self._since = None, 0
        self._settled = statistics.median(self._recent)
