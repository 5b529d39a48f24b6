"""Continuous batching on one llama.cpp context: many chat requests decode together, sharing the weights.

One scheduler thread owns the context. Each step it admits waiting requests into free sequence slots (while the
shared KV cache has room for their prompt and reply), then decodes one batch: the next token of every running
sequence, plus a chunk of each new prompt. A LoRA adapter is set per context, so a step decodes the sequences of
one adapter (the base counts as one); several adapters take turns step by step. A visitor's long reply never holds
up the others: a new request joins the running batch at the next step instead of waiting for it to finish.

Prefix reuse: a finished sequence leaves its KV in its slot. A new request whose prompt starts with tokens some
slot already holds (the same system prompt, or the earlier turns of the same conversation) reuses that slot's KV,
or a copy of the shared prefix (cells are shared, not duplicated, in the unified pool), and prefills only the rest.
The time to the first token then depends on the new tokens, not the whole prompt.

Stop: the consumer sets its request's ``cancel``; the scheduler drops the sequence at the start of the next step.

Steps run in bursts on the thread ``exclusive`` gives (in the app, the engine's model thread, where all torch work
runs). That is a matter of speed, not tidiness: torch's wheel ships its own ``libgomp.so.1``, and llama.cpp's ggml,
built with OpenMP, then shares it. GNU OpenMP keeps one pool of worker threads per calling thread; once torch and
ggml each had a pool (torch on the model thread, ggml on another), libgomp counted more threads than CPUs and cut
every worker's spin-wait to ~1000 spins, so ggml's hundreds of barriers per token went through the kernel:
2 threads decoded 26 tok/s instead of 78 on 2 cores. On one thread they share one pool. A burst runs steps back to
back until nothing runs, another job waits for the thread, or ``BURST_S`` passed, so the hand-off costs one
thread switch per burst, not per token.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as lc

from core.backends.threads import ThreadTuner
from core.config import GenerationSettings

log = logging.getLogger(__name__)

PREFILL_CHUNK = 256
"""Most prompt tokens one request feeds per step, so a long new prompt delays the running replies by ~one chunk."""
BURST_S = 0.25
"""Longest run of back-to-back steps before the thread is handed back (a torch job waits at most about this)."""


@dataclass
class Request:
    """One reply to generate; the scheduler reports into ``out`` and watches ``cancel``."""

    ids: list[int]
    """The prompt's token ids (already truncated to fit the context)."""
    settings: GenerationSettings
    lora: Any = None
    """A llama_adapter_lora pointer, or None for the base."""
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    """('text', piece) per decoded token (piece may be '' mid-character), then ('done', reason) or ('error', exc)."""
    cancel: threading.Event = field(default_factory=threading.Event)
    admitted_s: float | None = None
    ignore_eos: bool = False
    """Decode exactly max_new_tokens (benchmarks, so every engine decodes the same number of tokens)."""

    @property
    def reserve(self) -> int:
        """KV cells this request may fill: its prompt plus its longest reply."""
        return len(self.ids) + self.settings.max_new_tokens


@dataclass
class _Seq:
    """A request running in sequence slot ``slot`` of the context."""

    req: Request
    slot: int
    sampler: Any
    fed: int = 0
    """Prompt tokens already decoded (or reused from a cached prefix)."""
    reused: int = 0
    """Prompt tokens whose KV came from the prefix cache."""
    last: int | None = None
    """The token sampled last (fed at the next step)."""
    generated: int = 0
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.req.ids)


def make_sampler(settings: GenerationSettings, n_vocab: int, history: list[int]) -> Any:
    """A llama.cpp sampler chain doing what transformers' generate() does with the same settings.

    Order as in transformers: repetition penalty (over prompt and reply), then temperature, top-k, top-p, draw.
    Temperature 0 is greedy (argmax after the penalty). The seed makes a sampled reply reproducible.
    """
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    if settings.repetition_penalty != 1.0:
        # transformers penalises every token seen in the whole sequence: a window as long as the sequence can get.
        window = len(history) + settings.max_new_tokens
        lc.llama_sampler_chain_add(
            chain, lc.llama_sampler_init_penalties(n_vocab, window, settings.repetition_penalty, 0.0, 0.0)
        )
    if settings.greedy:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
    else:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(settings.temperature))
        if settings.top_k > 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(settings.top_k))
        if settings.top_p < 1.0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(settings.top_p, 1))
        seed = settings.seed if settings.seed is not None else secrets.randbits(31)
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
    if settings.repetition_penalty != 1.0:
        for token in history:  # the penalty counts the prompt's tokens too
            lc.llama_sampler_accept(chain, token)
    return chain


class BatchScheduler:
    """Owns a llama.cpp context with ``slots`` sequences and a KV pool of ``n_ctx`` cells; serves :class:`Request`s."""

    def __init__(
        self,
        ctx: Any,
        vocab: Any,
        slots: int,
        n_ctx: int,
        n_batch: int,
        native_lock: threading.Lock,
        exclusive: Callable[..., Any] | None = None,
        tuner: ThreadTuner | None = None,
        cache_cells: int = 2048,
        others_waiting: Callable[[], bool] | None = None,
    ) -> None:
        """Args:
        ctx, vocab: the llama.cpp context (created with ``n_seq_max=slots``, unified KV) and the model's vocabulary.
        n_batch: the context's n_batch (most tokens per llama_decode call).
        native_lock: held around every call into the context (adapter loads share it).
        exclusive: runs a burst of steps (on the engine's model thread, so llama.cpp and torch never compute at
            once and share one OpenMP pool, see the module's docstring); None runs them on the scheduler thread.
        others_waiting: whether other work waits for the ``exclusive`` thread (a burst then ends after its step).
        tuner: picks the thread count per step from measured step times; None keeps the context's count.
        cache_cells: most KV cells idle slots keep as reusable prefixes. Every step's attention spans the pool up
            to its highest used cell, so idle caches are not free: a few thousand cells slowed decoding.
        """
        self.ctx, self.vocab, self.slots, self.n_ctx, self.n_batch = ctx, vocab, slots, n_ctx, n_batch
        self.n_vocab = lc.llama_vocab_n_tokens(vocab)
        self._mem = lc.llama_get_memory(ctx)
        self._native = native_lock
        self._exclusive = exclusive
        self._others_waiting = others_waiting
        self.tuner = tuner
        self._threads = tuner.threads() if tuner else 0
        self.cache_cells = cache_cells
        self._batch = lc.llama_batch_init(n_batch, 0, 1)
        self._piece = ctypes.create_string_buffer(256)
        self._cond = threading.Condition()
        self._pending: deque[Request] = deque()
        self._active: list[_Seq] = []
        self._free = list(range(slots))
        self._reserved = 0
        # What each slot's KV holds (token ids at positions 0..n-1) and the adapter it was computed with; kept
        # after a request ends so the next one with the same prefix skips its prefill.
        self._kv: list[list[int]] = [[] for _ in range(slots)]
        self._kv_lora: list[Any] = [None] * slots
        self._used: list[float] = [0.0] * slots
        """When each slot last ended a request (least recently used caches are dropped first)."""
        self.reused_tokens = 0
        self._lora: Any = None
        self._turn = 0
        self._closed = False
        self.steps = 0
        self._thread = threading.Thread(target=self._loop, name="demoforge-llama", daemon=True)
        self._thread.start()

    # --- the consumer side ---------------------------------------------------------------------------------------

    def submit(self, req: Request) -> None:
        """Queue a request; it is admitted at the next step with a free slot and room in the KV pool."""
        if req.reserve > self.n_ctx:
            raise ValueError(f"request needs {req.reserve} KV cells, the pool has {self.n_ctx}")
        with self._cond:
            if self._closed:
                raise RuntimeError("the llama.cpp engine is closed")
            self._pending.append(req)
            self._cond.notify()

    def wake(self) -> None:
        """Make the loop look at cancellations now (a stop while it waits for work)."""
        with self._cond:
            self._cond.notify()

    @property
    def load(self) -> tuple[int, int]:
        """(running, waiting) requests."""
        with self._cond:
            return len(self._active), len(self._pending)

    @property
    def cached_cells(self) -> int:
        """KV cells idle slots keep for prefix reuse."""
        with self._cond:
            return sum(len(self._kv[s]) for s in self._free)

    def forget_prefixes(self) -> None:
        """Drop every idle slot's cached prefix (running requests keep theirs)."""
        with self._cond:
            for slot in self._free:
                self._drop(slot)

    def close(self) -> None:
        """Stop the loop; running and waiting requests end with an error."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)
        lc.llama_batch_free(self._batch)

    # --- the scheduler thread --------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._admit()
                while not self._active and not self._closed:
                    self._cond.wait()
                    self._admit()
                if self._closed:
                    break
            try:
                if self._exclusive is None:
                    self._burst()
                else:
                    self._exclusive(self._burst)
            except Exception as exc:  # report to every running request; the loop must live on
                log.exception("llama.cpp step failed")
                for seq in list(self._active):
                    self._finish(seq, ("error", exc))
        for seq in list(self._active):
            self._finish(seq, ("error", RuntimeError("the llama.cpp engine was closed")))
        for req in self._pending:
            req.out.put(("error", RuntimeError("the llama.cpp engine was closed")))

    def _admit(self) -> None:
        """Move waiting requests into free slots while the KV pool can hold their prompt and reply (FIFO)."""
        while self._pending and self._free:
            req = self._pending[0]
            if req.cancel.is_set():
                self._pending.popleft()
                req.out.put(("done", "stopped"))
                continue
            slot, source, reuse = self._place(req)
            if not self._make_room(req.reserve, slot, source):
                if source == slot:
                    break
                slot, source, reuse = slot, slot, 0  # no room to keep the prefix's slot too: prefill it all
                if not self._make_room(req.reserve, slot, source):
                    break
            self._pending.popleft()
            self._free.remove(slot)
            self._reserved += req.reserve
            req.admitted_s = time.perf_counter()
            with self._native:
                if source != slot:
                    lc.llama_memory_seq_rm(self._mem, slot, -1, -1)
                    if reuse:  # the unified pool shares the cells: a copy costs no compute and no new cells
                        lc.llama_memory_seq_cp(self._mem, source, slot, 0, reuse)
                elif not lc.llama_memory_seq_rm(self._mem, slot, reuse, -1):
                    lc.llama_memory_seq_rm(self._mem, slot, -1, -1)  # a cache that cannot be cut: start afresh
                    reuse = 0
                sampler = make_sampler(req.settings, self.n_vocab, req.ids)
            self._kv[slot] = list(req.ids[:reuse])
            self._kv_lora[slot] = req.lora
            self.reused_tokens += reuse
            self._active.append(_Seq(req=req, slot=slot, sampler=sampler, fed=reuse, reused=reuse))

    def _place(self, req: Request) -> tuple[int, int, int]:
        """(free slot for ``req``, slot whose KV it reuses, prompt tokens reused).

        The longest cached prefix wins, from any slot (a running one too) with the same adapter. It is taken over
        in place when the request continues that slot's conversation (the cache is all prefix); otherwise it is
        copied into an empty or least recently used free slot, so another conversation's cache survives.
        At least the prompt's last token is always decoded: its logits give the first reply token.
        """
        limit = len(req.ids) - 1
        best, reuse = self._free[0], 0
        for slot in range(self.slots):
            if self._kv_lora[slot] is not req.lora:
                continue
            n = _common_prefix(self._kv[slot], req.ids, limit)
            if n > reuse or (n == reuse and n and slot in self._free):
                best, reuse = slot, n
        if best in self._free and reuse == len(self._kv[best]):
            return best, best, reuse
        target = min(self._free, key=lambda s: (len(self._kv[s]) > 0, self._used[s]))
        return target, best if reuse else target, reuse

    def _make_room(self, need: int, slot: int, source: int) -> bool:
        """Drop least recently used cached prefixes of free slots (not the request's ``slot``, nor the ``source`` it
        copies from) until ``need`` more cells fit the pool."""
        keep = {slot, source}
        cached = {s: len(self._kv[s]) for s in self._free if s not in keep and self._kv[s]}
        if source != slot and source in self._free:  # its cells stay (the reused part is shared, counted in need)
            need += len(self._kv[source])
        for victim in sorted(cached, key=lambda s: self._used[s]):
            if self._reserved + sum(cached.values()) + need <= self.n_ctx:
                break
            self._drop(victim)
            del cached[victim]
        return self._reserved + sum(cached.values()) + need <= self.n_ctx

    def _drop(self, slot: int) -> None:
        """Forget a slot's cached KV."""
        with self._native:
            lc.llama_memory_seq_rm(self._mem, slot, -1, -1)
        self._kv[slot], self._kv_lora[slot] = [], None

    def _finish(self, seq: _Seq, event: tuple[str, Any]) -> None:
        """Free the sequence's slot, KV cells and sampler, and tell its consumer."""
        tail = seq.decoder.decode(b"", final=True)
        if tail and event[0] == "done":
            seq.req.out.put(("text", tail))
        with self._native:
            if event[0] == "error":  # the KV may hold half a step: never reuse it
                lc.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
                self._kv[seq.slot], self._kv_lora[seq.slot] = [], None
            lc.llama_sampler_free(seq.sampler)
        self._used[seq.slot] = time.perf_counter()
        with self._cond:
            self._active.remove(seq)
            self._free.append(seq.slot)
            self._reserved -= seq.req.reserve
            idle = sorted((s for s in self._free if self._kv[s]), key=lambda s: self._used[s])
            while idle and sum(len(self._kv[s]) for s in idle) > self.cache_cells:
                self._drop(idle.pop(0))
        seq.req.out.put(event)

    def _burst(self) -> None:
        """Steps back to back (admitting new requests between them) until no sequence runs, another job waits for
        this thread, or BURST_S passed."""
        end = time.perf_counter() + BURST_S
        while True:
            self._step()
            with self._cond:
                self._admit()
                if not self._active or self._closed:
                    return
            if time.perf_counter() >= end or (self._others_waiting is not None and self._others_waiting()):
                return

    def _step(self) -> None:
        """Decode one batch for one adapter group and hand each sequence its next token."""
        for seq in [s for s in self._active if s.req.cancel.is_set()]:
            self._finish(seq, ("done", "stopped"))
        if not self._active:
            return
        groups = list(dict.fromkeys(id(s.req.lora) if s.req.lora is not None else 0 for s in self._active))
        key = groups[self._turn % len(groups)]
        self._turn += 1
        group = [s for s in self._active if (id(s.req.lora) if s.req.lora is not None else 0) == key]
        batch, n, room = self._batch, 0, self.n_batch
        wants: list[tuple[_Seq, int]] = []  # (sequence, batch index whose logits it samples)
        for seq in group:  # running replies first: one token each
            if not seq.prefilling and room > 0:
                self._put(n, seq.last, seq.fed + seq.generated - 1, seq.slot, True)
                self._kv[seq.slot].append(seq.last)
                wants.append((seq, n))
                n, room = n + 1, room - 1
        for seq in group:  # then prompt chunks
            if seq.prefilling and room > 0:
                take = min(len(seq.req.ids) - seq.fed, PREFILL_CHUNK, room)
                for j in range(take):
                    last = seq.fed + j == len(seq.req.ids) - 1
                    self._put(n, seq.req.ids[seq.fed + j], seq.fed + j, seq.slot, last)
                    if last:
                        wants.append((seq, n))
                    n += 1
                self._kv[seq.slot].extend(seq.req.ids[seq.fed : seq.fed + take])
                seq.fed += take
                room -= take
        batch.n_tokens = n
        with self._native:
            lora = group[0].req.lora
            if lora is not self._lora:
                if lora is None:
                    lc.llama_set_adapters_lora(self.ctx, None, 0, None)
                else:
                    lc.llama_set_adapters_lora(
                        self.ctx, (lc.llama_adapter_lora_p_ctypes * 1)(lora), 1, (ctypes.c_float * 1)(1.0)
                    )
                self._lora = lora
            decode_only = n == len(wants)
            if self.tuner is not None:
                # a probe runs on decode steps only; a prompt chunk runs on the settled count (see ThreadTuner)
                threads = self.tuner.threads() if decode_only else self.tuner.current
                if threads != self._threads:
                    self._threads = threads
                    lc.llama_set_n_threads(self.ctx, threads, threads)
            start = time.perf_counter()
            rc = lc.llama_decode(self.ctx, batch)
            if self.tuner is not None and rc == 0:
                self.tuner.record(time.perf_counter() - start, n, decode_only=decode_only)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            self.steps += 1
            sampled = [(seq, lc.llama_sampler_sample(seq.sampler, self.ctx, idx)) for seq, idx in wants]
        for seq, token in sampled:
            seq.last = token
            seq.generated += 1
            if lc.llama_vocab_is_eog(self.vocab, token) and not seq.req.ignore_eos:
                self._finish(seq, ("done", "eos"))
                continue
            seq.req.out.put(("text", seq.decoder.decode(self._bytes(token))))
            if seq.generated >= seq.req.settings.max_new_tokens:
                self._finish(seq, ("done", "length"))

    def _put(self, i: int, token: int, pos: int, slot: int, logits: bool) -> None:
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = slot
        b.logits[i] = logits

    def _bytes(self, token: int) -> bytes:
        """The token's text as raw bytes (a piece may end mid-character; the decoder joins it up)."""
        n = lc.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, False)
        if n < 0:  # longer than the buffer: grow it once
            self._piece = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, False)
        return self._piece.raw[:n]


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """How many leading tokens ``a`` and ``b`` share, at most ``limit``."""
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
