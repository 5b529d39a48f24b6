"""Pick the chat backend for an engine, and fall back to transformers (with a notice) when the fast one can't serve."""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from core import specs
from core.backends.base import ChatBackend
from core.chat import Message, StreamPiece
from core.config import GenerationSettings
from core.errors import DemoForgeError

if TYPE_CHECKING:
    from core.engine import Engine

log = logging.getLogger(__name__)

ENGINES = ("auto", "transformers", "llamacpp")


def gguf_of(model: str) -> Path | None:
    """The GGUF file a model spec names (the embedded SmolLM2, a .gguf file, a folder with one), else None."""
    if model.strip().lower() in specs.CHAT_ALIASES:
        from core.models import embedded_gguf_file

        return embedded_gguf_file()
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.gguf"))
        return found[0] if found else None
    return None


def llama_cpp_missing() -> str | None:
    """Why llama.cpp cannot be used here (not installed), or None when it can."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed: `pip install llama-cpp-python==0.3.36` (compiles ~4.5 min)"
    return None


def select_backend(engine: Engine) -> ChatBackend:
    """The backend for ``engine.config.engine``: 'transformers', 'llamacpp', or 'auto' (llama.cpp where it can run);
    with ``config.backend == 'openai'``, the remote OpenAI-compatible server instead.

    Never fails for a fast-engine problem: it falls back to transformers and the label says why.
    """
    from core.backends.transformers_backend import TransformersBackend

    config = engine.config
    if config.backend == "openai":  # chat on a remote server: nothing chat-related loads here
        from core.backends.openai_backend import OpenAIBackend

        return OpenAIBackend.from_engine(engine)
    choice = getattr(config, "engine", "auto")
    if choice == "transformers":
        return TransformersBackend(engine)
    reason = llama_cpp_missing()
    gguf = None
    if reason is None:
        if config.device not in ("auto", "cpu"):
            reason = f"llama.cpp here is a CPU build; --device {config.device} uses transformers"
        else:
            gguf = gguf_of(config.model)
            if gguf is None:
                reason = "llama.cpp serves GGUF models only; this model is not one"
    if gguf is not None:
        try:
            from core.backends.llamacpp import LlamaCppBackend

            primary = LlamaCppBackend.from_engine(engine, gguf)
        except Exception as exc:  # noqa: BLE001 - any load failure (unknown architecture, bad file): fall back
            log.warning("llama.cpp could not load %s: %s", gguf, exc)
            reason = f"llama.cpp could not load the model: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        else:
            return FallbackBackend(primary, lambda why: TransformersBackend(engine, why))
    if choice == "llamacpp":
        log.warning("--engine llamacpp asked for, but %s; serving chat with transformers", reason)
    return TransformersBackend(engine, f"fast engine off: {reason}")


class FallbackBackend(ChatBackend):
    """A fast backend that hands a request to transformers, with a notice, when it cannot serve it or fails."""

    def __init__(self, primary: ChatBackend, make_fallback: Callable[[str], ChatBackend]) -> None:
        """Args:
        primary: the fast backend.
        make_fallback: builds the fallback backend (called once, on first need) given why it is needed.
        """
        self.primary = primary
        self.name = primary.name
        self._make_fallback = make_fallback
        self._fallback: ChatBackend | None = None
        self._lock = threading.Lock()

    def fallback(self, why: str) -> ChatBackend:
        """The transformers backend (built on first use; loading the torch model takes a few seconds)."""
        with self._lock:
            if self._fallback is None:
                self._fallback = self._make_fallback(why)
        return self._fallback

    def stream(
        self,
        messages: list[Message],
        settings: GenerationSettings,
        system_prompt: str | None = None,
        adapter: str | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[StreamPiece]:
        """Stream from the fast backend; on an adapter it cannot apply or a run-time failure, from transformers."""
        why = self.primary.cannot_serve(adapter) if adapter else None
        if why is None:
            try:
                yield from self.primary.stream(messages, settings, system_prompt, adapter, stop)
                return
            except DemoForgeError:
                raise  # the request itself is wrong (too long, unknown adapter): the same on any engine
            except Exception as exc:  # a fast-engine failure must not cost the visitor the reply
                log.exception("The fast engine failed; answering this request with transformers")
                why = f"the fast engine failed ({type(exc).__name__}: {exc})"
        notice = f"This reply comes from transformers (slower): {why}."
        for piece in self.fallback(why).stream(messages, settings, system_prompt, adapter, stop):
            piece.notice = f"{notice} {piece.notice}" if piece.notice else notice
            yield piece

    @property
    def label(self) -> str:
        """The fast backend's label."""
        return self.primary.label

    @property
    def context_length(self) -> int:
        """The fast backend's context window."""
        return self.primary.context_length

    def switch_adapter(self, name: str | None) -> float:
        """Prepare the adapter on the engine that will serve it."""
        why = self.primary.cannot_serve(name) if name else None
        return self.fallback(why).switch_adapter(name) if why else self.primary.switch_adapter(name)

    def cannot_serve(self, adapter: str) -> str | None:
        """Nothing: what the fast backend cannot apply, transformers can."""
        return None

    def forget_adapter(self, name: str) -> None:
        """Forget on both engines."""
        self.primary.forget_adapter(name)
        if self._fallback is not None:
            self._fallback.forget_adapter(name)

    @property
    def recommended_concurrency(self) -> int:
        """The fast backend's."""
        return self.primary.recommended_concurrency

    def close(self) -> None:
        """Close both engines."""
        self.primary.close()
        if self._fallback is not None:
            self._fallback.close()
