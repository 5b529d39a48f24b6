"""Export to llama.cpp and Ollama: a merged adapter (or any Llama-family folder) as GGUF, an adapter as a GGUF LoRA.

The writer is the ``gguf`` package's :class:`gguf.GGUFWriter`; tensor names, q/k row order and metadata follow
llama.cpp's ``convert_hf_to_gguf.py`` for the ``llama`` architecture (the embedded SmolLM2 GGUF is the reference:
same keys, same tensor names). Weights go out as F16 or Q8_0 (``gguf.quants``); norms stay F32, and a matrix whose
rows do not split into Q8_0's 32-value blocks stays F16, as llama.cpp's converter does. The GGUF LoRA comes from
:mod:`core.backends.lora_gguf` (the fast chat engine's converter), so there is one converter.

Everything lands in ``exports/<adapter>/`` under the DemoForge home, beside an Ollama ``Modelfile``
(:mod:`core.serve_recipes`). CLI: ``python -m core.export_gguf NAME [--type f16|q8_0|lora]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from core import adapters, specs, store
from core.errors import DemoForgeError, ExportError

GgufType = Literal["f16", "q8_0"]
ExportKind = Literal["f16", "q8_0", "lora"]
EXPORT_KINDS: tuple[ExportKind, ...] = ("f16", "q8_0", "lora")
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
"""transformers architectures this writer knows (SmolLM2, TinyLlama-style BPE Llamas)."""
Progress = Callable[[float, str], None]
"""Called with (fraction done, what is happening) while an export runs."""

# llama.cpp tells BPE pre-tokenizers apart by hashing the ids of this text (convert_hf_to_gguf.py,
# get_vocab_base_pre); the hash names the regex llama.cpp must split text with before BPE.
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
    "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_KNOWN_PRE = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
}


@dataclass(frozen=True)
class ExportResult:
    """What one export wrote, all under ``folder``."""

    folder: Path
    """``exports/<adapter>/`` in the DemoForge home."""
    files: list[Path] = field(default_factory=list)
    """The model file(s) first (merged GGUF, or base GGUF + LoRA GGUF), then the Modelfile."""
    kind: ExportKind = "f16"


def _noop(_fraction: float, _desc: str) -> None:
    return None


# --- the model writer -------------------------------------------------------------------------------------------------


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf's LlamaModel.permute): HF keeps the rotary halves apart."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _check_config(config: dict, folder: Path) -> None:
    archs = config.get("architectures") or []
    if config.get("model_type") != "llama" or not set(archs) & set(SUPPORTED_ARCHITECTURES):
        raise ExportError(
            f"GGUF export supports the Llama family ({', '.join(SUPPORTED_ARCHITECTURES)}, e.g. SmolLM2, TinyLlama); "
            f"{folder.name!r} is {config.get('model_type')!r} ({', '.join(archs) or 'no architecture'}). "
            "Use llama.cpp's convert_hf_to_gguf.py on the merged folder for other architectures."
        )
    rope = config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or rope.get("type") or (config.get("rope_parameters") or {}).get("rope_type")
    if rope_type not in (None, "default"):
        raise ExportError(
            f"{folder.name!r} uses {rope_type!r} RoPE scaling, which this writer does not carry over; "
            "use llama.cpp's convert_hf_to_gguf.py for it."
        )


def _rope_theta(config: dict) -> float:
    return float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta") or 10000.0)


def tokenizer_pre(tokenizer: object) -> str | None:
    """llama.cpp's name for this tokenizer's BPE pre-tokenizer, from the hash of its ids on a fixed text."""
    ids = tokenizer.encode(_CHKTXT)  # type: ignore[attr-defined]
    return _KNOWN_PRE.get(hashlib.sha256(str(ids).encode()).hexdigest())


def _add_vocab(writer: object, folder: Path, vocab_size: int, pre: str | None) -> None:
    """tokenizer.ggml.*: tokens and types in id order, merges, special ids, add-bos/eos and the chat template."""
    import gguf
    from transformers import AutoTokenizer

    tj = folder / "tokenizer.json"
    kind = json.loads(tj.read_text(encoding="utf-8")).get("model", {}).get("type") if tj.is_file() else None
    if kind != "BPE":
        raise ExportError(
            f"GGUF export writes byte-level BPE tokenizers (tokenizer.json with a BPE model, as SmolLM2 and Llama 3 "
            f"have); {folder.name!r} has {kind or 'no tokenizer.json'}. Use llama.cpp's convert_hf_to_gguf.py."
        )
    tok = AutoTokenizer.from_pretrained(folder)
    pre = pre or tokenizer_pre(tok)
    if pre is None:
        raise ExportError(
            f"llama.cpp does not know the pre-tokenizer of {folder.name!r} by its hash (this writer knows "
            f"{', '.join(sorted(set(_KNOWN_PRE.values())))}). Pass --tokenizer-pre with llama.cpp's name for it."
        )
    reverse = {i: t for t, i in tok.get_vocab().items()}
    added, decoder = tok.get_added_vocab(), tok.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            special = decoder[i].special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
            tokens.append(token)
        else:
            types.append(gguf.TokenType.NORMAL)
            tokens.append(token)
    writer.add_tokenizer_model("gpt2")  # type: ignore[attr-defined]
    writer.add_tokenizer_pre(pre)  # type: ignore[attr-defined]
    writer.add_token_list(tokens)  # type: ignore[attr-defined]
    writer.add_token_types(types)  # type: ignore[attr-defined]
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    # Whether the tokenizer puts BOS/EOS around a text, as transformers does it; llama.cpp's default differs.
    ids = tok("a")["input_ids"]
    special.add_special_token.setdefault("bos", tok.bos_token_id is not None and ids[:1] == [tok.bos_token_id])
    special.add_special_token.setdefault("eos", tok.eos_token_id is not None and ids[-1:] == [tok.eos_token_id])
    if not special.chat_template and getattr(tok, "chat_template", None):
        special.chat_template = tok.chat_template
    special.add_to_gguf(writer)


def write_gguf(
    folder: Path,
    out: Path,
    qtype: GgufType = "f16",
    *,
    name: str | None = None,
    pre: str | None = None,
    on_progress: Progress = _noop,
) -> Path:
    """Write the Llama-family transformers model in ``folder`` (safetensors + tokenizer) as one GGUF file ``out``.

    Args:
        folder: a ``save_pretrained`` folder (a merged adapter, or a base model).
        out: the .gguf file to write; it appears atomically.
        qtype: 'f16' or 'q8_0' for the matrices (norms stay F32).
        name: ``general.name``; the folder's name when None.
        pre: llama.cpp's pre-tokenizer name; None detects it (see :func:`tokenizer_pre`).
        on_progress: called with (fraction, description) per tensor.

    Raises:
        ExportError: not a Llama-family model, a tokenizer llama.cpp cannot read, or an unknown ``qtype``.
    """
    import gguf
    from safetensors import safe_open

    if qtype not in ("f16", "q8_0"):
        raise ExportError(f"GGUF type {qtype!r} is not offered: use 'f16' or 'q8_0'.")
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    _check_config(config, folder)
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    blocks, hidden = int(config["num_hidden_layers"]), int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, blocks)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if qtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0
    tmp = out.with_name(f".tmp-{out.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(tmp, "llama")
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or folder.name)
        writer.add_block_count(blocks)
        writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
        writer.add_embedding_length(hidden)
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_rope_freq_base(_rope_theta(config))
        writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-6))
        writer.add_file_type(file_type)
        writer.add_vocab_size(int(config["vocab_size"]))
        writer.add_rope_dimension_count(head_dim)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        on_progress(0.02, "Reading the tokenizer")
        _add_vocab(writer, folder, int(config["vocab_size"]), pre)
        files = sorted(folder.glob("*.safetensors"))
        keys = [(f, k) for f in files for k in safe_open(str(f), "np").keys()]  # noqa: SIM118 - not a dict
        for done, (file, key) in enumerate(keys):
            on_progress(0.05 + 0.85 * done / len(keys), f"Writing {key}")
            if key.endswith("rotary_emb.inv_freq") or (key == "lm_head.weight" and config.get("tie_word_embeddings")):
                continue  # recomputed by llama.cpp / the tied head reads token_embd
            gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise ExportError(f"Tensor {key!r} of {folder.name!r} has no llama.cpp name: is it a plain Llama?")
            with safe_open(str(file), "np") as fh:
                data = fh.get_tensor(key).astype(np.float32)  # (out, in) for matrices
            if key.endswith("q_proj.weight"):
                data = _permute(data, n_head)
            elif key.endswith("k_proj.weight"):
                data = _permute(data, n_kv)
            _add_tensor(writer, gguf_name, data, qtype)
        on_progress(0.92, "Saving the file")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def _add_tensor(writer: object, name: str, data: np.ndarray, qtype: GgufType) -> None:
    import gguf

    if data.ndim == 1:
        writer.add_tensor(name, data)  # type: ignore[attr-defined]
    elif qtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)  # type: ignore[attr-defined]
    else:
        writer.add_tensor(name, data.astype(np.float16))  # type: ignore[attr-defined]


# --- exports of library adapters --------------------------------------------------------------------------------------


def export_dir(name: str, home: Path | None = None) -> Path:
    """``exports/<name>/`` in the DemoForge home (created)."""
    folder = store.subdir("exports", home) / store.safe_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def export_merged(
    name: str,
    qtype: GgufType = "f16",
    *,
    system: str | None = None,
    pre: str | None = None,
    home: Path | None = None,
    on_progress: Progress = _noop,
) -> ExportResult:
    """Merge adapter ``name`` into its base and write ``exports/<name>/<name>-<qtype>.gguf`` and a Modelfile."""
    from core.export import fresh_merge, merge
    from core.serve_recipes import write_modelfile

    info = adapters.get(name, home)
    if info.task != "sft":
        raise ExportError(
            f"{name!r} is a classification adapter; GGUF export is for chat adapters (llama.cpp and Ollama chat)."
        )
    merged = fresh_merge(info, home)
    if merged is not None:
        on_progress(0.0, "Reusing the merged model")  # F16 then Q8_0 merge once
    else:
        on_progress(0.0, "Merging the adapter into its base")
        merged = merge(info.name, home)
    folder = export_dir(info.name, home)
    gguf_file = write_gguf(
        merged,
        folder / f"{info.name}-{qtype}.gguf",
        qtype,
        name=info.name,
        pre=pre,
        on_progress=lambda f, d: on_progress(0.3 + 0.65 * f, d),
    )
    modelfile = write_modelfile(folder, gguf_file, merged, system=system)
    on_progress(1.0, "Done")
    return ExportResult(folder, [gguf_file, modelfile], qtype)


def base_gguf(
    info: adapters.AdapterInfo, home: Path | None = None, pre: str | None = None, on_progress: Progress = _noop
) -> Path:
    """A GGUF of the adapter's base for llama.cpp: the embedded file itself, else an F16 export of the base folder
    (written once into ``exports/base-<name>/``)."""
    from core.models import embedded_gguf_file, resolve_base

    if specs.embedded_model(info.base_model, "sft") == "smollm2":
        return embedded_gguf_file()
    folder = Path(resolve_base(info.base_model, "sft", info.card.get("base_model_path")))
    if not folder.is_dir():
        raise ExportError(
            f"The base {info.base_model!r} is a Hub id, not a local folder: download it (huggingface-cli download) "
            "and convert it with llama.cpp's convert_hf_to_gguf.py, then apply the GGUF LoRA to it."
        )
    target = store.subdir("exports", home) / f"base-{store.safe_name(folder.name)}" / "base-f16.gguf"
    if not target.is_file():
        write_gguf(folder, target, "f16", pre=pre, on_progress=on_progress)
    return target


def _link_or_copy(src: Path, dst: Path) -> Path:
    """``dst`` as a hard link to ``src`` (no second copy on disk), else a copy."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst


def export_lora(
    name: str,
    *,
    system: str | None = None,
    pre: str | None = None,
    home: Path | None = None,
    on_progress: Progress = _noop,
) -> ExportResult:
    """Write adapter ``name`` as a GGUF LoRA beside a base GGUF and an Ollama Modelfile (FROM base, ADAPTER lora)."""
    from core.backends.lora_gguf import convert
    from core.models import resolve_base
    from core.serve_recipes import write_modelfile

    info = adapters.get(name, home)
    if info.task != "sft":
        raise ExportError(f"{name!r} is a classification adapter; a GGUF LoRA is for chat adapters.")
    on_progress(0.05, "Finding the base GGUF")
    base = base_gguf(info, home, pre, lambda f, d: on_progress(0.05 + 0.6 * f, d))
    folder = export_dir(info.name, home)
    base_copy = _link_or_copy(base, folder / "base.gguf")
    on_progress(0.7, "Converting the LoRA")
    try:
        lora = convert(info.path, base)
    except DemoForgeError as exc:
        raise ExportError(str(exc)) from exc
    lora_copy = _link_or_copy(lora, folder / f"{info.name}.lora.gguf")
    tokenizer_dir = info.path if (info.path / "tokenizer_config.json").is_file() else None
    tokenizer_dir = tokenizer_dir or Path(resolve_base(info.base_model, "sft", info.card.get("base_model_path")))
    modelfile = write_modelfile(folder, base_copy, tokenizer_dir, system=system, adapter=lora_copy)
    on_progress(1.0, "Done")
    return ExportResult(folder, [base_copy, lora_copy, modelfile], "lora")


def export(
    name: str,
    kind: ExportKind = "f16",
    *,
    system: str | None = None,
    pre: str | None = None,
    home: Path | None = None,
    on_progress: Progress = _noop,
) -> ExportResult:
    """Export adapter ``name``: 'f16' or 'q8_0' (merged GGUF) or 'lora' (base GGUF + GGUF LoRA), with a Modelfile."""
    if kind not in EXPORT_KINDS:
        raise ExportError(f"Export type {kind!r} is not offered: use one of {', '.join(EXPORT_KINDS)}.")
    if kind == "lora":
        return export_lora(name, system=system, pre=pre, home=home, on_progress=on_progress)
    return export_merged(name, kind, system=system, pre=pre, home=home, on_progress=on_progress)


def main(argv: list[str] | None = None) -> int:
    """``python -m core.export_gguf NAME --type f16|q8_0|lora [--system TEXT]``; prints the written files."""
    parser = argparse.ArgumentParser(prog="python -m core.export_gguf", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the adapter's name in the library (see the Adapters tab)")
    parser.add_argument("--type", choices=EXPORT_KINDS, default="f16", help="merged F16 / Q8_0 GGUF, or a GGUF LoRA")
    parser.add_argument("--system", default=None, help="SYSTEM line of the Modelfile (default: the model's own)")
    parser.add_argument(
        "--tokenizer-pre", default=None, help="llama.cpp's pre-tokenizer name, when it is not recognised by its hash"
    )
    args = parser.parse_args(argv)
    try:
        result = export(args.name, args.type, system=args.system, pre=args.tokenizer_pre)
    except DemoForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in result.files:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
