"""The chat backend interface: one reply stream per request, whatever engine computes it.

A backend answers a plain role/content history; Retry, Undo and Edit are UI-side (the UI sends the history it
wants answered). Every backend yields :class:`core.chat.StreamPiece` objects: the reply so far, a notice when
something the user should know happened (truncation, a fallback), and a last piece with ``done`` and stats.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from core.chat import Message, StreamPiece
from core.config import GenerationSettings


class ChatBackend(ABC):
    """A chat engine behind the Engine's chat door (transformers, llama.cpp, ...)."""

    name: str = "backend"
    """Short engine name for labels and logs ('transformers', 'llama.cpp')."""

    @abstractmethod
    def stream(
        self,
        messages: list[Message],
        settings: GenerationSettings,
        system_prompt: str | None = None,
        adapter: str | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[StreamPiece]:
        """Stream the reply to ``messages`` (ending with a user message), with ``adapter`` applied or the base.

        Closing the generator or setting ``stop`` ends generation within one token step.

        Raises:
            ChatError: the conversation cannot be answered as given (empty, too long).
            AdapterError: the adapter does not exist or does not fit this base.
        """

    @property
    @abstractmethod
    def label(self) -> str:
        """One line for the UI: model, precision or quantisation, engine (and any fallback notice)."""

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Most tokens (prompt + reply) one request may use."""

    def switch_adapter(self, name: str | None) -> float:
        """Make ``name`` ready (load or convert it on first use); returns the seconds it took (0 for the base)."""
        return 0.0

    def cannot_serve(self, adapter: str) -> str | None:
        """Why this backend cannot apply ``adapter`` itself (a wrapper then routes it elsewhere); None if it can."""
        return None

    def forget_adapter(self, name: str) -> None:
        """Drop a renamed or deleted adapter so a later request cannot reach the stale name."""
        return None

    @property
    def recommended_concurrency(self) -> int:
        """How many requests the UI should let in at once (1 = one at a time)."""
        return 1

    def close(self) -> None:
        """Free native resources (threads, contexts); the backend is unusable afterwards."""
        return None


class ComputeLockExecutor(ThreadPoolExecutor):
    """The engine's one model thread, whose every job holds ``lock`` while it runs.

    All torch work runs here, and so do the fast engine's decode steps (in bursts, see core.backends.batching):
    two thread pools computing at once on 2 cores throttle each other, and torch and llama.cpp share one OpenMP
    runtime, which slows both when each drives it from its own thread.
    """

    def __init__(self, lock: threading.Lock, thread_name_prefix: str) -> None:
        super().__init__(max_workers=1, thread_name_prefix=thread_name_prefix)
        self.lock = lock
        self._count = threading.Lock()
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Jobs submitted that have not started yet (a burst of decode steps yields to them)."""
        return self._waiting

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on the model thread holding the compute lock."""

        def locked() -> Any:
            with self._count:
                self._waiting -= 1
            with self.lock:
                return fn(*args, **kwargs)

        with self._count:
            self._waiting += 1
        try:
            return super().submit(locked)
        except BaseException:
            with self._count:
                self._waiting -= 1
            raise
