"""The builder's presenter panel, added under the builder app's tabs: arena results and 'save as profile'.

Added from outside ``build_app`` (re-entering its Blocks), so the tabs' modules stay untouched.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import gradio as gr

from core import adapters
from core.arena import VoteStore
from core.config import AUDIENCE_TABS, DemoProfile
from core.errors import AdapterError
from demo.arena_tab import build_results_panel
from demo.errors import shows_errors
from demo.queue import MODEL_QUEUE


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def profile_from_form(
    current: DemoProfile,
    title: str,
    description: str,
    system_prompt: str,
    examples: str,
    adapters: list[str] | None,
    default_adapter: str | None,
    tabs: list[str] | None,
    classify_labels: str,
    arena: bool,
    data_notice: str,
    retention_days: float | None,
    store_prompts: bool,
) -> DemoProfile:
    """A validated profile from the form's values (logo, colour and classify settings kept from ``current``)."""
    days = int(retention_days) if retention_days else None
    return replace(
        current,
        title=title,
        description=description,
        system_prompt=system_prompt,
        examples=_lines(examples),
        audience_adapters=list(adapters or []),
        default_adapter=default_adapter or None,
        tabs=list(tabs or []),
        classify_labels=[x.strip() for x in (classify_labels or "").split(",") if x.strip()],
        arena=bool(arena),
        data_notice=data_notice or "",
        retention_days=days,
        store_prompts=bool(store_prompts),
    )


def add_presenter_panel(app: gr.Blocks, engine: Any, profile: DemoProfile, votes: VoteStore) -> dict[str, Any]:
    """Append the 'Show it to others' panel to the builder's ``app``; returns its components."""
    chat_names = [a.name for a in engine.chat_adapters()] if _has_adapters(engine) else []
    with app, gr.Accordion("Show it to others: audience profile and arena results", open=False, elem_id="df-present"):
        gr.Markdown("### Arena results")
        results = build_results_panel(votes, lambda prefix: engine.scratch_dir(prefix))  # looked up on export
        gr.Markdown(
            "### Save the current settings as a profile\nStart the audience view with `--profile NAME` "
            "(or `DEMOFORGE_PROFILE`); the audience sees only what it names."
        )
        with gr.Row():
            name = gr.Textbox(label="Profile name", value="my-demo")
            title = gr.Textbox(label="Title", value=profile.title)
        description = gr.Textbox(label="Description (Markdown)", value=profile.description, lines=2)
        system_prompt = gr.Textbox(label="System prompt", value=profile.system_prompt, lines=2)
        examples = gr.Textbox(label="Examples (one per line)", value="\n".join(profile.examples), lines=3)
        with gr.Row():
            adapters = gr.Dropdown(
                chat_names, value=profile.audience_adapters, multiselect=True, label="Adapters the audience may pick"
            )
            default = gr.Dropdown(
                ["", *chat_names], value=profile.default_adapter or "", label="Default adapter (empty: base model)"
            )
        with gr.Row():
            tabs = gr.CheckboxGroup(list(AUDIENCE_TABS), value=profile.tabs, label="Audience tabs")
            arena = gr.Checkbox(value=profile.arena, label="Blind arena on")
            labels = gr.Textbox(label="Classify labels (comma-separated)", value=", ".join(profile.classify_labels))
        notice = gr.Textbox(label="Data notice (empty: written from the retention settings)", value=profile.data_notice)
        with gr.Row():
            days = gr.Number(value=profile.retention_days, label="Keep arena votes (days; empty: keep)", precision=0)
            keep_prompts = gr.Checkbox(value=profile.store_prompts, label="Keep the prompt with each vote")
        save = gr.Button("Save profile", variant="primary")
        saved = gr.Markdown()

        @shows_errors("saving the profile")
        def save_profile(name: str, *values: Any) -> str:
            new = profile_from_form(profile, *values)
            path = new.save(name)
            return f"Saved **{path.name}** in `{path.parent}`. Start the audience view with `--profile {path.stem}`."

        gr.Markdown("### Run card\nOne self-contained HTML page per adapter: metrics, loss curve, held-out answers.")
        with gr.Row():
            card_pick = gr.Dropdown(_all_adapters(), label="Adapter", elem_id="df-card-pick")
            card_go = gr.Button("Make run card")
        card_file = gr.File(label="Run card (HTML)", interactive=False)
        card_go.click(
            shows_errors("making the run card")(lambda n: make_run_card(engine, profile, n)),
            [card_pick],
            [card_file],
            api_name="run_card",
            concurrency_id=MODEL_QUEUE,
        )

        inputs = [name, title, description, system_prompt, examples, adapters, default, tabs, labels, arena]
        save.click(save_profile, [*inputs, notice, days, keep_prompts], [saved], api_name="save_profile")
    return {**results, "save": save, "saved": saved}


def _all_adapters() -> list[str]:
    return [a.name for a in adapters.list_adapters()]


def make_run_card(engine: Any, profile: DemoProfile, name: str | None) -> str:
    """Write the adapter's run card now, answering up to 3 held-out prompts with the base and the adapter (greedy;
    :meth:`core.engine.Engine.run_card`)."""
    if not name:
        raise AdapterError("Pick an adapter first.")
    return str(engine.run_card(name, rebuild=True))


def _has_adapters(engine: Any) -> bool:
    return callable(getattr(engine, "chat_adapters", None))
