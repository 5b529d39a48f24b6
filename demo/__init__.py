"""The Gradio layer: assembles the tabs on top of core's Engine. Never imports torch or transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from core.config import AppConfig
from core.engine import Engine
from demo.chat_tab import adapter_choices, build_chat_tab
from demo.classify_tab import adapter_names as classify_adapter_names
from demo.classify_tab import adapter_update as classify_adapter_update
from demo.classify_tab import ClassifyTab, build_classify_tab
from demo.finetune_tab import FinetuneTab, build_finetune_tab
from demo.library_tab import build_library_tab, library_update

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def build_app(engine: Engine, config: AppConfig) -> gr.Blocks:
    """Build the whole app; theme and css are passed to launch() (Gradio 6)."""
    profile = config.profile
    with gr.Blocks(title=profile.title) as app:
        with gr.Column(elem_id="df-header"):
            gr.Markdown(f"# {profile.title}\n{profile.description}")
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat"):
                chat = build_chat_tab(engine, profile, concurrency=config.concurrency)
            with gr.Tab("Classify", id="classify") as classify_tab:
                classify = build_classify_tab(engine)
            with gr.Tab("Fine-tune", id="finetune"):
                finetune = build_finetune_tab(engine)
            with gr.Tab("Adapters", id="adapters") as adapters_tab:
                library = build_library_tab(engine)
        _wire_adapters(app, engine, tabs, chat, finetune, library, adapters_tab, classify, classify_tab)
    # A bounded queue: beyond queue_size waiting requests, Gradio answers "queue is full" at once instead of
    # letting visitors wait forever; each visitor sees their position while waiting.
    app.queue(max_size=config.queue_size, default_concurrency_limit=config.concurrency)
    return app


def _wire_adapters(
    app: gr.Blocks,
    engine: Engine,
    tabs: gr.Tabs,
    chat: dict,
    finetune: FinetuneTab,
    library: dict,
    adapters_tab: gr.Tab,
    classify: ClassifyTab,
    classify_tab: gr.Tab,
) -> None:
    """Cross-tab events: a finished run or a library change refreshes every adapter picker; 'Use in Chat' and
    'Use in Classify' switch tabs."""
    pickers = [chat["adapter"], chat["compare_a"], chat["compare_b"], classify.adapter]

    def refresh_all(selected: str | None = None):
        choices = adapter_choices(engine)
        return (
            *library_update(selected),
            gr.update(choices=choices),
            gr.update(choices=choices[1:]),
            gr.update(choices=choices[1:]),
            classify_adapter_update(engine),
        )

    outputs = [library["table"], library["pick"], *pickers]
    # The run's status flips to finished when its adapter lands: refresh pickers then.
    finetune.run_status.change(
        lambda status, sel: refresh_all(sel) if status in ("finished", "time_budget") else (gr.skip(),) * len(outputs),
        [finetune.run_status, library["pick"]],
        outputs,
        queue=False,
        api_visibility="private",
    )
    adapters_tab.select(refresh_all, [library["pick"]], outputs, queue=False, api_visibility="private")
    # Pickers are built once per server start; a page (re)load brings in adapters trained since.
    app.load(refresh_all, [library["pick"]], outputs, queue=False, api_visibility="private")
    for key in ("rename", "delete"):
        library[key].click(
            lambda sel: refresh_all(sel)[2:], [library["pick"]], pickers, queue=False, api_visibility="private"
        )

    def use_in_chat(name: str | None):
        if not name:
            raise gr.Error("Pick an adapter first.", duration=5)
        choices = adapter_choices(engine)
        if name not in choices:
            raise gr.Error(f"{name!r} is not a chat adapter for this app's model; see its card.", duration=8)
        seconds = engine.switch_adapter(name)
        note = f"Using adapter **{name}** (switched in {seconds * 1000:.0f} ms, base model not reloaded)."
        return gr.update(choices=choices, value=name), gr.Tabs(selected="chat"), note

    library["use_chat"].click(
        use_in_chat, [library["pick"]], [chat["adapter"], tabs, chat["status"]], api_visibility="private"
    )

    def use_in_classify(name: str | None):
        if not name:
            raise gr.Error("Pick an adapter first.", duration=5)
        if name not in (names := classify_adapter_names(engine)):
            raise gr.Error(f"{name!r} is not a classification adapter; use it in the Chat tab.", duration=8)
        return "adapter", gr.update(choices=names, value=name, visible=True), gr.Tabs(selected="classify")

    library["use_classify"].click(
        use_in_classify,
        [library["pick"]],
        [classify.method, classify.adapter, tabs],
        queue=False,
        api_visibility="private",
    )
    classify_tab.select(
        lambda: classify_adapter_update(engine), None, [classify.adapter], queue=False, api_visibility="private"
    )


def launch_options(config: AppConfig) -> dict[str, Any]:
    """Keyword arguments for ``Blocks.launch()``: secure defaults (no SSR, upload cap, auth) plus theme and css."""
    return {
        "server_name": config.host,
        "server_port": config.port,
        "share": config.share,
        "auth": config.auth,
        "ssr_mode": False,
        "max_file_size": f"{config.max_upload_mb}mb",
        "theme": gr.themes.Soft(),
        "css_paths": [ASSETS / "style.css"],
        "show_error": False,
    }
