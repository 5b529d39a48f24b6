"""Chat: messages -> chat-template prompt, context-window truncation, streaming generation, stop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer
from transformers import set_seed as hf_set_seed

from core.config import GenerationSettings
from core.data.tokenize import ensure_chat_template
from core.errors import ChatError
from core.models import LoadedModel

log = logging.getLogger(__name__)

Message = dict[str, str]

_ROLES = {"system", "user", "assistant"}


@dataclass
class PromptPlan:
    """The token ids to feed the model, and what had to be dropped to fit the context window."""

    input_ids: list[int]
    dropped_messages: int = 0
    notice: str | None = None


@dataclass
class ReplyStats:
    """Timing of one reply, filled in while it streams."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    first_token_s: float | None = None
    """Seconds from the call to the first generated token (prefill + one step)."""
    total_s: float = 0.0
    stopped: bool = False
    """True when the user pressed stop before the model finished."""
    notice: str | None = None

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second after the first one (the streaming speed a user sees)."""
        if self.first_token_s is None or self.new_tokens < 2:
            return 0.0
        return (self.new_tokens - 1) / max(self.total_s - self.first_token_s, 1e-9)

    def summary(self) -> str:
        """One line for the UI."""
        ttft = f"{self.first_token_s:.2f}s" if self.first_token_s is not None else "n/a"
        end = " · stopped" if self.stopped else ""
        return (
            f"{self.new_tokens} tokens in {self.total_s:.1f}s · {self.decode_tokens_per_s:.1f} tok/s · "
            f"first token {ttft} · prompt {self.prompt_tokens} tokens{end}"
        )


@dataclass
class StreamPiece:
    """One streamed update: the reply so far; ``stats`` is set on the last piece only."""

    text: str
    stats: ReplyStats | None = None
    notice: str | None = None
    done: bool = False
    extra: dict = field(default_factory=dict)


def normalise_messages(history: list[Message], system_prompt: str | None) -> list[Message]:
    """Validate roles and contents; put the system prompt first (replacing any in the history)."""
    out: list[Message] = []
    if system_prompt and system_prompt.strip():
        out.append({"role": "system", "content": system_prompt.strip()})
    for i, msg in enumerate(history):
        role, content = msg.get("role"), msg.get("content")
        if role not in _ROLES:
            raise ChatError(f"Message {i} has role {role!r}; expected one of {sorted(_ROLES)}.")
        if not isinstance(content, str):
            raise ChatError(f"Message {i} has non-text content ({type(content).__name__}); only text is supported.")
        if role == "system":
            continue
        out.append({"role": role, "content": content})
    if not out or out[-1]["role"] != "user":
        raise ChatError("The conversation must end with a user message.")
    if not out[-1]["content"].strip():
        raise ChatError("The message is empty: type something to send.")
    return out


def render_ids(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> list[int]:
    """Token ids of the chat-template prompt, ending with the assistant's generation prompt."""
    ensure_chat_template(tokenizer)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # The template already wrote any BOS token it wants; don't let the tokenizer add a second one.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def build_prompt(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    context_length: int,
    max_new_tokens: int,
) -> PromptPlan:
    """Fit the conversation into ``context_length - max_new_tokens`` tokens by dropping the oldest turns.

    The system prompt and the latest user message are always kept. When the latest message alone is too long,
    a ChatError says by how much, instead of silently cutting the user's words.
    """
    budget = context_length - max_new_tokens
    if budget < 8:
        raise ChatError(
            f"max new tokens ({max_new_tokens}) leaves no room for the prompt in this model's "
            f"{context_length}-token context. Lower max new tokens."
        )
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system) :]
    dropped = 0
    ids = render_ids(tokenizer, system + turns)
    while len(ids) > budget and len(turns) > 1:
        # Drop the oldest turn; never start the kept history with an assistant message.
        turns = turns[1:]
        dropped += 1
        while len(turns) > 1 and turns[0]["role"] != "user":
            turns = turns[1:]
            dropped += 1
        ids = render_ids(tokenizer, system + turns)
    if len(ids) > budget:
        raise ChatError(
            f"Your message is too long: the prompt needs {len(ids):,} tokens but this model reads at most "
            f"{budget:,} (its {context_length:,}-token context minus {max_new_tokens} for the reply). "
            "Shorten the message or the system prompt, or lower max new tokens."
        )
    notice = None
    if dropped:
        notice = (
            f"The conversation was longer than the model's context ({context_length:,} tokens): the oldest "
            f"{dropped} message{'s' if dropped != 1 else ''} were left out of this reply's prompt."
        )
    return PromptPlan(input_ids=ids, dropped_messages=dropped, notice=notice)


class _StopAndTime(StoppingCriteria):
    """Called once per decoding step: ends generation when ``stop`` is set and timestamps the first token."""

    def __init__(self, stop: threading.Event, stats: ReplyStats, start: float) -> None:
        self.stop, self.stats, self.start = stop, stats, start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        # input_ids: (batch, prompt + generated so far)
        self.stats.new_tokens = input_ids.shape[1] - self.stats.prompt_tokens
        if self.stats.first_token_s is None:
            self.stats.first_token_s = time.perf_counter() - self.start
        done = self.stop.is_set()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def generation_kwargs(settings: GenerationSettings, tokenizer: PreTrainedTokenizerBase) -> dict:
    """Map GenerationSettings to ``generate()`` kwargs; temperature 0 means greedy (no sampling knobs)."""
    kwargs: dict = {
        "max_new_tokens": settings.max_new_tokens,
        "repetition_penalty": settings.repetition_penalty,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }
    if settings.greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    return kwargs


def stream_reply(
    loaded: LoadedModel,
    history: list[Message],
    settings: GenerationSettings,
    system_prompt: str | None = None,
    stop: threading.Event | None = None,
    executor: Executor | None = None,
    min_interval_s: float = 0.0,
) -> Iterator[StreamPiece]:
    """Stream the assistant's reply to ``history`` (plain role/content dicts ending with a user message).

    Yields the reply so far after each decoded piece; the last piece has ``done=True`` and ``stats``.
    Closing the generator (a UI stop) or setting ``stop`` ends generation within one token step.
    ``executor`` runs generate() (the engine passes its single model thread); else a new thread does.
    ``min_interval_s`` coalesces pieces that arrive faster than that, so a UI is not re-rendered per token.
    """
    messages = normalise_messages(history, system_prompt)
    tokenizer, model = loaded.tokenizer, loaded.model
    plan = build_prompt(tokenizer, messages, loaded.context_length, settings.max_new_tokens)
    stop = stop or threading.Event()
    start = time.perf_counter()
    stats = ReplyStats(prompt_tokens=len(plan.input_ids), notice=plan.notice)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    input_ids = torch.tensor([plan.input_ids], device=model.device)
    kwargs = generation_kwargs(settings, tokenizer)
    errors: list[BaseException] = []

    def _generate() -> None:
        try:
            if settings.seed is not None:
                hf_set_seed(settings.seed)
            with torch.inference_mode():
                model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_StopAndTime(stop, stats, start)]),
                    **kwargs,
                )
        except BaseException as exc:  # noqa: BLE001 - surfaced to the caller below; the thread must never die silently
            errors.append(exc)
            streamer.end()

    if executor is not None:
        job: Future | threading.Thread = executor.submit(_generate)
    else:
        job = threading.Thread(target=_generate, name="demoforge-generate", daemon=True)
        job.start()

    def running() -> bool:
        return not job.done() if isinstance(job, Future) else job.is_alive()

    def wait(timeout: float | None = None) -> None:
        if isinstance(job, Future):
            futures_wait([job], timeout=timeout)
        else:
            job.join(timeout)

    text = ""
    try:
        if plan.notice:
            yield StreamPiece(text="", notice=plan.notice)
        last = 0.0
        for piece in streamer:
            if piece:
                text += piece
                now = time.perf_counter()
                if now - last >= min_interval_s:
                    last = now
                    yield StreamPiece(text=text, notice=plan.notice)
        wait()
        if errors:
            raise errors[0]
    finally:
        # Reached on normal end, on an exception, and on generator close (UI stop): end generation either way.
        if running():
            stop.set()
            stats.stopped = True
            wait(timeout=30)
    stats.stopped = stats.stopped or stop.is_set()
    stats.total_s = time.perf_counter() - start
    yield StreamPiece(text=text, stats=stats, notice=plan.notice, done=True)
