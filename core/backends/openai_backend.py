"""Chat on a remote OpenAI-compatible server (vLLM, TGI, llama.cpp's server, Ollama) through the ``openai`` package.

The server tokenizes and generates; DemoForge sends the role/content history and streams the reply back. Nothing
chat-related loads locally. Adapters map to served model names (vLLM ``--lora-modules NAME=path``), loaded at run
time where the server allows it (vLLM ``POST /v1/load_lora_adapter``). Every failure becomes a ChatError (or an
AdapterError) that names what to fix, within the connect timeout; the key is never logged or shown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from core import adapters
from core.backends.base import ChatBackend
from core.backends.openai_request import CloseOnStop, context_of, fit_messages, sampling_request, server_message
from core.chat import Message, ReplyStats, StreamPiece, normalise_messages
from core.config import GenerationSettings
from core.errors import AdapterError, ChatError, ConfigError

if TYPE_CHECKING:
    from core.engine import Engine

log = logging.getLogger(__name__)


@dataclass
class OpenAIOptions:
    """Where the server is and how long to wait for it."""

    base_url: str
    """The API root, e.g. http://127.0.0.1:8000/v1 (vLLM), http://127.0.0.1:11434/v1 (Ollama)."""
    api_key: str | None = None
    """Bearer key the server was started with (vLLM/llama.cpp ``--api-key``); None sends a placeholder."""
    model: str | None = None
    """Served model to chat with; None: the first one the server lists."""
    connect_timeout_s: float = 3.0
    """A down or wrong server is reported after this long, not after the read timeout."""
    read_timeout_s: float = 60.0
    """Longest silence between two streamed pieces (a long prompt's prefill happens inside it)."""
    context_length: int = 2048
    """Context window used when the server does not say (llama.cpp's server and vLLM do, in /v1/models)."""
    concurrency: int = 4
    """Chats the UI lets in at once (the server batches them; llama-cpp-python's server answers one at a time)."""

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"--base-url {self.base_url!r} is not a URL: give the server's API root, e.g. http://127.0.0.1:8000/v1"
            )
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0 or self.context_length < 64:
            raise ConfigError(f"OpenAI backend options out of range: {self!r}")

    def __repr__(self) -> str:  # never show the key, even in a traceback or a log line
        key = "set" if self.api_key else "none"
        return f"OpenAIOptions(base_url={self.base_url!r}, api_key={key}, model={self.model!r})"


class OpenAIBackend(ChatBackend):
    """Chat through an OpenAI-compatible server: streaming, Stop that closes the HTTP stream, served-model picker."""

    name = "openai"

    def __init__(self, options: OpenAIOptions, base_model: str = "default", home: Path | None = None) -> None:
        """Args:
        options: the server. base_model: the local base adapters are trained on (the library's filter).
        home: the DemoForge home where adapters are looked up (None: the environment's).
        """
        import httpx2
        import openai

        self._openai, self._httpx = openai, httpx2
        logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per request would flood the server log
        self.options, self.base_model, self.home = options, base_model, home
        timeout = httpx2.Timeout(options.read_timeout_s, connect=options.connect_timeout_s)
        # max_retries=0: a retry would double every failure's wait, and a streamed request must not be sent twice.
        self._client = openai.OpenAI(
            base_url=options.base_url, api_key=options.api_key or "none", timeout=timeout, max_retries=0
        )
        self._lock = threading.Lock()
        self._models: dict[str, int | None] | None = None  # served name -> context it states
        self._chosen = options.model
        self._runtime_lora: bool | None = None  # None: not tried; False: the server refused runtime loading

    @classmethod
    def from_engine(cls, engine: Engine) -> OpenAIBackend:
        """The backend for an engine whose config says ``backend='openai'``."""
        c = engine.config
        options = OpenAIOptions(
            base_url=c.base_url or "",
            api_key=c.api_key,
            model=c.served_model,
            context_length=c.context_length,
            concurrency=c.concurrency if c.concurrency > 1 else OpenAIOptions.concurrency,
        )
        return cls(options, c.model, engine.home)

    # --- the server's models ---------------------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """The server's address as the user gave it (no key)."""
        return self.options.base_url

    def served_models(self, refresh: bool = False) -> list[str]:
        """The model names the server lists at /v1/models (cached: llama-cpp-python's server interrupts a running
        reply to answer it). Raises ChatError when the server cannot be asked."""
        with self._lock:
            if self._models is None or refresh:
                try:
                    page = self._client.models.list()
                except self._openai.NotFoundError:
                    raise ChatError(
                        f"{self.where} has no /models list: give --base-url as the server's API root, "
                        "usually ending in /v1 (e.g. http://127.0.0.1:8000/v1)."
                    ) from None
                except self._openai.OpenAIError as exc:
                    raise self._error(exc, self._chosen) from None
                self._models = {m.id: context_of(m.model_dump()) for m in page.data}
            return list(self._models)

    @property
    def model(self) -> str:
        """The served model chat uses: the chosen one, else the first listed."""
        if self._chosen:
            return self._chosen
        listed = self.served_models()
        if not listed:
            raise ChatError(f"The chat server at {self.where} lists no models at /v1/models: start it with a model.")
        return listed[0]

    def choose_model(self, name: str) -> str:
        """Chat with served model ``name`` from now on (the builder's picker); returns it."""
        listed = self.served_models()
        if name not in listed:
            raise ChatError(f"The chat server at {self.where} does not serve {name!r}; it serves: {', '.join(listed)}.")
        self._chosen = name
        return name

    # --- ChatBackend -----------------------------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """Served model · server · engine; says so when the server cannot be reached (the app still starts)."""
        try:
            model = self.model
        except ChatError as exc:
            return f"{self._chosen or '?'} · OpenAI-compatible server at {self.where} (not reachable now: {exc})"
        return f"{model} · OpenAI-compatible server at {self.where}"

    @property
    def context_length(self) -> int:
        """What the server states for the chosen model, else the configured default."""
        try:
            stated = (self._models or {}).get(self.model)
        except ChatError:
            stated = None
        return stated or self.options.context_length

    @property
    def recommended_concurrency(self) -> int:
        """The configured chats at once: the server, not this process, does the work."""
        return self.options.concurrency

    def stream(
        self,
        messages: list[Message],
        settings: GenerationSettings,
        system_prompt: str | None = None,
        adapter: str | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[StreamPiece]:
        """See :meth:`ChatBackend.stream`. Stop (``stop`` or closing the generator) closes the HTTP stream at once,
        which is what makes the server stop generating."""
        msgs = normalise_messages(messages, system_prompt)
        model = self._served(adapter) if adapter else self.model
        context = self.context_length
        budget = context - settings.max_new_tokens
        if budget < 8:
            raise ChatError(
                f"max new tokens ({settings.max_new_tokens}) leaves no room for the prompt in this model's "
                f"{context}-token context. Lower max new tokens."
            )
        msgs, dropped = fit_messages(msgs, budget)
        notice = None
        if dropped:
            notice = (
                f"The conversation looked longer than the model's context ({context:,} tokens, estimated from its "
                f"length: the server tokenizes): the oldest {dropped} message{'s' if dropped != 1 else ''} were "
                "left out of this reply's prompt."
            )
        start = time.perf_counter()
        stats = ReplyStats(notice=notice)
        try:
            response = self._client.chat.completions.create(
                model=model, messages=msgs, stream=True, **sampling_request(settings)
            )
        except self._openai.OpenAIError as exc:
            raise self._error(exc, model) from None
        watcher = CloseOnStop(stop, response) if stop is not None else None
        text, finish = "", None
        try:
            if notice:
                yield StreamPiece(text="", notice=notice)
            try:
                for chunk in response:
                    if stop is not None and stop.is_set():
                        stats.stopped = True
                        break
                    if chunk.usage is not None:
                        stats.prompt_tokens = chunk.usage.prompt_tokens or 0
                    for choice in chunk.choices:
                        piece = choice.delta.content if choice.delta else None
                        finish = choice.finish_reason or finish
                        if piece:
                            stats.new_tokens += 1  # one token a chunk on llama.cpp's and vLLM's servers
                            if stats.first_token_s is None:
                                stats.first_token_s = time.perf_counter() - start
                            text += piece
                            yield StreamPiece(text=text, notice=notice)
            except (self._openai.OpenAIError, self._httpx.HTTPError) as exc:  # the stream broke (or we closed it)
                if watcher is not None and watcher.fired:
                    stats.stopped = True  # our own close of the stream, not the server's
                else:
                    raise self._cut(exc, text) from None
            if finish is None and not stats.stopped:
                raise ChatError(
                    f"The chat server at {self.where} ended the stream before the reply finished "
                    f"({len(text)} characters received; llama-cpp-python's server ends a reply when another request "
                    "arrives). Send the message again."
                )
        finally:
            if watcher is not None:
                watcher.done()
            response.close()  # a no-op after a full reply; on Stop it drops the connection and the server stops
        stats.total_s = time.perf_counter() - start
        yield StreamPiece(text=text, stats=stats, notice=notice, done=True)

    # --- adapters --------------------------------------------------------------------------------------------------

    def _served(self, adapter: str) -> str:
        """The served model name for ``adapter``: listed by the server, or loaded into it now (vLLM runtime LoRA)."""
        info = adapters.get(adapter, self.home)
        if info.task != "sft":
            raise AdapterError(f"Adapter {adapter!r} is a {info.task} adapter; the Chat tab needs a chat one.")
        if info.name in self.served_models():
            return info.name
        if self._runtime_lora is not False:
            try:
                self._client.post(
                    "/load_lora_adapter",
                    cast_to=str,
                    body={"lora_name": info.name, "lora_path": str(info.path)},
                )
            except self._openai.NotFoundError:
                self._runtime_lora = False  # no such endpoint: don't try again for every request
            except self._openai.APIStatusError as exc:
                raise AdapterError(
                    f"The chat server at {self.where} refused to load adapter {info.name!r} "
                    f"({exc.status_code}: {server_message(exc)}). {self._serve_hint(info.name)}"
                ) from None
            except self._openai.OpenAIError as exc:
                raise self._error(exc, info.name) from None
            else:
                self._runtime_lora = True
                log.info("Loaded adapter %s into the chat server at %s", info.name, self.where)
                with self._lock:
                    if self._models is not None:
                        self._models.setdefault(info.name, None)
                return info.name
        raise AdapterError(
            f"The chat server at {self.where} does not serve adapter {info.name!r} and cannot load one at run time. "
            + self._serve_hint(info.name)
        )

    def _serve_hint(self, name: str) -> str:
        """One command that serves ``name`` (the Adapters tab's 'Serve on backend' has them all)."""
        from core.serve_recipes import serve_commands

        lines = [ln for ln in serve_commands(name, self.home).splitlines() if ln.startswith("vllm serve")]
        cmd = f" e.g. `{lines[0]}`" if lines else ""
        return f"Serve it under its name:{cmd} (Adapters tab → Serve on backend lists vLLM, llama.cpp and Ollama)."

    def switch_adapter(self, name: str | None) -> float:
        """Make sure the server serves ``name`` (loading it at run time where it can); returns the seconds taken."""
        start = time.perf_counter()
        if name:
            self._served(name)
        return time.perf_counter() - start

    def forget_adapter(self, name: str) -> None:
        """A renamed or deleted adapter: forget the cached list so the server is asked again."""
        with self._lock:
            self._models = None

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    # --- errors ----------------------------------------------------------------------------------------------------

    def _error(self, exc: Exception, model: str | None) -> ChatError:
        """A clear message for a failed request (never the key)."""
        o, where = self._openai, self.where
        if isinstance(exc, o.APITimeoutError):
            return ChatError(
                f"The chat server at {where} did not answer in time (connect {self.options.connect_timeout_s:g}s, "
                f"read {self.options.read_timeout_s:g}s). Check that it is running and not overloaded."
            )
        if isinstance(exc, o.APIConnectionError):
            return ChatError(
                f"Cannot reach the chat server at {where}: is it running, and is --base-url right "
                "(the API root, usually ending in /v1)?"
            )
        if isinstance(exc, o.AuthenticationError | o.PermissionDeniedError):
            return ChatError(
                f"The chat server at {where} refused the API key ({exc.status_code}). Set --api-key or "
                "DEMOFORGE_API_KEY to the key the server was started with."
            )
        if isinstance(exc, o.NotFoundError):
            try:
                listed = ", ".join(self.served_models(refresh=True)) or "none"
            except ChatError:
                listed = "(could not list them)"
            return ChatError(f"The chat server at {where} does not serve model {model!r}. It serves: {listed}.")
        if isinstance(exc, o.APIStatusError):
            message = server_message(exc)
            if "context" in message.lower() and ("length" in message.lower() or "exceed" in message.lower()):
                return ChatError(
                    f"The conversation is too long for the served model: {message} Shorten the message or the "
                    "system prompt, lower max new tokens, or clear the chat."
                )
            return ChatError(f"The chat server at {where} answered {exc.status_code}: {message}")
        return ChatError(f"The chat server at {where} failed: {type(exc).__name__}: {exc}")

    def _cut(self, exc: Exception, text: str) -> ChatError:
        """A stream that broke mid-reply (the server stopped or the network dropped)."""
        if isinstance(exc, self._openai.APIStatusError | self._openai.APITimeoutError):
            return self._error(exc, self._chosen)
        got = f"after {len(text)} characters" if text else "before the first word"
        return ChatError(
            f"The chat server at {self.where} closed the stream {got} ({type(exc).__name__}); the reply is "
            "incomplete. Check the server, then send again."
        )
