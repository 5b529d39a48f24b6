"""ZeroGPU glue (core/zerogpu.py): a no-op off ZeroGPU; on a simulated ZeroGPU Space the model calls go through
``spaces.GPU``, training is refused in words, and nothing in the main process touches CUDA.

The simulation sets ``SPACES_ZERO_GPU=true`` and puts a stand-in ``spaces`` module in ``sys.modules``: the real
one, on that variable, asserts a device API URL and patches torch, neither of which can exist here. The stand-in
records what it wraps, as ``spaces.GPU`` does, and marks the wrapper with ``zerogpu`` like the real one.
"""

from __future__ import annotations

import importlib.machinery
import os
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import pytest
import torch

from core import zerogpu
from core.chat import StreamPiece
from core.config import AppConfig, DemoProfile, GenerationSettings
from core.engine import MODEL_THREAD, Engine
from core.errors import TrainError
from core.models import pick_device, pick_dtype
from demo import finetune_run
from demo.server import build_server, running
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


class FakeSpaces:
    """What the code under test uses of ``spaces``: GPU(duration=...), zero.torch.enter_mode, zero.startup."""

    def __init__(self) -> None:
        self.wrapped: list[tuple[str, int]] = []
        self.calls: list[str] = []
        self.mode_threads: list[str] = []
        self.started = 0

    def module(self) -> dict[str, types.ModuleType]:
        spaces = types.ModuleType("spaces")
        spaces.__spec__ = importlib.machinery.ModuleSpec("spaces", None)
        spaces.GPU = self.GPU
        zero = types.ModuleType("spaces.zero")
        zero.startup = self.startup
        ztorch = types.ModuleType("spaces.zero.torch")
        ztorch.enter_mode = lambda: self.mode_threads.append(threading.current_thread().name)
        spaces.zero, zero.torch = zero, ztorch
        return {"spaces": spaces, "spaces.zero": zero, "spaces.zero.torch": ztorch}

    def GPU(self, duration: int):
        def decorate(fn):
            name = getattr(fn, "__name__", repr(fn))
            self.wrapped.append((name, duration))

            if getattr(fn, "__code__", None) is not None and fn.__code__.co_flags & 0x20:  # a generator

                def gen(*args, **kwargs):
                    self.calls.append(name)
                    yield from fn(*args, **kwargs)

                wrapper = gen
            else:

                def wrapper(*args, **kwargs):
                    self.calls.append(name)
                    return fn(*args, **kwargs)

            wrapper.zerogpu = None
            return wrapper

        return decorate

    def startup(self) -> None:
        self.started += 1


@pytest.fixture
def zero_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeSpaces:
    """A simulated ZeroGPU Space, where touching CUDA in this (the main) process raises."""
    fake = FakeSpaces()
    for name, module in fake.module().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv(zerogpu.ENV, "true")

    def no_cuda(*args, **kwargs):
        raise AssertionError("CUDA was touched in the main process under ZeroGPU")

    for name in ("init", "is_available", "is_bf16_supported", "device_count", "current_device", "_lazy_init"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    return fake


class StubEngine:
    """Just what GPUEngine forwards to: a chat stream, a classify door and a training door."""

    def __init__(self) -> None:
        def classify(text, labels, method):
            return f"label of {text}"

        def score_file(path, progress=None):
            return ("scored", progress)

        self.classify = types.SimpleNamespace(
            classify=classify, score_file=score_file, methods=lambda: {"embedding": "Embedding"}
        )
        self.training = types.SimpleNamespace(start=lambda config: "run-1", runs=lambda: ["old-run"])
        self.home = Path("/nowhere")

    def chat_stream(self, history, settings, system_prompt=None, adapter=None) -> Iterator[StreamPiece]:
        yield StreamPiece(text="hel")
        yield StreamPiece(text=f"hello ({adapter})")


# --- off ZeroGPU ----------------------------------------------------------------------------------------------------


def test_off_zerogpu_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(zerogpu.ENV, raising=False)
    config = AppConfig(engine="auto")
    assert not zerogpu.active() and not zerogpu.prepare(config)
    assert config.engine == "auto"

    def fn() -> int:
        return 1

    assert zerogpu.gpu(fn, 60) is fn
    engine = StubEngine()
    assert zerogpu.on_gpu(engine) is engine
    zerogpu.refuse_training()  # does not raise
    zerogpu.startup()


def test_spaces_is_installed_and_its_decorator_is_a_no_op_here() -> None:
    # The pinned `spaces` itself, off ZeroGPU: GPU(duration=...) hands the function back unchanged. In a
    # subprocess: importing `spaces` with the variable unset must not patch torch or need a device API.
    code = (
        "import spaces\n"
        "def f(x): return x + 1\n"
        "g = spaces.GPU(duration=30)(f)\n"
        "assert g is f and g(1) == 2\n"
        "import torch\n"
        "assert not torch.cuda.is_initialized()\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != zerogpu.ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_prepare_imports_spaces_only_on_zerogpu() -> None:
    code = "import sys\nfrom core import zerogpu\nzerogpu.prepare()\nprint('spaces' in sys.modules)\n"
    env = {k: v for k, v in os.environ.items() if k != zerogpu.ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


@pytest.mark.ui
def test_a_served_app_chats_with_spaces_imported(
    tiny_models: dict[str, Path], demoforge_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A CPU Space has `spaces` installed (the Gradio SDK image, and our pin); the app must serve as before.
    monkeypatch.delenv(zerogpu.ENV, raising=False)
    import spaces
    from gradio_client import Client

    assert spaces.GPU(duration=5)(len) is len
    profile = DemoProfile(title="t", max_new_tokens=8, temperature=0.0)
    config = AppConfig(model=str(tiny_models["llama"]), mode="audience", profile=profile)
    engine = Engine(config)
    served = build_server(engine, config, mcp=True)
    with running(served, "127.0.0.1", free_port()) as url:
        reply = Client(url, verbose=False).predict("w1 w2 good", None, api_name="/chat")
    settings = GenerationSettings(temperature=0.0, max_new_tokens=8)
    direct = list(engine.chat_stream([{"role": "user", "content": "w1 w2 good"}], settings, profile.system_prompt))
    assert direct[-1].text and reply == direct[-1].text


def test_the_space_bundle_pins_spaces_and_mcp(demoforge_home: Path, tmp_path: Path) -> None:
    from importlib.metadata import version

    from core.publish import build_bundle

    bundle = build_bundle([], DemoProfile(title="Pins"), tmp_path / "bundle", vendor_models=False)
    pins = (bundle.path / "requirements.txt").read_text(encoding="utf-8").splitlines()
    for name in ("spaces", "mcp", "gradio"):  # the versions tested here are the ones a Space installs
        assert f"{name}=={version(name)}" in pins


# --- simulated ZeroGPU ----------------------------------------------------------------------------------------------


def test_prepare_chats_with_transformers_on_zerogpu(zero_gpu: FakeSpaces) -> None:
    config = AppConfig(engine="auto")
    assert zerogpu.active() and zerogpu.prepare(config)
    assert config.engine == "transformers"  # llama.cpp is a CPU build, and a forked worker has none of its threads


def test_model_calls_go_through_spaces_gpu_with_a_duration(zero_gpu: FakeSpaces) -> None:
    engine = zerogpu.on_gpu(StubEngine())
    assert zerogpu.on_gpu(engine) is engine  # wrapped once
    pieces = list(engine.chat_stream([{"role": "user", "content": "hi"}], GenerationSettings(), None, adapter="a"))
    assert [p.text for p in pieces] == ["hel", "hello (a)"]
    assert engine.classify.classify("t", ["x", "y"], "embedding") == "label of t"
    # The worker process cannot receive a closure: a progress callback is dropped on its way to the GPU.
    assert engine.classify.score_file("f.csv", progress=lambda f: None) == ("scored", None)
    assert engine.classify.methods() == {"embedding": "Embedding"}  # no model call: not wrapped
    assert zero_gpu.wrapped == [
        ("_stream", zerogpu.CHAT_SECONDS),
        ("classify", zerogpu.CLASSIFY_SECONDS),
        ("score_file", zerogpu.BATCH_SECONDS),  # without its progress callback
    ]
    assert zero_gpu.calls == ["_stream", "classify", "score_file"]
    engine.classify.classify("u", ["x", "y"], "embedding")
    assert len(zero_gpu.wrapped) == 3  # wrapped once per method: spaces keeps an idle worker per function


def test_training_is_refused_on_zerogpu_with_the_reason(zero_gpu: FakeSpaces) -> None:
    engine = zerogpu.on_gpu(StubEngine())
    with pytest.raises(TrainError, match="Training needs CPU or dedicated GPU hardware"):
        engine.training.start(object())
    assert engine.training.runs() == ["old-run"]  # the rest of the door still works
    # The Fine-tune tab refuses before looking at the data, in words.
    with pytest.raises(gr.Error, match="Training needs CPU or dedicated GPU hardware: this Space runs on ZeroGPU"):
        finetune_run.start_training(engine, None, None)
    with pytest.raises(gr.Error, match="Training needs CPU or dedicated GPU hardware"):
        finetune_run.resume_training(engine, "some-run")


def test_device_resolution_never_asks_cuda_on_zerogpu(zero_gpu: FakeSpaces) -> None:
    assert pick_device("auto") == "cuda"
    assert pick_device("cuda") == "cuda"
    assert pick_dtype("auto", "cuda") == torch.bfloat16


def test_the_served_apps_are_built_on_the_gpu_door_without_touching_cuda(
    zero_gpu: FakeSpaces, tiny_models: dict[str, Path], demoforge_home: Path
) -> None:
    profile = DemoProfile(title="Zero", tabs=["chat", "classify"], classify_labels=["good", "bad"])
    # device="cpu": building the builder app loads the chat model, and on a real ZeroGPU Space its move to "cuda"
    # is intercepted by the torch patches of `spaces`, which cannot run here (pick_device is checked above).
    config = AppConfig(
        model=str(tiny_models["llama"]), device="cpu", mode="audience", builder_auth=("b", "pw"), profile=profile
    )
    engine = Engine(config)
    zerogpu.attach(engine)
    # Entered on the model thread, where the model loads (torch modes are per thread).
    assert len(zero_gpu.mode_threads) == 1 and zero_gpu.mode_threads[0].startswith(MODEL_THREAD)
    served = build_server(engine, config, mcp=True)
    zerogpu.startup()
    assert zero_gpu.started == 1
    # Both apps hold the GPU door: the audience's chat handler and the builder's tabs call through it.
    assert ("_stream", zerogpu.CHAT_SECONDS) in zero_gpu.wrapped
    assert any(
        "Training needs CPU or dedicated GPU hardware" in str(getattr(b, "value", ""))
        for b in served.builder.blocks.values()
    )
    served.audience.close()
    served.builder.close()


def test_a_forked_gpu_worker_gets_a_working_model_thread(zero_gpu: FakeSpaces, demoforge_home: Path) -> None:
    # spaces.GPU runs the call in a forked process: a fork copies only the calling thread, so the engine's model
    # thread is gone there. Without the reset, the child's first model call would wait forever.
    engine = Engine(AppConfig())
    zerogpu.attach(engine)
    assert engine.on_model_thread(lambda: threading.current_thread().name).startswith(MODEL_THREAD)
    pid = os.fork()
    if pid == 0:  # the child: answer within 20 s or die by the alarm
        signal.alarm(20)
        ok = engine.on_model_thread(lambda: 6 * 7) == 42
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
