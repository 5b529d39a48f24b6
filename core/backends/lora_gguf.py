"""Write a peft LoRA adapter as a GGUF LoRA, so llama.cpp applies it at run time on top of the base GGUF.

The GGUF is cached beside the adapter (``adapter_model.<hash>.lora.gguf``; the hash is of the adapter's weights,
so a retrained adapter under the same name gets a fresh conversion). Conversion takes well under a second for the
embedded model's adapters: a freshly finished adapter is usable at once.

Layout, as llama.cpp's ``convert_lora_to_gguf.py`` writes it: ``general.type = adapter``, ``adapter.type = lora``,
and for every adapted weight ``<gguf name>.lora_a`` (peft's lora_A, (r, in)) and ``.lora_b`` (lora_B, (out, r)).
Two details make it exact:
- llama-architecture GGUFs store q/k projections with their rows permuted for llama.cpp's rotary layout, so
  lora_B of q_proj/k_proj gets the same row permutation (lora_A acts on the input side and stays).
- peft's scaling (alpha / r, alpha / sqrt(r) for rsLoRA, per-module rank/alpha patterns) is folded into lora_B
  and ``adapter.lora.alpha`` is 0, which llama.cpp reads as "scale 1": every module gets exactly peft's scale.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import AdapterError

SUPPORTED_ARCHS = ("llama",)
"""GGUF architectures whose tensor naming and q/k layout this converter knows (SmolLM2 is one)."""
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


@dataclass
class BaseInfo:
    """What the conversion needs from the base GGUF."""

    arch: str
    blocks: int
    heads: int
    kv_heads: int
    tensors: dict[str, tuple[int, ...]]
    """GGUF tensor name -> ggml shape (ne0, ne1)."""


def read_base(gguf_path: Path) -> BaseInfo:
    """Architecture, block and head counts and tensor shapes of a base GGUF (memory-mapped; fast)."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))

    def field(key: str) -> object:
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    arch = str(field("general.architecture"))
    return BaseInfo(
        arch=arch,
        blocks=int(field(f"{arch}.block_count") or 0),
        heads=int(field(f"{arch}.attention.head_count") or 0),
        kv_heads=int(field(f"{arch}.attention.head_count_kv") or field(f"{arch}.attention.head_count") or 0),
        tensors={t.name: tuple(int(d) for d in t.shape) for t in reader.tensors},
    )


def unsupported_reason(adapter_dir: Path, base: BaseInfo) -> str | None:
    """Why this adapter cannot be written as a GGUF LoRA for ``base`` (then transformers serves it), or None."""
    if base.arch not in SUPPORTED_ARCHS:
        return f"LoRA conversion knows the {', '.join(SUPPORTED_ARCHS)} GGUF architecture, not {base.arch!r}"
    try:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return f"its adapter_config.json is unreadable ({exc})"
    if cfg.get("peft_type", "LORA") != "LORA":
        return f"it is a {cfg.get('peft_type')} adapter, not LoRA"
    if cfg.get("use_dora"):
        return "DoRA adapters have no GGUF LoRA form"
    if cfg.get("modules_to_save"):
        return f"it also trains whole modules ({cfg['modules_to_save']}), which a GGUF LoRA cannot carry"
    return None


def lora_path(adapter_dir: Path) -> Path:
    """Where the GGUF LoRA of this adapter's current weights lives (named by a hash of the weights)."""
    digest = hashlib.sha256((adapter_dir / "adapter_model.safetensors").read_bytes()).hexdigest()[:12]
    return adapter_dir / f"adapter_model.{digest}.lora.gguf"


def _permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf's LlamaModel.permute) applied to a (out, r) matrix."""
    out = rows.shape[0]
    return rows.reshape(n_head, 2, out // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _scale(cfg: dict, module: str, rank: int) -> float:
    """peft's LoRA scale for ``module``: alpha / r (alpha / sqrt(r) with rsLoRA), honouring rank/alpha patterns."""
    alpha = float(cfg.get("lora_alpha", 8))
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){re.escape(pattern)}$", module) or re.fullmatch(pattern, module):
            alpha = float(value)
    return alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank


def convert(adapter_dir: Path, base_gguf: Path, base: BaseInfo | None = None) -> Path:
    """Write (once) and return the GGUF LoRA of the peft adapter in ``adapter_dir`` for ``base_gguf``.

    Raises:
        AdapterError: the adapter cannot be expressed as a GGUF LoRA for this base (see :func:`unsupported_reason`),
            or its weights name a layer the base does not have.
    """
    import gguf
    from safetensors.numpy import load_file

    target = lora_path(adapter_dir)
    if target.is_file():
        return target
    base = base or read_base(base_gguf)
    why = unsupported_reason(adapter_dir, base)
    if why:
        raise AdapterError(f"Adapter {adapter_dir.name!r} cannot run on llama.cpp: {why}.")
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, base.blocks)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        match = _KEY.match(key)
        if match is None:
            raise AdapterError(f"Adapter {adapter_dir.name!r} has a tensor {key!r} that is not a LoRA A/B weight.")
        pairs.setdefault(match["module"], {})[match["ab"]] = value.astype(np.float32)
    writer = gguf.GGUFWriter(str(target) + ".tmp", base.arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 0.0)  # 0: llama.cpp applies B @ A as is; the scale is folded into B
    writer.add_string("demoforge.source", adapter_dir.name)
    for module, ab in sorted(pairs.items()):
        gguf_name = names.get_name(module)
        if gguf_name is None or f"{gguf_name}.weight" not in base.tensors or set(ab) != {"A", "B"}:
            raise AdapterError(
                f"Adapter {adapter_dir.name!r} adapts {module!r}, which the base GGUF does not have: "
                "was it trained on another base model?"
            )
        a, b = ab["A"], ab["B"] * _scale(cfg, module, ab["A"].shape[0])  # (r, in), (out, r)
        if module.endswith("q_proj"):
            b = _permute(b, base.heads)
        elif module.endswith("k_proj"):
            b = _permute(b, base.kv_heads)
        writer.add_tensor(f"{gguf_name}.weight.lora_a", np.ascontiguousarray(a))
        writer.add_tensor(f"{gguf_name}.weight.lora_b", np.ascontiguousarray(b))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    Path(str(target) + ".tmp").replace(target)
    for stale in adapter_dir.glob("adapter_model.*.lora.gguf"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return target
