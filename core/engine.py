"""The engine: owns the loaded chat model, its LoRA adapters and the training jobs; passed to every tab."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from core import adapters, store
from core.backends.base import ComputeLockExecutor
from core.chat import Message, StreamPiece
from core.config import AppConfig, GenerationSettings
from core.data import MIB, LoadedData, load_data
from core.models import LoadedModel, load_causal_lm
from core.specs import same_base

if TYPE_CHECKING:  # lazily imported at run time: the chat-only path never loads them
    from core.backends import ChatBackend
    from core.classify.service import ClassifyService
    from core.library import Library
    from core.train.jobs import JobManager
    from core.train.service import Training

log = logging.getLogger(__name__)
T = TypeVar("T")
MODEL_THREAD = "demoforge-model"


class _OnModelThread:
    """Proxy that runs every method call of ``target`` on the engine's model thread."""

    def __init__(self, target: Any, run: Callable[..., Any]) -> None:
        self._target, self._run = target, run

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: self._run(attr, *args, **kwargs)


class Engine:
    """Loads the chat model once (lazily, thread-safe), attaches LoRA adapters to it by name, serves replies.

    One base model stays in memory; adapters are loaded into it with peft and switched per request, so changing
    adapter never reloads the base. Generation holds ``_gen_lock`` because the active adapter is model state.

    All torch work (loading, generating, classifying) runs on one long-lived thread. Why: torch's OpenMP runtime
    gives every thread that computes its own pool of worker threads; once two pools exist on a 2-core machine,
    libgomp throttles them and every small matrix product pays a wake-up (measured: decoding 30 -> 18 tok/s,
    a MiniLM-sized matvec 45 -> 135 us). Gradio calls handlers from many threads, so they all hand work to one.
    """

    def __init__(self, config: AppConfig, home: Path | None = None) -> None:
        """Args:
        config: the app's settings.
        home: the DemoForge home; None resolves :func:`core.store.home` now, once. Jobs, the library and
            adapter lookups all use this one folder (and training workers inherit it), so a later change of
            ``DEMOFORGE_HOME`` in this process cannot split a server across two homes.
        """
        self.config = config
        self.home = Path(home) if home is not None else store.home()
        self._chat: LoadedModel | None = None
        self._peft = None  # PeftModel wrapping the chat base once the first adapter is attached
        self._load_lock = threading.Lock()
        self._gen_lock = threading.Lock()
        self._jobs: JobManager | None = None
        self._classify: ClassifyService | None = None
        self._library: Library | None = None
        self._training: Training | None = None
        self._tokenizers: dict[tuple[str, str], object] = {}
        self.compute_lock = threading.Lock()
        """Held by every job on the model thread and by each step of a fast engine (see ComputeLockExecutor)."""
        self._model_thread = ComputeLockExecutor(self.compute_lock, MODEL_THREAD)
        self._backend: ChatBackend | None = None
        self._backend_lock = threading.Lock()

    def reset_after_fork(self) -> None:
        """In a forked child (a ZeroGPU worker, see core/zerogpu.py): a fresh model thread and fresh locks.

        A fork copies only the calling thread: the old pool's thread is gone (a job sent to it would wait forever)
        and a lock another thread held at the fork stays held.
        """
        self._load_lock = threading.Lock()
        self._gen_lock = threading.Lock()
        self._backend_lock = threading.Lock()
        self.compute_lock = threading.Lock()
        self._model_thread = ComputeLockExecutor(self.compute_lock, MODEL_THREAD)

    @property
    def model_thread_waiting(self) -> int:
        """Jobs queued for the model thread that have not started (the fast engine's bursts yield to them)."""
        return self._model_thread.waiting

    def on_model_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the model thread and return its result (directly when already on it)."""
        if threading.current_thread().name.startswith(MODEL_THREAD):
            return fn(*args, **kwargs)
        # Carry context variables (Gradio's progress tracking lives in one) over to the model thread.
        ctx = contextvars.copy_context()
        return self._model_thread.submit(ctx.run, fn, *args, **kwargs).result()

    # --- chat model ------------------------------------------------------------------------------------------------

    def chat_model(self) -> LoadedModel:
        """The loaded chat model; the first call loads it (concurrent first calls wait for one load)."""
        if self._chat is None:
            with self._load_lock:
                if self._chat is None:
                    self._chat = self.on_model_thread(
                        load_causal_lm, self.config.model, self.config.device, self.config.dtype
                    )
                    log.info("Loaded %s in %.1fs (%s)", self._chat.label, self._chat.load_seconds, self._chat.source)
        return self._chat

    @property
    def backend(self) -> ChatBackend:
        """The chat backend chosen by ``config.engine`` (core.backends): chat, compare and adapters use it."""
        if self._backend is None:
            with self._backend_lock:
                if self._backend is None:
                    from core.backends import select_backend

                    self._backend = select_backend(self)
        return self._backend

    def chat_label(self) -> str:
        """Name · precision · device · engine of the chat model (loads it if needed)."""
        return self.backend.label

    # --- adapters --------------------------------------------------------------------------------------------------

    def chat_adapters(self) -> list[adapters.AdapterInfo]:
        """Finished chat (sft) adapters trained on this app's chat base."""
        found = adapters.list_adapters("sft", self.home)
        return [a for a in found if same_base(a.base_model, self.config.model)]

    def _attach(self, name: str) -> float:
        """Make adapter ``name`` the active one on the chat base; returns seconds taken (0 when already loaded)."""
        from peft import PeftModel

        start = time.perf_counter()
        info = adapters.get(name, self.home)
        if info.task != "sft":
            raise adapters.AdapterError(f"Adapter {name!r} is a {info.task} adapter; the Chat tab needs a chat one.")
        if not same_base(info.base_model, self.config.model):
            raise adapters.AdapterError(
                f"Adapter {name!r} was trained on {info.base_model!r}, but this app chats with "
                f"{self.config.model!r}. Start the app with --model {info.base_model} to use it."
            )
        lm = self.chat_model()
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(lm.model, str(info.path), adapter_name=info.name, is_trainable=False)
            self._peft.eval()
        elif info.name not in self._peft.peft_config:
            self._peft.load_adapter(str(info.path), adapter_name=info.name, is_trainable=False)
        self._peft.set_adapter(info.name)
        self._peft.base_model.disable_adapter_layers()  # resting state; _using() enables it per request
        return time.perf_counter() - start

    def forget_adapter(self, name: str) -> None:
        """Unload a deleted or renamed adapter from the chat base. peft cannot drop its last adapter; that one stays
        loaded but unreachable (it is no longer listed), and the base path disables it anyway."""
        with self._gen_lock:
            if self._peft is not None and name in self._peft.peft_config and len(self._peft.peft_config) > 1:
                if self._peft.active_adapter == name:
                    self._peft.set_adapter(next(n for n in self._peft.peft_config if n != name))
                self._peft.delete_adapter(name)
        if self._backend is not None:
            self._backend.forget_adapter(name)

    def switch_adapter(self, name: str | None) -> float:
        """Load (first time) and activate an adapter, or None for the base; returns the seconds it took."""
        return self.backend.switch_adapter(name)

    @contextlib.contextmanager
    def _using(self, adapter: str | None) -> Iterator[LoadedModel]:
        """A view of the chat model with ``adapter`` active (or the plain base when None).

        Between requests the LoRA layers rest disabled, so anything else that runs the chat model (the Classify
        tab's chat-likelihood zero-shot) always sees the plain base.
        """
        lm = self.chat_model()
        if not adapter:
            yield lm if self._peft is None else dataclasses.replace(lm, model=self._peft)
            return
        self.on_model_thread(self._attach, adapter)
        self._peft.base_model.enable_adapter_layers()
        try:
            yield dataclasses.replace(lm, model=self._peft, name=f"{lm.name} + {adapter}")
        finally:
            self._peft.base_model.disable_adapter_layers()

    def chat_stream(
        self,
        history: list[Message],
        settings: GenerationSettings,
        system_prompt: str | None = None,
        adapter: str | None = None,
    ) -> Iterator[StreamPiece]:
        """Stream a reply from the chat base, or with ``adapter`` applied, through the selected backend."""
        yield from self.backend.stream(history, settings, system_prompt, adapter)

    # --- the doors the UI uses --------------------------------------------------------------------------------------

    @property
    def library(self) -> Library:
        """The adapter library: list, rename and delete (which also forget on the chat base), zip, merge, push."""
        if self._library is None:
            from core.library import Library

            self._library = Library(self.forget_adapter, self.on_model_thread, self.home)
        return self._library

    def storage_lost_on_restart(self) -> str | None:
        """Why this server's home would not survive a restart (a Space without persistent storage), or None."""
        return store.storage_lost_on_restart(self.home)

    def run_card(self, name: str, rebuild: bool = False) -> Path:
        """Adapter ``name``'s run card: the one its run wrote, else (or when ``rebuild``) one made now with greedy
        base-vs-tuned answers on its held-out examples (see :func:`core.runcard.make_run_card`)."""
        from core.runcard import make_run_card

        existing = None if rebuild else self.library.run_card(name)
        return existing or make_run_card(self, name)

    @property
    def training(self) -> Training:
        """Training runs: samples, validation, start/stop/resume, progress."""
        if self._training is None:
            from core.train.service import Training

            self._training = Training(lambda: self.jobs, self.validate_data, self.config.max_upload_mb * MIB)
        return self._training

    def scratch_dir(self, prefix: str = "scratch") -> Path:
        """A fresh folder under the home's ``tmp/`` for one call's output files (a scored CSV, a zip).

        Folders there older than an hour are removed as new ones are made (Gradio copies a returned file into
        its own cache at once), so nothing piles up and nothing lands in the system temp dir.
        """
        return store.tmp_dir(prefix, self.home)

    # --- training --------------------------------------------------------------------------------------------------

    @property
    def jobs(self) -> JobManager:
        """The training job manager (created on first use; it finds runs left by an earlier server)."""
        if self._jobs is None:
            from core.train.jobs import JobManager

            self._jobs = JobManager(home=self.home)
        return self._jobs

    @property
    def classify(self) -> ClassifyService:
        """The classifiers of the Classify tab (created on first use; models load lazily inside it)."""
        if self._classify is None:
            from core.classify.service import ClassifyService

            with self._load_lock:  # two first requests at once must share one service (one encoder load)
                if self._classify is None:
                    service = ClassifyService(
                        self.chat_model, self.config.device, self.config.dtype, self.config.max_upload_mb * MIB
                    )
                    # A proxy that runs every call on the model thread; it quacks like the service.
                    self._classify = _OnModelThread(service, self._classify_call)  # type: ignore[assignment]
        return self._classify

    def _classify_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a classify call on the model thread while no chat request has an adapter enabled on the base.

        The chat-likelihood classifier scores with the chat base itself; a transformers chat request enables its
        LoRA layers on that base under ``_gen_lock`` (from before its generate job reaches the model thread), so
        a classification scheduled in between would score with the adapter. The lock is taken here, on the
        caller's thread, before the job is queued: taking it on the model thread could wait for a generate job
        queued behind it.
        """
        with self._gen_lock:
            return self.on_model_thread(fn, *args, **kwargs)

    def _tokenizer(self, task: str, base_model: str):  # noqa: ANN202 - a transformers tokenizer
        """The tokenizer a run on ``base_model`` would use (cached; the chat model's own when it is the base)."""
        key = (task, base_model)
        if key not in self._tokenizers:
            if task == "sft" and same_base(base_model, self.config.model):
                self._tokenizers[key] = self.chat_model().tokenizer
            else:
                from core.models import resolve_base
                from core.train.model import load_tokenizer

                self._tokenizers[key] = load_tokenizer(resolve_base(base_model, task))
        return self._tokenizers[key]

    def validate_data(
        self,
        path: str,
        task: str,
        base_model: str = "default",
        columns: dict[str, str] | None = None,
        max_length: int = 256,
    ) -> LoadedData:
        """Read, validate and tokenise a training file exactly as a run would; raises DataError with a reason."""
        tokenizer = self._tokenizer(task, base_model)
        return load_data(
            path,
            task,
            mapping=columns or None,
            tokenizer=tokenizer,
            max_length=max_length,
            max_bytes=self.config.max_upload_mb * MIB,
        )
