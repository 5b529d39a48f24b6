"""A test double for the Engine's chat side: slow or failing replies without a model; the library is real."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from core import store
from core.chat import ReplyStats, StreamPiece
from core.library import Library


class SlowEngine:
    """Replies ``words`` one every ``step_s`` seconds; ``fail_after`` words in, it raises (first call only when
    ``fail_once``). The adapter library is the real one under DEMOFORGE_HOME."""

    def __init__(
        self,
        words: int = 3,
        step_s: float = 0.4,
        fail_after: int | None = None,
        fail_once: bool = True,
        error: BaseException | None = None,
    ) -> None:
        self.words, self.step_s, self.fail_after, self.fail_once = words, step_s, fail_after, fail_once
        self.error = error or RuntimeError("CUDA out of memory (simulated)")
        self.calls = 0
        self.adapters_used: list[str | None] = []
        self.lock = threading.Lock()
        self.library = Library(lambda name: None, lambda fn, *a, **k: fn(*a, **k))

    def chat_label(self) -> str:
        return "fake · float32 · cpu"

    def storage_lost_on_restart(self) -> str | None:
        return store.storage_lost_on_restart(store.home())

    def chat_adapters(self) -> list:
        return self.library.list("sft")

    def switch_adapter(self, name: str | None) -> float:
        if name:
            self.library.get(name)
        return 0.0

    def chat_stream(self, history, settings, system_prompt=None, adapter=None) -> Iterator[StreamPiece]:
        with self.lock:
            self.calls += 1
            call = self.calls
        if adapter:
            self.library.get(adapter)  # AdapterError "No adapter named ..." like the real engine
        self.adapters_used.append(adapter)
        failing = self.fail_after is not None and (call == 1 or not self.fail_once)
        start = time.perf_counter()
        text = ""
        for i in range(self.words):
            if failing and i == self.fail_after:
                raise self.error
            time.sleep(self.step_s)
            text += ["one ", "two ", "three "][i] if i < 3 else f"w{i} "
            yield StreamPiece(text=text)
        stats = ReplyStats(prompt_tokens=5, new_tokens=self.words, first_token_s=self.step_s)
        stats.total_s = time.perf_counter() - start
        yield StreamPiece(text=text, stats=stats, done=True)
