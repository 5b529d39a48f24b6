"""A remote chat backend: any OpenAI-compatible server (vLLM, TGI, llama.cpp server, Ollama) answers Chat and Compare.

Requests stream (``stream=True``); Stop closes the HTTP response, which cancels the request on the server. Sampling
settings map to the request (top-k and the repetition penalty as the extra fields vLLM and llama.cpp accept), the
seed is sent as OpenAI's ``seed``. Adapters map to served model names: vLLM ``--lora-modules support-bot=/path``
makes ``model="support-bot"`` select that adapter. Every failure becomes a ChatError that says what happened and
what to do, within the client's timeouts, and the DemoForge server keeps serving.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from core.backends.base import ChatBackend
from core.chat import Message, ReplyStats, StreamPiece, normalise_messages
from core.config import GenerationSettings
from core.errors import ChatError

CONNECT_TIMEOUT_S = 3.0
"""A server that does not accept the connection within this is reported as down."""
READ_TIMEOUT_S = 30.0
"""Longest silence between two streamed pieces (or before the first) before the request is given up."""


class OpenAIBackend(ChatBackend):
    """Chat through an OpenAI-compatible ``/v1`` API."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        model: str | None = None,
        read_timeout_s: float = READ_TIMEOUT_S,
        context_length: int = 8192,
    ) -> None:
        """Args:
        base_url: the server's API root, e.g. ``http://127.0.0.1:8000/v1``.
        api_key: sent as a bearer token (servers without auth ignore it).
        model: the served model to chat with; None = the first one ``/v1/models`` lists.
        """
        import httpx
        import openai

        self._openai = openai
        self.base_url = base_url.rstrip("/")
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key or "not-needed",
            max_retries=0,  # a clear error now beats a silent retry loop
            timeout=httpx.Timeout(read_timeout_s, connect=CONNECT_TIMEOUT_S),
        )
        self._model = model
        self._context = context_length

    # --- errors --------------------------------------------------------------------------------------------------

    def _explain(self, exc: Exception, model: str | None = None, got: int = 0) -> ChatError:
        """An openai exception -> a ChatError that says what happened and how to fix it."""
        o = self._openai
        where = f"the chat server at {self.base_url}"
        if isinstance(exc, o.APITimeoutError):
            return ChatError(f"{where} did not answer within {READ_TIMEOUT_S:.0f} s. It may be overloaded; try again.")
        if isinstance(exc, o.APIConnectionError):
            if got:
                return ChatError(f"The connection to {where} broke after {got} tokens of the reply. Try again.")
            return ChatError(
                f"Cannot reach {where}: is it running, and is --base-url right (it usually ends in /v1)? ({exc})"
            )
        if isinstance(exc, o.AuthenticationError | o.PermissionDeniedError):
            return ChatError(f"{where} refused the API key. Pass the right one with --api-key or DEMOFORGE_API_KEY.")
        if isinstance(exc, o.NotFoundError):
            served = ", ".join(self._served_or_empty()) or "none listed"
            return ChatError(f"{where} does not serve a model called {model!r} (it serves: {served}).")
        if isinstance(exc, o.APIStatusError):
            return ChatError(f"{where} answered HTTP {exc.status_code}: {exc.message}")
        return ChatError(f"{where} failed: {type(exc).__name__}: {exc}")

    def _served_or_empty(self) -> list[str]:
        try:
            return self.models()
        except ChatError:
            return []

    # --- models --------------------------------------------------------------------------------------------------

    def models(self) -> list[str]:
        """The model names the server lists at ``/v1/models`` (adapters served by name included)."""
        try:
            return [m.id for m in self._client.models.list()]
        except self._openai.OpenAIError as exc:
            raise self._explain(exc) from exc

    @property
    def model(self) -> str:
        """The model chat uses without an adapter (the server's first one unless given)."""
        if self._model is None:
            served = self.models()
            if not served:
                raise ChatError(f"The chat server at {self.base_url} lists no models at /v1/models.")
            self._model = served[0]
        return self._model

    @property
    def label(self) -> str:
        """Model name · remote server."""
        try:
            return f"{self.model} · OpenAI-compatible server at {self.base_url}"
        except ChatError as exc:
            return f"remote server at {self.base_url} (unreachable: {exc})"

    @property
    def context_length(self) -> int:
        """As configured (the OpenAI API does not report it)."""
        return self._context

    @property
    def recommended_concurrency(self) -> int:
        """The server batches; DemoForge only relays."""
        return 16

    def switch_adapter(self, name: str | None) -> float:
        """Check that the server serves ``name`` (an adapter is a served model name); returns the seconds taken."""
        start = time.perf_counter()
        if name and name not in self.models():
            raise ChatError(
                f"The chat server at {self.base_url} does not serve {name!r}. Serve the adapter under that name "
                f"(vLLM: --enable-lora --lora-modules {name}=/path/to/adapter)."
            )
        return time.perf_counter() - start

    # --- chat ----------------------------------------------------------------------------------------------------

    def request_kwargs(self, settings: GenerationSettings) -> dict[str, Any]:
        """GenerationSettings -> chat.completions arguments (temperature 0 = greedy)."""
        kwargs: dict[str, Any] = {"max_tokens": settings.max_new_tokens, "temperature": settings.temperature}
        extra: dict[str, Any] = {}
        if not settings.greedy:
            kwargs["top_p"] = settings.top_p
            if settings.top_k > 0:
                extra["top_k"] = settings.top_k
        if settings.repetition_penalty != 1.0:
            extra["repetition_penalty"] = settings.repetition_penalty  # vLLM, TGI
            extra["repeat_penalty"] = settings.repetition_penalty  # llama.cpp server
        if settings.seed is not None:
            kwargs["seed"] = settings.seed
        if extra:
            kwargs["extra_body"] = extra
        return kwargs

    def stream(
        self,
        messages: list[Message],
        settings: GenerationSettings,
        system_prompt: str | None = None,
        adapter: str | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[StreamPiece]:
        """See :meth:`ChatBackend.stream`; the server truncates nothing, so a too-long prompt is its error."""
        msgs = normalise_messages(messages, system_prompt)
        model = adapter or self.model
        start = time.perf_counter()
        stats = ReplyStats()
        text = ""
        try:
            response = self._client.chat.completions.create(
                model=model, messages=msgs, stream=True, **self.request_kwargs(settings)
            )
        except self._openai.OpenAIError as exc:
            raise self._explain(exc, model) from exc
        finished = False
        try:
            for chunk in response:
                if stop is not None and stop.is_set():
                    stats.stopped = True
                    break
                if not chunk.choices:
                    continue
                piece = chunk.choices[0].delta.content or ""
                if piece:
                    stats.new_tokens += 1  # one streamed chunk is one token on vLLM and llama.cpp
                    if stats.first_token_s is None:
                        stats.first_token_s = time.perf_counter() - start
                    text += piece
                    yield StreamPiece(text=text)
                if chunk.choices[0].finish_reason is not None:
                    finished = True
            if not finished and not stats.stopped:
                raise ChatError(
                    f"The chat server at {self.base_url} ended the stream after {stats.new_tokens} tokens "
                    "without finishing the reply. Try again."
                )
        except self._openai.OpenAIError as exc:
            raise self._explain(exc, model, stats.new_tokens) from exc
        finally:
            response.close()  # on Stop (generator closed) this cancels the request on the server
        stats.total_s = time.perf_counter() - start
        yield StreamPiece(text=text, stats=stats, done=True)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()
