"""What the chat column and Compare share: message conversion, the adapter choices, and the sampling controls."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.config import DemoProfile, GenerationSettings

if TYPE_CHECKING:
    from core.chat import Message
    from core.engine import Engine

BASE = "Base model (no adapter)"
"""The adapter picker's entry for the plain base model."""
INTERRUPTED = "\n\n*(reply interrupted)*"
"""Appended to a reply that Stop or an error cut short; never sent back to the model."""


def text_of(content: Any) -> str:
    """Gradio 6 message content (a string, or a list of {'type': 'text', 'text': ...} blocks) -> plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    if isinstance(content, list):
        return "".join(text_of(block) for block in content)
    return "" if content is None else str(content)


def to_plain(history: list[dict] | None) -> list[Message]:
    """Chatbot history -> plain role/content dicts for the engine (drops metadata and the interrupted mark)."""
    return [{"role": m["role"], "content": text_of(m.get("content")).removesuffix(INTERRUPTED)} for m in history or []]


def adapter_choices(engine: Engine) -> list[str]:
    """Chat picker choices: the plain base first, then every chat adapter trained on this base."""
    return [BASE, *(a.name for a in engine.chat_adapters())]


def adapter_arg(choice: str | None) -> str | None:
    """Picker value -> adapter name for the engine (None = base)."""
    return None if not choice or choice == BASE else choice


@dataclass(frozen=True)
class ChatRequest:
    """What one reply is asked with: the widget values, validated into core's settings."""

    system_prompt: str
    settings: GenerationSettings
    adapter: str | None = None
    """Library name of the chat adapter; None is the plain base."""

    @classmethod
    def from_widgets(
        cls,
        system_prompt: str,
        temperature: float,
        top_p: float,
        top_k: float,
        max_new_tokens: float,
        repetition_penalty: float,
        seed: float | None,
        adapter: str | None = None,
    ) -> ChatRequest:
        """Widget values (in :class:`SamplingControls` order) -> a request; seed -1 or empty means random.

        Raises:
            ConfigError: a value out of range (GenerationSettings says which).
        """
        settings = GenerationSettings(
            temperature=float(temperature),
            top_p=float(top_p),
            top_k=int(top_k),
            max_new_tokens=int(max_new_tokens),
            repetition_penalty=float(repetition_penalty),
            seed=None if seed is None or int(seed) < 0 else int(seed),
        )
        return cls(system_prompt or "", settings, adapter_arg(adapter))


@dataclass(frozen=True)
class SamplingControls:
    """The system prompt and sampling widgets; their order is the order of the /respond and /compare parameters."""

    system: gr.Textbox
    temperature: gr.Slider
    top_p: gr.Slider
    top_k: gr.Slider
    max_new_tokens: gr.Slider
    repetition_penalty: gr.Slider
    seed: gr.Number

    @property
    def inputs(self) -> list[gr.components.Component]:
        """The widgets as event inputs, in :meth:`ChatRequest.from_widgets` order."""
        return [getattr(self, f.name) for f in fields(self)]


def build_sampling(profile: DemoProfile) -> SamplingControls:
    """The 'System prompt and sampling' accordion, inside the current Blocks context."""
    with gr.Accordion("System prompt and sampling", open=False, elem_id="df-sampling"):
        system = gr.Textbox(label="System prompt", value=profile.system_prompt, lines=3)
        with gr.Row():
            temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p")
            top_k = gr.Slider(0, 200, value=50, step=1, label="Top-k (0 = off)")
        with gr.Row():
            max_new = gr.Slider(16, 2048, value=256, step=16, label="Max new tokens")
            rep = gr.Slider(1.0, 2.0, value=1.1, step=0.05, label="Repetition penalty")
            seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
    return SamplingControls(system, temperature, top_p, top_k, max_new, rep, seed)
