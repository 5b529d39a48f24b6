"""Compare: one prompt answered by the base and by one or two adapters, side by side, streaming.

Each column is titled with its model's name, its timing sits under it (not in the answer), and a column whose
turn has not come yet says what it waits for.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from core.engine import Engine
from demo.chat.common import ChatRequest, SamplingControls, adapter_choices
from demo.errors import shows_errors
from demo.queue import MODEL_QUEUE

BASE_LABEL = "Base model"
SLOT_LABELS = ("Adapter A", "Adapter B (optional)")


@dataclass(frozen=True)
class Compare:
    """The Compare section's components; ``answers``/``stats`` are the base, A and B columns in order."""

    prompt: gr.Textbox
    first: gr.Dropdown
    second: gr.Dropdown
    run: gr.Button
    stop: gr.Button
    answers: tuple[gr.Textbox, gr.Textbox, gr.Textbox]
    stats: tuple[gr.Markdown, gr.Markdown, gr.Markdown]

    @property
    def outputs(self) -> list[gr.components.Component]:
        """The /compare outputs: three answers, then three stats lines."""
        return [*self.answers, *self.stats]


def column_label(name: str | None, slot: int) -> str:
    """An answer column's title: the adapter's name once one is picked."""
    return name or ("Adapter A" if slot == 1 else "Adapter B")


def relabel(name: str | None, slot: int) -> Any:
    """Title the slot's column after the adapter picked for it."""
    return gr.update(label=column_label(name, slot))


@shows_errors("comparing models")
def run_compare(
    engine: Engine,
    text: str,
    first: str | None,
    second: str | None,
    system_prompt: str,
    temperature: float,
    top_p: float,
    top_k: float,
    max_new_tokens: float,
    repetition_penalty: float,
    seed: float,
) -> Iterator[tuple[Any, ...]]:
    """/compare: answer ``text`` with the base, then adapter A, then B; yields 3 answers and 3 stats lines."""
    if not text or not text.strip():
        raise gr.Error("Type a prompt to compare.", duration=5)
    if not first and not second:
        raise gr.Error("Pick at least one adapter to compare with the base model.", duration=5)
    request = ChatRequest.from_widgets(
        system_prompt, temperature, top_p, top_k, max_new_tokens, repetition_penalty, seed
    )
    names = [None, first or None, second or None]
    titles = [BASE_LABEL, column_label(first, 1), column_label(second, 2)]
    answers: list[Any] = ["", "", ""]
    stats = ["", "", ""]
    for col, name in enumerate(names):
        if col and name is None:
            answers[col], stats[col] = "", "No adapter picked."
        elif col:
            stats[col] = f"Waiting: answers after {titles[col - 1]}."
    for col, name in enumerate(names):
        if col and name is None:
            continue
        stats[col] = "*Generating…*"
        labelled = [gr.update(value=a, label=t) for a, t in zip(answers, titles)]
        yield (*labelled, *stats)
        for piece in engine.chat_stream(
            [{"role": "user", "content": text}], request.settings, request.system_prompt, adapter=name
        ):
            answers[col] = piece.text
            if piece.done and piece.stats is not None:
                stats[col] = piece.stats.summary()
            yield (*answers, *stats)


def build_compare(engine: Engine) -> Compare:
    """Lay out Compare inside the current Blocks context (events: :func:`wire_compare`)."""
    choices = adapter_choices(engine)[1:]
    with gr.Accordion("Compare: base vs fine-tuned, side by side", open=False, elem_id="df-compare"):
        with gr.Row():
            prompt = gr.Textbox(
                label="Prompt", placeholder="One question, answered by each model", scale=4, elem_id="df-compare-prompt"
            )
            first = gr.Dropdown(
                choices=choices, label=SLOT_LABELS[0], scale=2, allow_custom_value=True, elem_id="df-compare-a"
            )
            # B starts empty: comparing the newest adapter with itself says nothing.
            second = gr.Dropdown(
                choices=choices,
                value=None,
                label=SLOT_LABELS[1],
                scale=2,
                allow_custom_value=True,
                elem_id="df-compare-b",
            )
        with gr.Row():
            run = gr.Button("Compare", variant="primary", elem_id="df-compare-run")
            stop = gr.Button("Stop comparing", variant="stop", elem_id="df-compare-stop")
        answers, stats = [], []
        with gr.Row(equal_height=True):
            first_label = column_label(choices[0] if choices else None, 1)  # A starts on the newest adapter
            for key, label in (("base", BASE_LABEL), ("a", first_label), ("b", column_label(None, 2))):
                with gr.Column(min_width=200):
                    answers.append(gr.Textbox(label=label, lines=8, interactive=False, elem_id=f"df-compare-out-{key}"))
                    stats.append(gr.Markdown("", elem_id=f"df-compare-stats-{key}", elem_classes="df-stats"))
    return Compare(prompt, first, second, run, stop, tuple(answers), tuple(stats))  # type: ignore[arg-type]


def wire_compare(engine: Engine, cmp: Compare, sampling: SamplingControls, concurrency: int) -> None:
    """Compare's events and its /compare endpoint."""
    model: dict[str, Any] = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": concurrency}
    fn = functools.partial(run_compare, engine)
    inputs = [cmp.prompt, cmp.first, cmp.second, *sampling.inputs]
    # Progress (queue position while waiting) on the stats lines; the answers stay readable.
    shown: dict[str, Any] = {"show_progress_on": list(cmp.stats)}
    ran = cmp.run.click(fn, inputs, cmp.outputs, api_name="compare", **shown, **model)
    asked = cmp.prompt.submit(fn, inputs, cmp.outputs, api_visibility="private", **shown, **model)
    cmp.stop.click(None, None, None, cancels=[ran, asked], queue=False, api_visibility="private")
    quick: dict[str, Any] = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}
    cmp.first.change(functools.partial(relabel, slot=1), [cmp.first], [cmp.answers[1]], **quick)
    cmp.second.change(functools.partial(relabel, slot=2), [cmp.second], [cmp.answers[2]], **quick)
