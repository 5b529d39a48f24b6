"""Mean pooling for sentence encoders used as classifiers.

``*ForSequenceClassification`` on a BERT-like encoder classifies from the pooler: a dense layer + tanh on the
first ([CLS]) token. A sentence-transformers encoder such as the embedded all-MiniLM-L6-v2 was trained to mean its
token vectors instead, and its pooler is left over from pre-training. Classifying from the mean starts from the
vectors the encoder was trained for, so a short run learns more: on held-out SST-2 sentences after 1,000 LoRA steps
(``tests/bench/bench_classify.py``'s splits, same seed) 0.907 vs 0.896 with the [CLS] pooler, and dev accuracy 0.83
vs 0.78 after 200 steps. The pooler's dense + tanh on top of the mean gave 0.897: the pre-training pooler only
gets in the way.

The swap is in place on one model (no transformers class is patched), so the saved adapter and its card say which
pooling it was trained with, and loading applies the same.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Literal

import torch

Pooling = Literal["cls", "mean"]

MEAN_POOLING_HOWTO = """The classification head reads the **mean of the token vectors**, not the [CLS] pooler,
so call the encoder and the head yourself. `model` is the loaded `AutoModelForSequenceClassification` (for the
adapter: the base loaded with `num_labels=len(labels)`, then `PeftModel.from_pretrained(base, folder)
.merge_and_unload()`), `enc` the tokenizer's output:

```python
hidden = model.base_model(**enc).last_hidden_state
mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
logits = model.classifier((hidden * mask).sum(1) / mask.sum(1))
```
"""
"""How to load a mean-pooled classifier outside DemoForge, for the READMEs written beside adapters and merged models
(``model(**enc).logits`` would classify from the untrained [CLS] pooler instead)."""


class MeanPooler(torch.nn.Module):
    """Stands in for an encoder's pooler: the attention-masked mean of the last hidden states.

    The encoder calls its pooler with the hidden states only, so the mask reaches it through :func:`use_mean_pooling`'s
    hooks on the encoder (set before its forward, cleared after), kept per thread: two threads classifying with one
    model must never pool with each other's mask.
    """

    def __init__(self) -> None:
        super().__init__()
        self.masks: dict[int, torch.Tensor] = {}

    @property
    def mask(self) -> torch.Tensor | None:
        """The attention mask of this thread's forward in progress, if any."""
        return self.masks.get(threading.get_ident())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        if mask is None or tuple(mask.shape) != tuple(hidden.shape[:2]):
            return hidden.mean(dim=1)  # no padding to leave out
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        count = mask.to(torch.float32).sum(dim=1, keepdim=True).clamp(min=1.0)  # bf16 counts exactly only to 256
        return ((hidden * weights).sum(dim=1) / count).to(hidden.dtype)


def _keep_mask(module: Any, args: tuple, kwargs: dict) -> None:
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:  # BERT-like forward(input_ids, attention_mask, ...)
        mask = args[1]
    if mask is None:
        module.pooler.masks.pop(threading.get_ident(), None)
    else:
        module.pooler.masks[threading.get_ident()] = mask


def _drop_mask(module: Any, _args: tuple, _out: Any) -> None:
    module.pooler.masks.pop(threading.get_ident(), None)


def declared_pooling(base_path: str) -> Pooling:
    """'mean' when ``base_path`` is a sentence-transformers folder whose pooling is the mean of the tokens
    (``1_Pooling/config.json``) or a classifier DemoForge merged from a mean-pooled adapter (``demoforge_pooling`` in
    its ``config.json``), else 'cls' (the model's own pooler). Only local folders are read: a Hub id keeps its pooler
    unless the run asks for ``pooling: mean``."""
    folder = Path(base_path)
    try:
        settings = json.loads((folder / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
        if settings.get("pooling_mode_mean_tokens"):
            return "mean"
    except (OSError, ValueError, AttributeError):
        pass
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        return "mean" if config.get("demoforge_pooling") == "mean" else "cls"
    except (OSError, ValueError, AttributeError):
        return "cls"


def pick_pooling(choice: str, base_path: str, model: Any, full_finetune: bool = False) -> Pooling:
    """The pooling a classification run uses: ``choice`` ('auto', 'cls' or 'mean', from the run's config) for
    ``model`` loaded from ``base_path``. Raises ValueError for 'mean' on a model without an encoder pooler."""
    if choice == "mean":
        if not can_mean_pool(model):
            raise ValueError(
                f"pooling 'mean' needs a BERT-like encoder with a pooler; {type(model).__name__} has none. "
                "Use pooling 'auto' or 'cls' for this base."
            )
        return "mean"
    if choice == "auto" and not full_finetune and can_mean_pool(model) and declared_pooling(base_path) == "mean":
        return "mean"
    return "cls"


def _pooler(model: Any) -> Any:
    """The encoder's pooler of ``model`` (a classifier, peft-wrapped or not), or None."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
    return getattr(backbone, "pooler", None)


def pooling_of(model: Any) -> Pooling:
    """The pooling ``model`` (a classifier, peft-wrapped or not) classifies with."""
    return "mean" if isinstance(_pooler(model), MeanPooler) else "cls"


def can_mean_pool(model: Any) -> bool:
    """Whether ``model`` is an encoder classifier with a BERT-style pooler to replace: a module with a ``dense`` layer
    that is handed the whole (batch, tokens, hidden) sequence. ALBERT's and BigBird's poolers are a bare Linear
    called on the first token only, so a mean pooler in their place would see 2-D input."""
    pooler = _pooler(model)
    if isinstance(pooler, MeanPooler):
        return True
    return not isinstance(pooler, torch.nn.Linear) and isinstance(getattr(pooler, "dense", None), torch.nn.Linear)


def use_mean_pooling(model: Any) -> None:
    """Replace the backbone's pooler of ``model`` (a ``*ForSequenceClassification``) with :class:`MeanPooler`, in
    place. Raises ValueError when the model has no pooler to replace."""
    if not can_mean_pool(model):
        raise ValueError(f"{type(model).__name__} has no encoder pooler; mean pooling applies to BERT-like encoders")
    if pooling_of(model) == "mean":
        return
    backbone = getattr(model, model.base_model_prefix)
    backbone.pooler = MeanPooler()
    backbone.register_forward_pre_hook(_keep_mask, with_kwargs=True)
    backbone.register_forward_hook(_drop_mask)
