"""Model specs as strings: the one table of aliases for the embedded models, and what a Hub id looks like.

No torch here: the engine and the UI compare specs without loading anything. :func:`core.models.resolve_base`
turns a spec into a path or Hub id that ``from_pretrained`` accepts.
"""

from __future__ import annotations

import re
from typing import Literal

from core.errors import ConfigError

Task = Literal["sft", "classification"]
Embedded = Literal["smollm2", "minilm"]

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""``owner/name`` as the Hugging Face Hub spells repository ids (models and datasets alike)."""

CHAT_ALIASES = frozenset({"default", "embedded", "smollm2"})
"""Specs that name the embedded SmolLM2 chat model when the task is chat (sft)."""
ENCODER_ALIASES = frozenset({"default", "embedded", "minilm"})
"""Specs that name the embedded all-MiniLM-L6-v2 encoder when the task is classification."""


def embedded_model(spec: str, task: Task) -> Embedded | None:
    """Which embedded model ``spec`` names for ``task`` ('default' means SmolLM2 for chat, MiniLM to classify).

    Raises:
        ConfigError: 'minilm' (an encoder) asked to chat.
    """
    key = spec.strip().lower()
    if task == "sft":
        if key == "minilm":
            raise ConfigError("base_model 'minilm' is an encoder: it can only be used with task 'classification'.")
        return "smollm2" if key in CHAT_ALIASES else None
    if key == "smollm2":
        return "smollm2"  # a causal LM with a new score head also classifies
    return "minilm" if key in ENCODER_ALIASES else None


def canonical(spec: str, task: Task = "sft") -> str:
    """One spelling per model: an embedded alias becomes its model's name; other specs are stripped."""
    return embedded_model(spec, task) or spec.strip()


def same_base(a: str, b: str, task: Task = "sft") -> bool:
    """True when two specs name the same base model ('default' and 'smollm2' are one chat model)."""
    return canonical(a, task) == canonical(b, task)


def is_hub_id(spec: str) -> bool:
    """True when ``spec`` looks like ``owner/name``."""
    return bool(HUB_ID.match(spec.strip()))
