"""The engine: owns loaded models (and later jobs and adapters) and is passed to every tab. No global state."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from core.chat import Message, StreamPiece, stream_reply
from core.config import AppConfig, GenerationSettings
from core.models import LoadedModel, load_causal_lm

log = logging.getLogger(__name__)


class Engine:
    """Loads the chat model once (lazily, thread-safe) and serves chat replies from it."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self._chat: LoadedModel | None = None
        self._load_lock = threading.Lock()

    def chat_model(self) -> LoadedModel:
        """The loaded chat model; the first call loads it (concurrent first calls wait for one load)."""
        if self._chat is None:
            with self._load_lock:
                if self._chat is None:
                    self._chat = load_causal_lm(self.config.model, self.config.device, self.config.dtype)
                    log.info("Loaded %s in %.1fs (%s)", self._chat.label, self._chat.load_seconds, self._chat.source)
        return self._chat

    def chat_label(self) -> str:
        """Name · precision · device of the chat model (loads it if needed)."""
        return self.chat_model().label

    def chat_stream(
        self, history: list[Message], settings: GenerationSettings, system_prompt: str | None = None
    ) -> Iterator[StreamPiece]:
        """Stream a reply from the chat model; see :func:`core.chat.stream_reply`."""
        return stream_reply(self.chat_model(), history, settings, system_prompt)
