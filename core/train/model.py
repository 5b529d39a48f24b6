"""The model side of a run: precision, the Accelerator, the tokenizer, the peft model and its adapter state."""

from __future__ import annotations

import hashlib
import importlib.util
from typing import Any

import torch
from accelerate import Accelerator

from core.config import ConfigError, TrainConfig


def pick_mixed_precision(precision: str) -> str:
    """'no' | 'bf16' | 'fp16' for the Accelerator. Master weights stay fp32; only the compute is autocast."""
    cuda = torch.cuda.is_available()
    if precision == "fp32":
        return "no"
    if precision == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ConfigError("precision 'bf16' was asked for, but this GPU has no bf16 support: use 'auto'.")
        from core.models import cpu_supports_bf16

        if not cuda and not cpu_supports_bf16():
            # torch's CPU bf16 training kernels need AVX512-BF16/AMX (else: "pack_vnni2 is only supported when avx512").
            raise ConfigError(
                "precision 'bf16' was asked for, but this CPU has no native bf16 kernels (AVX512-BF16 or AMX): "
                "use 'auto' or 'fp32'."
            )
        return "bf16"
    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    from core.models import cpu_supports_bf16

    # On CPUs with AVX512-BF16/AMX bf16 matmuls are ~4.5x fp32; elsewhere bf16 is emulated and slower than fp32.
    return "bf16" if cpu_supports_bf16() else "no"


def make_accelerator(mixed_precision: str) -> Accelerator:
    """An Accelerator with this run's precision, also when an earlier run in this process used another one.

    ``AcceleratorState`` is a process-wide singleton that refuses a second, different ``mixed_precision``. A second
    run in one process (tests, a notebook) therefore clears it first through accelerate's private
    ``_reset_state()``: the only place DemoForge touches accelerate internals, and covered by a test that runs two
    precisions back to back. The distributed ``PartialState`` (the process group) is kept.
    """
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    # cpu=True without CUDA: accelerate then reads torchrun's env (LOCAL_RANK, WORLD_SIZE) as MULTI_CPU over gloo.
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())


def _quantization_config() -> Any:
    if not torch.cuda.is_available():
        raise ConfigError("qlora needs a CUDA GPU (4-bit bitsandbytes kernels); turn qlora off to train here.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("qlora needs the 'bitsandbytes' package: `pip install bitsandbytes`, or turn qlora off.")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def load_tokenizer(base_path: str) -> Any:
    """The base's tokenizer, with a pad token (packed SFT never attends to it; classification masks it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def build_model(cfg: TrainConfig, base_path: str, labels: list[str] | None, pad_token_id: int | None) -> Any:
    """Load the base in fp32 (or 4-bit for QLoRA) and wrap it with a fresh LoRA adapter.

    Classification gets ``AutoModelForSequenceClassification`` with a new head; peft's SEQ_CLS task type adds
    ``classifier``/``score`` to ``modules_to_save``, so the head is trained in full and saved with the adapter.
    """
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if cfg.qlora:
        kwargs = {"quantization_config": _quantization_config(), "dtype": torch.bfloat16}
    if cfg.task == "sft":
        model = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
        task_type = TaskType.CAUSAL_LM
    else:
        assert labels is not None
        model = AutoModelForSequenceClassification.from_pretrained(
            base_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            **kwargs,
        )
        if model.config.pad_token_id is None and pad_token_id is not None:
            model.config.pad_token_id = pad_token_id  # causal-LM classifiers find the last token by the pad id
        task_type = TaskType.SEQ_CLS
    model.config.use_cache = False
    if cfg.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(
        task_type=task_type,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        modules_to_save=full_finetune_modules(model) if cfg.full_finetune else None,
    )
    return get_peft_model(model, lora)


def full_finetune_modules(model: Any) -> list[str]:
    """Full fine-tuning inside peft: the backbone's parts (all but the pooler, which keeps a LoRA target) become
    ``modules_to_save``, so they train in full and checkpoint, save and load like any adapter. Names are qualified
    ('bert.encoder'): peft matches by suffix, and a bare 'embeddings' would also wrap 'word_embeddings'."""
    prefix = model.base_model_prefix
    backbone = getattr(model, prefix)
    parts = [
        f"{prefix}.{n}" for n, m in backbone.named_children() if n != "pooler" and any(True for _ in m.parameters())
    ]
    if not any(n == "pooler" and m is not None for n, m in backbone.named_children()):
        raise ConfigError(
            f"full_finetune needs an encoder with a pooler (BERT-like, e.g. MiniLM); {type(model).__name__} has "
            "none. Use LoRA (full_finetune: false) for this base."
        )
    return parts


def lora_state(model: Any) -> dict[str, torch.Tensor]:
    """The adapter's trainable tensors (LoRA A/B and the classification head), detached CPU copies."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """Order-independent fingerprint of an adapter state: equal on every rank after a synchronised step."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
