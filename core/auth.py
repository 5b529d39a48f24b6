"""Roles and sign-in throttling, with no web framework in sight (the server in ``demo/server.py`` applies them).

Two roles: the *builder* (everything) and the *audience* (the profile's view). The audience app is built only from
audience-safe handlers, so a builder action simply does not exist there; :func:`refusal` words the answer a
visitor gets when they ask for one anyway.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from core.errors import PermissionDenied

Role = Literal["builder", "audience"]

BUILDER_ACTIONS: dict[str, str] = {
    "train": "start, stop or resume training runs",
    "rename": "rename adapters",
    "delete": "delete adapters",
    "merge": "merge adapters into their base",
    "push": "push adapters to the Hub",
    "download": "download adapters",
    "switch_model": "switch to a model or adapter the presenter did not choose",
    "save_profile": "change the demo's profile",
    "results": "see the arena's results",
}
"""Action key -> what it does, in a visitor's words."""


def refusal(action: str) -> PermissionDenied:
    """The error an audience visitor gets for a builder action: says who may do it and how to become them."""
    what = BUILDER_ACTIONS.get(action, action)
    err = PermissionDenied(f"Only the demo's builder can {what}: sign in as builder (at /builder) to do that.")
    err.role_hint = "builder"
    return err


@dataclass
class LoginThrottle:
    """Failed sign-ins per client: each failure doubles the wait before the next attempt is even checked, and
    ``max_failures`` within ``window_s`` lock the client out until the oldest of them leaves the window.

    Thread-safe; time comes from ``clock`` so tests need not sleep.
    """

    max_failures: int = 5
    """Failures within the window that lock a client out."""
    window_s: float = 300.0
    """Seconds a failure counts against its client."""
    base_delay_s: float = 1.0
    """Wait after the first failure; doubled by each further one (1, 2, 4, 8 s ...)."""
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.get(client, deque())
        while times and now - times[0] > self.window_s:
            times.popleft()
        if not times:
            self._failures.pop(client, None)
        return times

    def wait_s(self, client: str) -> float:
        """Seconds ``client`` must wait before a sign-in attempt is checked (0 means go ahead)."""
        now = self.clock()
        with self._lock:
            times = self._recent(client, now)
            if not times:
                return 0.0
            if len(times) >= self.max_failures:
                return max(0.0, times[0] + self.window_s - now)
            delay = self.base_delay_s * 2 ** (len(times) - 1)
            return max(0.0, times[-1] + delay - now)

    def record(self, client: str, ok: bool) -> None:
        """Note an attempt's outcome: a success clears the client's failures."""
        now = self.clock()
        with self._lock:
            if ok:
                self._failures.pop(client, None)
                return
            times = self._recent(client, now)
            times.append(now)
            self._failures[client] = times
            if len(self._failures) > 10_000:  # bound memory under a spray of addresses: drop the stalest
                stalest = min(self._failures, key=lambda c: self._failures[c][-1])
                self._failures.pop(stalest, None)

    @staticmethod
    def message(wait_s: float) -> str:
        """What a throttled client is told."""
        return f"Too many failed sign-ins from your address: wait {wait_s:.0f} s and try again."
