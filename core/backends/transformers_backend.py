"""The reference chat backend: transformers generate() on the engine's model thread, adapters attached with peft.

This is the path every other backend is measured against, and the fallback when a faster one cannot serve a
request. It keeps the engine's rules: all torch work on the one model thread, one generation at a time (the
active peft adapter is model state), adapters switched by name without reloading the base.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from core.backends.base import ChatBackend
from core.chat import Message, StreamPiece, stream_reply
from core.config import GenerationSettings

if TYPE_CHECKING:
    from core.engine import Engine


class TransformersBackend(ChatBackend):
    """Chat through ``core.chat.stream_reply`` on the engine's loaded model (torch)."""

    name = "transformers"

    def __init__(self, engine: Engine, notice: str | None = None) -> None:
        """Args:
        engine: owns the loaded model, its peft adapters, the generation lock and the model thread.
        notice: why this backend serves instead of a faster one (shown in the label), or None.
        """
        self._engine = engine
        self.notice = notice

    def stream(
        self,
        messages: list[Message],
        settings: GenerationSettings,
        system_prompt: str | None = None,
        adapter: str | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[StreamPiece]:
        """See :meth:`ChatBackend.stream`; ``core.chat.stream_reply`` does the work."""
        engine = self._engine
        with engine._gen_lock, engine._using(adapter) as lm:
            # ~20 updates a second look as smooth as one per token and cost the server far less.
            yield from stream_reply(
                lm, messages, settings, system_prompt, stop=stop, executor=engine._model_thread, min_interval_s=0.05
            )

    @property
    def label(self) -> str:
        """The loaded model's name · precision · device, then the engine (and why it is not the fast one)."""
        base = f"{self._engine.chat_model().label} · transformers"
        return f"{base} ({self.notice})" if self.notice else base

    @property
    def context_length(self) -> int:
        """The model's own context window."""
        return self._engine.chat_model().context_length

    def switch_adapter(self, name: str | None) -> float:
        """Attach (first time) and activate a peft adapter on the loaded base; 0 for the base."""
        engine = self._engine
        with engine._gen_lock:
            return engine.on_model_thread(engine._attach, name) if name else 0.0
