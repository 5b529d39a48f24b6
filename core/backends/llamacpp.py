"""The fast CPU chat backend: llama.cpp (through llama-cpp-python's C API) on the embedded GGUF or any .gguf file.

Prompts are built exactly as on the transformers path: the model's Hugging Face tokenizer and chat template
(``core.chat.build_prompt``, truncation and its notice included) make the token ids; llama.cpp only decodes.
Many requests decode together in one context (``core.backends.batching``). LoRA adapters from the library are
written once as GGUF LoRAs (``core.backends.lora_gguf``) and applied at run time; the base is never reloaded.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import adapters, specs, store
from core.backends import lora_gguf, weight_buffers
from core.backends.base import ChatBackend
from core.backends.threads import ThreadTuner, candidates
from core.chat import Message, ReplyStats, StreamPiece, build_prompt, normalise_messages
from core.config import GenerationSettings
from core.errors import AdapterError, ModelError

if TYPE_CHECKING:
    from core.engine import Engine

log = logging.getLogger(__name__)

DEFAULT_SLOTS = 8
"""Sequences decoded together. Measured on 2 busy cores (tests/bench/bench_engines.py, load ~6 from other jobs):
8 concurrent chats through the app made 57 tok/s together, 1.9x one stream, with no errors; each visitor still
reads faster than ~7 tok/s. More slots only lengthen each step; requests beyond them wait in the scheduler."""


WEIGHT_LAYOUTS = ("auto", "plain", "repacked")

BUSY_INTERVAL_S = 0.2
"""Longest wait between a visitor's stream updates when many chats run (see LlamaCppBackend.stream)."""


@dataclass
class LlamaCppOptions:
    """How the llama.cpp context is sized."""

    threads: int | None = None
    """Compute threads; None = measured while serving (core.backends.threads): all the CPUs this process may use
    on a quiet machine, fewer when other work contends for them. Steps run on the engine's model thread, as every
    torch job does: the two never compute at once, so each may use every core."""
    slots: int = DEFAULT_SLOTS
    """Requests decoded together (sequence slots)."""
    kv_cells: int = 8192
    """KV-cache cells shared by all slots; one request may use up to the model's context."""
    n_batch: int = 512
    """Most tokens per decode call (running tokens + prompt chunks)."""
    cache_cells: int = 2048
    """KV cells finished chats may keep for prefix reuse (their system prompt and turns skip the prefill)."""
    weights: str = ""
    """Weight layout: ``repacked`` (llama.cpp's CPU-specific layouts, AMX tiles on a Xeon), ``plain``, or ``auto``:
    measured once per machine, build and model (core.backends.weight_buffers). Empty = ``$DEMOFORGE_LLAMA_WEIGHTS``,
    else ``auto``."""

    def __post_init__(self) -> None:
        self.weights = (self.weights or os.environ.get("DEMOFORGE_LLAMA_WEIGHTS", "") or "auto").strip().lower()
        if self.weights not in WEIGHT_LAYOUTS:
            raise ModelError(
                f"Unknown llama.cpp weight layout {self.weights!r}: use one of {', '.join(WEIGHT_LAYOUTS)}."
            )
        if (self.threads is not None and self.threads < 1) or self.cache_cells < 0:
            raise ModelError(f"llama.cpp options out of range: {self}")
        if self.slots < 1 or self.kv_cells < 256 or self.n_batch < 32:
            raise ModelError(f"llama.cpp options out of range: {self}")


def plain_llama(path: Path, repacked: bool = False, **kwargs: Any) -> Any:
    """llama-cpp-python's high-level ``Llama`` on ``path`` with the given weight layout (llama-cpp-python's own
    default is repacked, which crashes some builds: see core.backends.weight_buffers); the reference for benchmarks
    and the quality guard."""
    import llama_cpp

    low = llama_cpp.llama_cpp  # what Llama calls for its model parameters (it has no switch for the layout)
    defaults = low.llama_model_default_params
    low.llama_model_default_params = lambda: weight_buffers.load_params(repacked)
    try:
        return llama_cpp.Llama(str(path), verbose=False, **kwargs)
    finally:
        low.llama_model_default_params = defaults


def _load_model(lc: Any, gguf: Path, repacked: bool) -> Any:
    """Loads the GGUF on a short-lived thread. Repacking weights (AMX) runs an OpenMP parallel loop, and GNU OpenMP
    keeps a pool of workers for each thread that ran one until that thread exits. Loaded on the caller's thread, that
    pool outlived the load beside the one decoding uses; with more OpenMP threads than CPUs libgomp cuts its
    spin-waits and every barrier sleeps: decoding fell from ~140 to ~25 tok/s on the 2-core Xeon. This thread's pool
    ends with it."""
    box: dict[str, Any] = {}

    def load() -> None:
        try:
            box["model"] = lc.llama_model_load_from_file(str(gguf).encode(), weight_buffers.load_params(repacked))
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=load, name="llama.cpp-load", daemon=True)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box.get("model")


def _hf_tokenizer(gguf: Path, spec: str) -> Any:
    """The Hugging Face tokenizer of the model (the cached safetensors copy's for the embedded one)."""
    from transformers import AutoTokenizer

    from core.models import _CACHE_VERSION, EMBEDDED_CHAT_NAME

    if spec.strip().lower() in specs.CHAT_ALIASES:
        from core import store

        cached = store.subdir("models") / f"{EMBEDDED_CHAT_NAME.lower()}-v{_CACHE_VERSION}"
        if (cached / "tokenizer_config.json").is_file():
            tok = AutoTokenizer.from_pretrained(cached)
        else:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    else:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


class LlamaCppBackend(ChatBackend):
    """Chat on a GGUF with llama.cpp: continuous batching, runtime LoRA, the transformers prompt."""

    name = "llama.cpp"

    def __init__(
        self,
        gguf: Path,
        tokenizer: Any,
        base_model: str = "default",
        options: LlamaCppOptions | None = None,
        exclusive: Callable[..., Any] | None = None,
        display_name: str | None = None,
        home: Path | None = None,
        others_waiting: Callable[[], bool] | None = None,
    ) -> None:
        """Args:
        gguf: the model file. tokenizer: its Hugging Face tokenizer (builds the prompts).
        base_model: the app's model spec; adapters trained on another base are refused.
        exclusive: runs each burst of decode steps (on the engine's model thread: llama.cpp never computes
            alongside torch work, and both use one OpenMP pool; see core.backends.batching).
        others_waiting: whether jobs wait for that thread (a burst then hands it back after its current step).
        """
        import llama_cpp as lc

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's load log goes to stderr else
        self._lc = lc
        self.gguf, self.tokenizer, self.base_model = gguf, tokenizer, base_model
        self.home = home  # the engine's DemoForge home (None: the environment's), where adapters are looked up
        self.options = options or LlamaCppOptions()
        self._display = display_name or gguf.stem
        start = time.perf_counter()
        opts = self.options
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.weight_choice = self._weight_layout(gguf, opts.threads or cpus)
        self._layout_label = f"{weight_buffers.layout_name()} weights, " if self.weight_choice.repacked else ""
        lc.llama_backend_init()
        self._model = _load_model(lc, gguf, self.weight_choice.repacked)
        if not self._model:
            raise ModelError(f"llama.cpp could not load {gguf} (an architecture it does not know, or a bad file).")
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = opts.kv_cells
        cparams.n_batch = cparams.n_ubatch = opts.n_batch
        cparams.n_seq_max = opts.slots
        tuner = ThreadTuner(candidates(cpus)) if opts.threads is None else None
        cparams.n_threads = cparams.n_threads_batch = opts.threads or cpus
        cparams.kv_unified = True  # one pool of cells shared by all slots: a single long chat may use all of it
        cparams.no_perf = True
        self._ctx = lc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lc.llama_model_free(self._model)
            raise ModelError(f"llama.cpp could not create a context for {gguf} ({opts.kv_cells} KV cells).")
        vocab = lc.llama_model_get_vocab(self._model)
        buf = ctypes.create_string_buffer(128)
        lc.llama_model_desc(self._model, buf, len(buf))
        self._desc = buf.value.decode(errors="replace")  # e.g. 'llama ?B Q4_1 - Medium'
        self._context = min(int(lc.llama_n_ctx_train(self._model)), opts.kv_cells)
        from core.backends.batching import BatchScheduler

        self._native = threading.Lock()
        self._prompt_lock = threading.Lock()  # a fast tokenizer must not be used from two threads at once
        self._loras: dict[str, tuple[Path, Any]] = {}
        self._base_info: lora_gguf.BaseInfo | None = None
        self._sched = BatchScheduler(
            self._ctx,
            vocab,
            opts.slots,
            opts.kv_cells,
            opts.n_batch,
            self._native,
            exclusive,
            tuner,
            opts.cache_cells,
            others_waiting,
        )
        self.load_seconds = time.perf_counter() - start

    def _weight_layout(self, gguf: Path, threads: int) -> weight_buffers.WeightChoice:
        """The layout asked for, or the measured one (``auto``)."""
        asked = self.options.weights
        if asked != "auto":
            return weight_buffers.WeightChoice(asked == "repacked", f"asked for {asked} weights", {}, {})
        return weight_buffers.choose(gguf, threads, store.subdir("cache", self.home))

    @classmethod
    def from_engine(cls, engine: Engine, gguf: Path) -> LlamaCppBackend:
        """The backend for an engine's chat model: steps run on its model thread; slots from its concurrency."""
        config = engine.config
        slots = config.concurrency if config.concurrency > 1 else DEFAULT_SLOTS
        name = "SmolLM2-135M-Instruct" if config.model.strip().lower() in specs.CHAT_ALIASES else gguf.stem
        return cls(
            gguf,
            _hf_tokenizer(gguf, config.model),
            config.model,
            LlamaCppOptions(slots=slots),
            exclusive=engine.on_model_thread,
            display_name=name,
            home=engine.home,
            others_waiting=lambda: engine.model_thread_waiting > 0,
        )

    # --- ChatBackend ---------------------------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """Name · quantisation · engine with its threads and parallel slots."""
        quant = self._desc.split()[-1] if self._desc else "GGUF"
        o = self.options
        tuner = self._sched.tuner
        threads = f"{o.threads} threads" if tuner is None else f"{'/'.join(map(str, tuner.choices))} threads, measured"
        return f"{self._display} · {quant} GGUF · llama.cpp ({self._layout_label}{threads}, {o.slots} chats at once)"

    @property
    def context_length(self) -> int:
        """The model's trained context, capped by the KV pool."""
        return self._context

    @property
    def recommended_concurrency(self) -> int:
        """One UI request per slot: more would only wait inside the scheduler."""
        return self.options.slots

    @property
    def load(self) -> tuple[int, int]:
        """(running, waiting) requests in the scheduler."""
        return self._sched.load

    def stream(
        self,
        messages: list[Message],
        settings: GenerationSettings,
        system_prompt: str | None = None,
        adapter: str | None = None,
        stop: threading.Event | None = None,
        min_interval_s: float = 0.05,
    ) -> Iterator[StreamPiece]:
        """See :meth:`ChatBackend.stream`. ``min_interval_s`` coalesces pieces (~20 UI updates a second with one
        chat running). With several running, each visitor's updates come less often (up to ``BUSY_INTERVAL_S``
        apart): every update is server work (a diff, an SSE message) on the cores that decode, and the tokens
        arrive in the same steps either way."""
        msgs = normalise_messages(messages, system_prompt)
        with self._prompt_lock:
            plan = build_prompt(self.tokenizer, msgs, self.context_length, settings.max_new_tokens)
        from core.backends.batching import Request

        req = Request(ids=plan.input_ids, settings=settings, lora=self._lora(adapter) if adapter else None)
        start = time.perf_counter()
        stats = ReplyStats(prompt_tokens=len(plan.input_ids), notice=plan.notice)
        self._sched.submit(req)
        text, last, finished = "", 0.0, False
        interval, checked = min_interval_s, 0
        try:
            if plan.notice:
                yield StreamPiece(text="", notice=plan.notice)
            while True:
                # Checked on every token, not only when none arrives: tokens come faster than the 50 ms wait, so
                # a stop checked only on an empty queue waited for the whole reply.
                if stop is not None and stop.is_set() and not req.cancel.is_set():
                    req.cancel.set()
                    self._sched.wake()
                try:
                    kind, value = req.out.get(timeout=0.05)
                except queue.Empty:
                    continue
                if kind == "text":
                    stats.new_tokens += 1
                    if min_interval_s and stats.new_tokens - checked >= 16:  # the load, now and then
                        checked = stats.new_tokens
                        running = self._sched.load[0]
                        interval = min(BUSY_INTERVAL_S, max(min_interval_s, min_interval_s * running / 2))
                    if stats.first_token_s is None:
                        stats.first_token_s = time.perf_counter() - start
                    text += value
                    now = time.perf_counter()
                    if value and now - last >= interval:
                        last = now
                        yield StreamPiece(text=text, notice=plan.notice)
                elif kind == "done":
                    finished, stats.stopped = True, value == "stopped"
                    break
                else:
                    finished = True
                    raise RuntimeError(f"llama.cpp failed: {value}") from value
        finally:
            if not finished:  # the consumer closed the stream (a UI stop): free the slot at the next step
                req.cancel.set()
                self._sched.wake()
        stats.total_s = time.perf_counter() - start
        yield StreamPiece(text=text, stats=stats, notice=plan.notice, done=True)

    # --- adapters ------------------------------------------------------------------------------------------------

    def _check(self, name: str) -> adapters.AdapterInfo:
        """The adapter, if it is a chat adapter of this base (the same rules and words as the transformers path)."""
        info = adapters.get(name, self.home)
        if info.task != "sft":
            raise AdapterError(f"Adapter {name!r} is a {info.task} adapter; the Chat tab needs a chat one.")
        if not specs.same_base(info.base_model, self.base_model):
            raise AdapterError(
                f"Adapter {name!r} was trained on {info.base_model!r}, but this app chats with "
                f"{self.base_model!r}. Start the app with --model {info.base_model} to use it."
            )
        return info

    def _meta(self, key: str) -> str:
        buf = ctypes.create_string_buffer(256)
        n = self._lc.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else ""

    def _base(self) -> lora_gguf.BaseInfo:
        """What LoRA conversion needs, from the loaded model's metadata (reading the GGUF header again is slow)."""
        if self._base_info is None:
            arch = self._meta("general.architecture")
            heads = int(self._meta(f"{arch}.attention.head_count") or 0)
            self._base_info = lora_gguf.BaseInfo(
                arch=arch,
                blocks=int(self._meta(f"{arch}.block_count") or 0),
                heads=heads,
                kv_heads=int(self._meta(f"{arch}.attention.head_count_kv") or heads),
            )
        return self._base_info

    def cannot_serve(self, adapter: str) -> str | None:
        """Why llama.cpp cannot apply this adapter (DoRA, extra trained modules, another architecture), or None."""
        return lora_gguf.unsupported_reason(self._check(adapter).path, self._base())

    def _lora(self, name: str) -> Any:
        """The loaded llama.cpp LoRA for ``name``: converted on first use (cached beside the adapter), then kept."""
        info = self._check(name)
        path = lora_gguf.convert(info.path, self.gguf, self._base())
        cached = self._loras.get(name)
        if cached is not None and cached[0] == path:
            return cached[1]
        with self._native:
            handle = self._lc.llama_adapter_lora_init(self._model, str(path).encode())
        if not handle:
            raise RuntimeError(f"llama.cpp could not load the LoRA {path.name} of adapter {name!r}")
        self._loras[name] = (path, handle)
        return handle

    def switch_adapter(self, name: str | None) -> float:
        """Convert (first use) and load the adapter's GGUF LoRA; a request then applies it per decode step."""
        start = time.perf_counter()
        if name:
            self._lora(name)
        return time.perf_counter() - start

    def forget_adapter(self, name: str) -> None:
        """Drop the name (its LoRA stays allocated until close: a running reply may still use it)."""
        self._loras.pop(name, None)

    def close(self) -> None:
        """Stop the scheduler and free the context and model."""
        self._sched.close()
        with self._native:
            self._lc.llama_free(self._ctx)
            self._lc.llama_model_free(self._model)
