"""The model side of a run: precision, the Accelerator, the tokenizer, the peft model and its adapter state."""

from __future__ import annotations

import hashlib
import importlib.util
from typing import Any

import torch
from accelerate import Accelerator

from core.config import ConfigError, TrainConfig
from core.pooling import pick_pooling, use_mean_pooling


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
    from core.models import bf16_training_is_faster

    # Measured, not assumed: with AMX bf16 training is ~2.3x fp32; with AVX512-BF16 alone it was slower than fp32 on
    # the Xeon we tried; without native bf16 it is emulated (see bf16_training_is_faster).
    return "bf16" if bf16_training_is_faster() else "no"


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


def build_model(
    cfg: TrainConfig,
    base_path: str,
    labels: list[str] | None,
    pad_token_id: int | None,
    tokenizer: Any = None,
    sample_ids: list[list[int]] | None = None,
) -> Any:
    """Load the base in fp32 (or 4-bit for QLoRA) and wrap it with a fresh LoRA adapter.

    Classification gets ``AutoModelForSequenceClassification`` with a new head, reading the mean of the tokens
    where :func:`core.pooling.pick_pooling` says so; peft's SEQ_CLS task type adds
    ``classifier``/``score`` to ``modules_to_save``, so the head is trained in full and saved with the adapter.
    With a ``tokenizer`` the head starts from the label names (:func:`init_head_from_label_names`); ``sample_ids``
    (token ids of some training texts) centre it.
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
        try:
            if pick_pooling(cfg.pooling, base_path, model, cfg.full_finetune) == "mean":
                use_mean_pooling(model)  # before the head's init and peft: both see the pooled mean
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if tokenizer is not None and not cfg.qlora:
            init_head_from_label_names(model, tokenizer, labels, sample_ids or [])
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


HEAD_INIT_TEMPLATES = ("{label}", "This text is about {label}.", "It is {label}.")
"""Prompts each label name is read in for the head's starting point; their features are averaged."""
HEAD_INIT_SCALE = 20.0
"""Logit per unit of cosine for the label-name head (1 / the zero-shot softmax temperature 0.05): a 0.1 cosine
gap starts as e^2 odds, confident enough to start at zero-shot accuracy, soft enough for training to move."""
HEAD_INIT_MAX_COSINE = 0.98
"""Label-name features closer than this on average (cosine, centred) cannot be told apart: the random head is kept."""
HEAD_INIT_SAMPLE = 256
"""Training texts whose mean feature is subtracted (centring): encoder features share a large common direction."""


@torch.no_grad()
def _head_features(model: Any, head: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor | None:
    """The head's input features for each text of ``batches`` (rows, hidden); None when the head sees more than
    one vector per text (causal-LM ``score`` heads run on every position, then the last token is picked)."""
    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().float()))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(**batch)
            if seen[-1].dim() != 2:
                return None
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(seen)


def _pad(ids: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    longest = max(len(r) for r in ids)
    input_ids = torch.tensor([r + [pad_id] * (longest - len(r)) for r in ids])
    mask = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in ids])
    return {"input_ids": input_ids, "attention_mask": mask}


@torch.no_grad()
def init_head_from_label_names(model: Any, tokenizer: Any, labels: list[str], sample_ids: list[list[int]]) -> bool:
    """Start the classification head at the label names' prototypes in the head's own feature space.

    Each label's row of the head becomes its name's feature (averaged over :data:`HEAD_INIT_TEMPLATES`), centred
    on the mean feature of ``sample_ids`` and scaled so a logit is :data:`HEAD_INIT_SCALE` x cosine: training then
    starts near zero-shot accuracy instead of chance. MiniLM on Banking77's dev slice: 47% from the start (52%
    centred) against 1.3% for a random head, which is what lets a 10-minute budget reach 90%. Returns False (the
    random head is kept) when names carry no words ('0', '1'), when the names' features are nearly all the same, or the
    head is not a linear map of one vector per text.
    """
    head = getattr(model, "classifier", None) or getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear) or head.out_features != len(labels):
        return False
    if not all(any(ch.isalpha() for ch in str(name)) for name in labels):
        return False
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = head.weight.device
    prompts = [
        t.format(label=str(n).replace("_", " ").replace("-", " ").strip()) for n in labels for t in HEAD_INIT_TEMPLATES
    ]
    encoded = tokenizer(prompts, truncation=True, max_length=64)["input_ids"]
    rows = [_pad(encoded[s : s + 64], pad_id) for s in range(0, len(encoded), 64)]
    feats = _head_features(model, head, [{k: v.to(device) for k, v in b.items()} for b in rows])
    if feats is None:
        return False
    # (labels, templates, hidden) -> one unit vector per label
    protos = torch.nn.functional.normalize(feats, dim=-1).view(len(labels), len(HEAD_INIT_TEMPLATES), -1).mean(1)
    sample = sample_ids[:HEAD_INIT_SAMPLE]
    if sample:
        batches = [_pad(sample[s : s + 32], pad_id) for s in range(0, len(sample), 32)]
        texts = _head_features(model, head, [{k: v.to(device) for k, v in b.items()} for b in batches])
        assert texts is not None
        radius = float(texts.norm(dim=-1).mean())
        centre = torch.nn.functional.normalize(texts, dim=-1).mean(0)
    else:
        radius = float(feats.norm(dim=-1).mean())
        centre = torch.zeros_like(protos[0])
    units = torch.nn.functional.normalize(protos - centre, dim=-1)
    n = len(labels)
    mean_cosine = (float((units @ units.T).sum()) - n) / (n * (n - 1))  # over pairs of different labels
    if mean_cosine > HEAD_INIT_MAX_COSINE:
        # names the encoder cannot tell apart (unknown words) give equal rows: equal logits send no gradient into the
        # encoder, so the body would not train from step one. One close pair is fine (Banking77's closest: 0.97)
        return False
    # logit = scale * (x / radius - centre) . unit: a cosine-like score on the raw feature x
    head.weight.copy_((HEAD_INIT_SCALE / radius) * units)
    if head.bias is not None:
        head.bias.copy_(-HEAD_INIT_SCALE * units @ centre)
    return True
