"""ZeroGPU glue: the one place that knows about Hugging Face's ``spaces`` package.

On a ZeroGPU Space a GPU is lent to one call at a time: a function decorated with ``@spaces.GPU(duration=...)``
runs in a forked worker process that holds a real GPU for that call, while the main process must never initialise
CUDA (``spaces`` patches torch at import so that models "moved to cuda" at start-up are packed, then copied to the
lent GPU in each worker). Elsewhere, including with ``spaces`` installed on a CPU Space or a laptop, everything
here is a no-op and ``spaces`` is not even imported.

How DemoForge fits that model:

- :func:`prepare` imports ``spaces`` before torch (``app.py`` calls it first; ``spaces`` refuses to start once
  CUDA is initialised).
- :func:`on_gpu` wraps the engine's model calls (chat streaming, classify, explain, batch scoring, compare) in
  ``spaces.GPU``, so every tab and the audience app go through the GPU door without knowing about it; training is
  refused with :data:`TRAINING_REFUSED` (a run takes minutes, a ZeroGPU call seconds).
- :func:`attach` enters ZeroGPU's torch mode on the engine's model thread (torch modes are per thread; the model
  loads there) and gives a forked worker fresh model-thread state (a fork copies only the calling thread).
- :func:`startup` packs the model weights once the app is built (what ``spaces`` does on ``Blocks.launch()``;
  DemoForge serves through uvicorn, so it calls it itself).

This module never imports gradio, and imports ``spaces`` lazily and only on a ZeroGPU Space.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from core.errors import TrainError

F = TypeVar("F", bound=Callable[..., Any])

ENV = "SPACES_ZERO_GPU"
"""Set to true on a ZeroGPU Space; ``spaces.config.Config.zero_gpu`` reads the same variable the same way."""

CHAT_SECONDS = 60
"""GPU time asked for one chat reply (the Space's default max_new_tokens finish well inside it)."""
CLASSIFY_SECONDS = 20
"""GPU time asked for one classification or explanation."""
BATCH_SECONDS = 120
"""GPU time asked for scoring or comparing a file."""

TRAINING_REFUSED = (
    "Training needs CPU or dedicated GPU hardware: this Space runs on ZeroGPU, which lends a GPU to one request for "
    "seconds at a time, not to a run that takes minutes. Duplicate the Space and pick CPU or a dedicated GPU under "
    "Settings → Hardware to fine-tune there, or train on your own machine and publish the adapter."
)


def detected() -> bool:
    """True when the environment says this is a ZeroGPU Space (the check ``spaces`` itself makes)."""
    return os.environ.get(ENV, "").lower() in ("1", "t", "true")


def active() -> bool:
    """True on a ZeroGPU Space with ``spaces`` importable: the GPU is lent per call and CUDA stays off here."""
    return detected() and importlib.util.find_spec("spaces") is not None


def prepare(config: Any = None) -> bool:
    """Import ``spaces`` on a ZeroGPU Space; call before anything imports torch. Returns :func:`active`.

    ``config`` (an AppConfig) is set to chat with transformers: llama.cpp here is a CPU build, and its threads
    would not exist in a forked GPU worker.
    """
    if not active():
        return False
    import spaces  # noqa: F401 - imported for its torch patches

    if config is not None:
        config.engine = "transformers"
    return True


def gpu(fn: F, duration: int) -> F:
    """``fn`` wrapped in ``spaces.GPU(duration=duration)`` on ZeroGPU (generators included); else ``fn`` itself."""
    if not active():
        return fn
    import spaces

    return spaces.GPU(duration=duration)(fn)


def refuse_training() -> None:
    """Raise :class:`TrainError` with :data:`TRAINING_REFUSED` on ZeroGPU; nothing elsewhere."""
    if active():
        raise TrainError(TRAINING_REFUSED)


def _without_progress(method: Callable[..., Any]) -> Callable[..., Any]:
    """Drop a ``progress`` callback: the call runs in a worker process and a closure cannot be sent there."""

    def call(*args: Any, **kwargs: Any) -> Any:
        kwargs.pop("progress", None)
        return method(*args, **kwargs)

    call.__name__ = getattr(method, "__name__", "call")
    call.__doc__ = method.__doc__
    return call


class _GPUClassify:
    """The classify door with its model calls on the GPU; everything else passes through.

    The wrapped methods are kept: ``spaces`` keeps an idle GPU worker per wrapped function for the next call.
    """

    def __init__(self, service: Any) -> None:
        self._service = service
        self._wrapped: dict[str, Callable[..., Any]] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._service, name)
        if name not in ("classify", "classify_timed", "explain", "score_file", "compare", "compare_report"):
            return attr
        if name not in self._wrapped:
            if name in ("classify", "classify_timed", "explain"):
                self._wrapped[name] = gpu(attr, CLASSIFY_SECONDS)
            else:
                self._wrapped[name] = gpu(_without_progress(attr), BATCH_SECONDS)
        return self._wrapped[name]


@dataclass
class _GPUTraining:
    """The training door with start and resume refused (the rest, e.g. progress of an old run, passes through)."""

    training: Any

    def start(self, *args: Any, **kwargs: Any) -> str:
        """Refused on ZeroGPU."""
        raise TrainError(TRAINING_REFUSED)

    def resume(self, *args: Any, **kwargs: Any) -> str:
        """Refused on ZeroGPU."""
        raise TrainError(TRAINING_REFUSED)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.training, name)


class GPUEngine:
    """An engine whose model calls run through ``spaces.GPU``; every other attribute is the engine's own."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._chat = gpu(self._stream, CHAT_SECONDS)
        self._classify: _GPUClassify | None = None

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        yield from self._engine.chat_stream(*args, **kwargs)

    def chat_stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """The engine's chat stream, run in a GPU worker (the pieces come back as they are made)."""
        return self._chat(*args, **kwargs)

    @property
    def classify(self) -> _GPUClassify:
        """The classify door, its model calls on the GPU."""
        if self._classify is None:
            self._classify = _GPUClassify(self._engine.classify)
        return self._classify

    @property
    def training(self) -> _GPUTraining:
        """The training door; starting a run is refused."""
        return _GPUTraining(self._engine.training)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def on_gpu(engine: Any) -> Any:
    """``engine`` behind the GPU door on ZeroGPU (see :class:`GPUEngine`); ``engine`` itself elsewhere."""
    if not active() or isinstance(engine, GPUEngine):
        return engine
    return GPUEngine(engine)


def attach(engine: Any) -> None:
    """Ready ``engine`` for ZeroGPU before it loads a model (nothing elsewhere).

    The model thread enters the torch mode that ``spaces`` entered on the importing thread (modes are per thread,
    and the model loads on the model thread); a forked GPU worker starts with fresh model-thread state, since a fork
    copies only the calling thread and a pool whose thread is gone would never run a job.
    """
    if not active():
        return
    from spaces.zero.torch import enter_mode

    engine.on_model_thread(enter_mode)
    os.register_at_fork(after_in_child=engine.reset_after_fork)


def startup() -> None:
    """Pack the loaded weights for the GPU workers (``spaces`` does it on ``Blocks.launch()``); nothing elsewhere."""
    if not active():
        return
    import spaces.zero

    spaces.zero.startup()
