"""What goes over the wire to an OpenAI-compatible server: the request's sampling fields, the context a model list
states, trimming old turns to fit, the server's error text, and closing a stream the moment Stop is pressed."""

from __future__ import annotations

import threading
from typing import Any

from core.chat import Message
from core.config import GenerationSettings

CHARS_PER_TOKEN = 3.0
"""A cautious estimate (English runs ~4 characters a token) used only to trim old turns: the server tokenizes."""
TOKENS_PER_MESSAGE = 8
"""The chat template's role markers per message, estimated."""


def context_of(entry: dict[str, Any]) -> int | None:
    """The context window a /v1/models entry states: llama.cpp ``meta.n_ctx_train``, vLLM ``max_model_len``."""
    meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
    for value in (entry.get("max_model_len"), meta.get("n_ctx"), meta.get("n_ctx_train"), entry.get("context_length")):
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit_messages(msgs: list[Message], budget_tokens: int) -> tuple[list[Message], int]:
    """Drop the oldest turns until the estimated prompt fits ``budget_tokens``; (kept messages, dropped count).

    The system prompt and the latest user message always stay; the kept history never starts with the assistant.
    """
    system = [m for m in msgs[:1] if m["role"] == "system"]
    turns = msgs[len(system) :]

    def estimate(kept: list[Message]) -> float:
        return sum(len(m["content"]) / CHARS_PER_TOKEN + TOKENS_PER_MESSAGE for m in system + kept)

    dropped = 0
    while estimate(turns) > budget_tokens and len(turns) > 1:
        turns, dropped = turns[1:], dropped + 1
        while len(turns) > 1 and turns[0]["role"] != "user":
            turns, dropped = turns[1:], dropped + 1
    return system + turns, dropped


def sampling_request(settings: GenerationSettings) -> dict[str, Any]:
    """The request fields for ``settings``: OpenAI's own, and top_k / repetition penalty in ``extra_body``.

    llama.cpp's servers read ``repeat_penalty``, vLLM reads ``repetition_penalty``; each ignores the other's name.
    """
    req: dict[str, Any] = {"max_tokens": settings.max_new_tokens, "temperature": settings.temperature}
    extra: dict[str, Any] = {}
    if not settings.greedy:
        req["top_p"] = settings.top_p
        if settings.top_k > 0:
            extra["top_k"] = settings.top_k
    if settings.repetition_penalty != 1.0:
        extra["repeat_penalty"] = extra["repetition_penalty"] = settings.repetition_penalty
    if settings.seed is not None:
        req["seed"] = settings.seed
    if extra:
        req["extra_body"] = extra
    return req


def server_message(exc: Any) -> str:
    """The server's own error text ({"error": {"message"}} on OpenAI-style servers, FastAPI's {"detail"})."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            found = inner.get("message") or inner.get("detail")
            if found:
                return str(found)
        if isinstance(body.get("detail"), str):
            return body["detail"]
    return str(getattr(exc, "message", exc))


class CloseOnStop:
    """Closes the HTTP stream as soon as ``stop`` is set, even while the reader waits for the next chunk."""

    def __init__(self, stop: threading.Event, response: Any) -> None:
        self.fired = False
        self._stop, self._response, self._finished = stop, response, threading.Event()
        threading.Thread(target=self._watch, name="demoforge-openai-stop", daemon=True).start()

    def _watch(self) -> None:
        while not self._finished.is_set():
            if self._stop.wait(0.05):
                self.fired = True
                self._response.close()
                return

    def done(self) -> None:
        """The reply ended: stop watching."""
        self._finished.set()
