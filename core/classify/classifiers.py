"""Text classifiers behind one interface, the batched fast path, and fine-tuned LoRA adapters.

Zero-shot by sentence embeddings lives in :mod:`core.classify.zero_shot`, by a chat model in
:mod:`core.classify.chat_likelihood`. Every classifier maps
``texts -> (n, n_labels)`` probabilities with :meth:`BaseClassifier.predict_proba` and ``texts -> [Prediction]``
with :meth:`BaseClassifier.predict`; explanations live in :mod:`core.classify.explain`, batch scoring of tables in
:mod:`core.classify.scoring`.

Speed on CPU (measured in ``tests/bench/bench_classify.py``): texts are tokenised once, sorted by token length,
batched and padded only to the longest text of each batch, then run under ``torch.inference_mode()``. On CPUs
with native bf16 (AVX512-BF16/AMX) the encoder's *weights* are cast to bf16: on this machine's Xeon (AMX) that
ran MiniLM 2.3-2.8x faster than fp32 at batch 32, while ``torch.autocast`` gained only ~10% (it re-casts every
weight on every call). See :func:`pick_inference_dtype`. Together: ~5x ``pipeline("text-classification")``.

Blank texts (empty or whitespace only) get uniform probabilities, ``label`` = the first label, ``blank=True``:
no words means no evidence, and a model's output on ``[CLS] [SEP]`` is an artefact, not a prediction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from core.errors import ClassifyError
from core.models import ModelError, cpu_supports_bf16, pick_device, resolve_base
from core.pooling import use_mean_pooling

Progress = Callable[[float], None]
DType = Literal["auto", "float32", "bfloat16"]
DEFAULT_BATCH_SIZE = 32


@dataclass
class Prediction:
    """One text's result."""

    label: str
    """The most probable label (ties: the first in label order)."""
    probs: dict[str, float]
    """Label -> probability, in label order; sums to 1."""
    blank: bool = False
    """True when the text was empty or whitespace: probabilities are uniform, not a model output."""


# --- labels ---------------------------------------------------------------------------------------------------------


def parse_labels(spec: str | Sequence[str] | Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Parse user-typed labels into ``(name, description)`` pairs (description ``""`` when none).

    Accepts ``"billing: payment or invoice questions, bug, feature request"`` (comma- or newline-separated;
    the first ``:`` splits name from description), a list of such strings, or ready ``(name, description)`` pairs.

    Raises:
        ClassifyError: fewer than 2 labels, an empty name, or the same name twice (case-insensitive).
    """
    if isinstance(spec, str):
        sep = "\n" if "\n" in spec.strip() else ","  # one per line allows commas inside descriptions
        items: list[Any] = [p for p in spec.split(sep) if p.strip()]
    else:
        items = list(spec)
    out: list[tuple[str, str]] = []
    for i, item in enumerate(items, 1):
        if isinstance(item, tuple | list):
            name, desc = str(item[0]), str(item[1] if len(item) > 1 else "")
        else:
            name, _, desc = str(item).partition(":")
        name, desc = " ".join(name.split()), " ".join(desc.split())
        if not name:
            raise ClassifyError(
                f"Label {i} has no name ({str(item).strip()!r}). Write labels as 'name' or "
                "'name: short description', separated by commas or new lines."
            )
        out.append((name, desc))
    if len(out) < 2:
        raise ClassifyError(
            f"Give at least 2 labels to choose between (got {len(out)}), e.g. "
            "'billing: payment or invoice questions, bug, feature request'."
        )
    seen: dict[str, str] = {}
    for name, _ in out:
        if name.lower() in seen:
            raise ClassifyError(
                f"Label {name!r} appears twice (as {seen[name.lower()]!r} and {name!r}). "
                "Label names must be unique; merge them or rename one."
            )
        seen[name.lower()] = name
    return out


def is_blank(text: str | None) -> bool:
    return text is None or not str(text).strip()


# --- speed ----------------------------------------------------------------------------------------------------------


def pick_inference_dtype(dtype: DType, device: str) -> torch.dtype:
    """'auto' -> bf16 on CUDA with bf16 support and on CPUs with native bf16 (AVX512-BF16/AMX); else fp32.

    Unlike batch-1 decoding (``core.models.bf16_decode_is_faster``: matrix-vector, where bf16 can lose), batched
    encoder inference is matrix-matrix work, where native bf16 wins: MiniLM at batch 32 ran 2.8x faster with bf16
    weights on this Xeon (AMX). A runtime micro-benchmark was tried and dropped: on 2 shared cores it flipped
    between runs. CPUs without native bf16 emulate it and are slower, so they stay fp32.
    """
    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device == "cpu" and cpu_supports_bf16() else torch.float32


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length (longest first, so a memory problem shows at once), cut into batches."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


# --- interface ------------------------------------------------------------------------------------------------------


class BaseClassifier:
    """What every classifier offers. Subclasses set ``labels`` and ``method`` and implement :meth:`_scores`."""

    labels: list[str]
    method: str
    """One line for the UI, e.g. 'zero-shot · sentence embeddings (all-MiniLM-L6-v2)'."""
    batch_size: int = DEFAULT_BATCH_SIZE

    def _scores(self, texts: list[str], progress: Progress | None, batch_size: int) -> torch.Tensor:
        """(n, n_labels) fp32 probabilities for non-blank texts, in the order given."""
        raise NotImplementedError

    def predict_proba(
        self, texts: Sequence[str | None], progress: Progress | None = None, batch_size: int | None = None
    ) -> torch.Tensor:
        """(n, n_labels) fp32 probabilities, rows in input order; blank texts get uniform rows.

        ``batch_size`` overrides :attr:`batch_size` for this call (explanations send all variants in one batch).
        """
        texts = ["" if t is None else str(t) for t in texts]
        out = torch.full((len(texts), len(self.labels)), 1.0 / len(self.labels))
        keep = [i for i, t in enumerate(texts) if t.strip()]
        if keep:
            out[keep] = self._scores([texts[i] for i in keep], progress, batch_size or self.batch_size).float().cpu()
        if progress:
            progress(1.0)
        return out

    def predict(self, texts: Sequence[str | None], progress: Progress | None = None) -> list[Prediction]:
        """One :class:`Prediction` per text, in input order (blank texts included; see the module docstring)."""
        probs = self.predict_proba(texts, progress)
        return [self._prediction(row, is_blank(t)) for row, t in zip(probs.tolist(), texts)]

    def _prediction(self, row: list[float], blank: bool) -> Prediction:
        best = max(range(len(row)), key=lambda j: (row[j], -j))
        return Prediction(self.labels[best], dict(zip(self.labels, row)), blank)


def _run_batched(
    owner: Any,
    texts: list[str],
    step: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    progress: Progress | None,
    batch_size: int,
) -> torch.Tensor:
    """Tokenise once, sort by length, pad per batch, run ``step`` under inference mode, restore input order.

    ``owner`` has ``tokenizer``, ``max_length`` and ``device``.
    """
    ids = owner.tokenizer(texts, truncation=True, max_length=owner.max_length, verbose=False)["input_ids"]
    batches = _batches([len(x) for x in ids], batch_size)
    out: torch.Tensor | None = None
    with torch.inference_mode():
        for k, idx in enumerate(batches):
            result = step(pad_batch([ids[i] for i in idx], owner.tokenizer.pad_token_id or 0, owner.device))
            if out is None:
                out = torch.empty((len(texts), *result.shape[1:]), dtype=torch.float32)
            out[idx] = result.float().cpu()
            if progress:
                progress((k + 1) / len(batches))
    assert out is not None  # callers never pass an empty list
    return out


def pad_batch(rows: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: (batch, longest) ``input_ids`` and ``attention_mask``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r, dtype=torch.long), 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


# --- fine-tuned -----------------------------------------------------------------------------------------------------


class SequenceClassifier(BaseClassifier):
    """Any ``*ForSequenceClassification`` model (plain or with a merged LoRA adapter) with the batched fast path."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        labels: Sequence[str],
        max_length: int | None = None,
        method: str = "sequence classifier",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        n_out = int(getattr(model.config, "num_labels", len(labels)))
        if n_out != len(labels):
            raise ClassifyError(f"The model has {n_out} outputs but {len(labels)} labels were given.")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id  # causal-LM classifiers find the last real token by it
        self.model, self.tokenizer, self.labels = model.eval(), tokenizer, [str(x) for x in labels]
        limits = [int(getattr(model.config, "max_position_embeddings", 0) or 0) or 512]
        if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
            limits.append(int(tokenizer.model_max_length))
        self.max_length = max_length or min(limits)
        self.method, self.batch_size = method, batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _scores(self, texts: list[str], progress: Progress | None, batch_size: int) -> torch.Tensor:
        step = lambda batch: torch.softmax(self.model(**batch).logits.float(), dim=-1)  # noqa: E731
        return _run_batched(self, texts, step, progress, batch_size)


def read_adapter_card(adapter_dir: str | Path) -> dict[str, Any]:
    """The ``adapter_card.json`` of a classification adapter, checked.

    Raises:
        ClassifyError: missing or unreadable card, not a classification adapter, fewer than 2 labels.
    """
    folder = Path(adapter_dir)
    card_path = folder / "adapter_card.json"
    if not card_path.is_file():
        raise ClassifyError(f"{folder} has no adapter_card.json: it was not saved by DemoForge's trainer.")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ClassifyError(f"{card_path} is not valid JSON ({exc.msg} at line {exc.lineno}).") from None
    if card.get("task") != "classification":
        raise ClassifyError(
            f"Adapter {folder.name!r} is a {card.get('task')!r} adapter, not a classification one; "
            "use it in the Chat tab."
        )
    labels = card.get("labels") or []
    if len(labels) < 2:
        raise ClassifyError(f"Adapter {folder.name!r} lists {len(labels)} label(s) in its card; 2 or more needed.")
    return card


class FineTunedClassifier(SequenceClassifier):
    """A LoRA classification adapter saved by the trainer: base + peft SEQ_CLS adapter, labels from its card."""

    card: dict[str, Any] | None = None
    """The adapter's ``adapter_card.json`` (base model, labels, metrics, data summary)."""

    @classmethod
    def load(
        cls, adapter_dir: str | Path, device: str = "auto", dtype: DType = "auto", batch_size: int = DEFAULT_BATCH_SIZE
    ) -> FineTunedClassifier:
        """Load base + adapter, merge the LoRA weights (no adapter overhead at inference), cast to the fast dtype.

        Raises:
            ClassifyError: bad card, no ``adapter_model.safetensors`` (pickle ``.bin`` adapters are refused).
            ModelError: the base model cannot be loaded.
        """
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(adapter_dir)
        card = read_adapter_card(folder)
        if not (folder / "adapter_model.safetensors").is_file():
            raise ClassifyError(
                f"{folder} has no adapter_model.safetensors; DemoForge loads safetensors only, "
                "never pickle (.bin) files. Re-save the adapter with safe_serialization=True."
            )
        labels = [str(x) for x in card["labels"]]
        base = resolve_base(str(card.get("base_model", "default")), "classification", card.get("base_model_path"))
        dev = pick_device(device)
        try:
            tok_src = folder if (folder / "tokenizer_config.json").is_file() else base
            tokenizer = AutoTokenizer.from_pretrained(tok_src, trust_remote_code=False)
            model = AutoModelForSequenceClassification.from_pretrained(
                base,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={n: i for i, n in enumerate(labels)},
                use_safetensors=True,
                trust_remote_code=False,
                dtype=torch.float32,
            )
        except OSError as exc:
            raise ModelError(
                f"Cannot load the base model {card.get('base_model')!r} of adapter {folder.name!r}: "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        if card.get("pooling") == "mean":  # trained on the tokens' mean (core.pooling): read it the same way
            use_mean_pooling(model)
        model = PeftModel.from_pretrained(model, str(folder), is_trainable=False).merge_and_unload()
        model = model.to(dev, pick_inference_dtype(dtype, dev))
        clf = cls(
            model,
            tokenizer,
            labels,
            method=f"fine-tuned · {folder.name} on {card.get('base_model')}",
            batch_size=batch_size,
        )
        clf.card = card
        return clf


_MOVED = {
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TEMPLATE",
    "DEFAULT_TEMPLATES",
    "SentenceEncoder",
    "ZeroShotEmbeddingClassifier",
    "fit_temperature",
    "label_prompt",
    "label_prompts",
}


def __getattr__(name: str) -> Any:
    """The zero-shot names moved to :mod:`core.classify.zero_shot`; imported lazily (it imports this module)."""
    if name in _MOVED:
        from core.classify import zero_shot

        return getattr(zero_shot, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
