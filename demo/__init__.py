"""The Gradio layer: assembles the tabs on top of core's Engine. Never imports torch or transformers."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from core.config import AppConfig
from core.engine import Engine
from demo.chat.common import BASE, adapter_choices
from demo.chat_tab import ChatTab, build_chat_tab
from demo.classify_tab import build_classify_tab
from demo.errors import shows_errors
from demo.finetune_tab import build_finetune_tab
from demo.library_tab import LibraryChange, LibraryTab, build_library_tab, library_update
from demo.queue import open_queue
from demo.render import storage_notice

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DELETE_CACHE = (1800, 3600)
"""Gradio's temp files (uploads, downloads) are swept every 30 min once an hour old, and on shutdown."""


@dataclass(frozen=True)
class Pickers:
    """Every adapter picker outside the library: chat, compare A and B, classify."""

    chat: gr.Dropdown
    compare_a: gr.Dropdown
    compare_b: gr.Dropdown
    classify: gr.Dropdown

    @property
    def all(self) -> list[gr.Dropdown]:
        return [self.chat, self.compare_a, self.compare_b, self.classify]


def build_app(engine: Engine, config: AppConfig) -> gr.Blocks:
    """Build the whole app; theme and css are passed to launch() (Gradio 6)."""
    profile = config.profile
    with gr.Blocks(title=profile.title, delete_cache=DELETE_CACHE) as app:
        with gr.Column(elem_id="df-header"):
            gr.Markdown(f"# {profile.title}\n{profile.description}")
        if notice := storage_notice(engine.storage_lost_on_restart()):
            gr.Markdown(notice, elem_id="df-storage-notice", elem_classes=["df-warning"])
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat"):
                chat = build_chat_tab(engine, profile, concurrency=config.concurrency)
            with gr.Tab("Classify", id="classify") as classify_tab:
                classify = build_classify_tab(engine, config.max_upload_mb)
            with gr.Tab("Fine-tune", id="finetune"):
                finetune = build_finetune_tab(engine, config.max_upload_mb)
            with gr.Tab("Adapters", id="adapters") as adapters_tab:
                library = build_library_tab(engine)
        pickers = Pickers(*chat.pickers, classify.adapter)
        wire_pickers(app, engine, pickers, library, finetune.run_status, adapters_tab, classify_tab)
        wire_use_buttons(engine, tabs, chat, library, classify.method, pickers.classify)
    open_queue(app, config.queue_size, config.concurrency)
    return app


# --- the adapter pickers follow the library ---------------------------------------------------------------------------


def _keep(value: str | None, choices: list[str], change: LibraryChange | None, default: str | None) -> str | None:
    """A picker's value after a library change: a renamed adapter keeps being picked under its new name."""
    if value in choices:
        return value
    if change is not None and value == change.old and change.new in choices:
        return change.new
    return default if value else value


def refresh_pickers(
    engine: Engine,
    change: LibraryChange | None,
    chat: str | None,
    compare_a: str | None,
    compare_b: str | None,
    classify: str | None,
) -> tuple[Any, Any, Any, Any]:
    """Fresh choices for every picker; a renamed adapter stays picked under its new name, a deleted one is
    replaced by the base (chat) or nothing."""
    chat_choices = adapter_choices(engine)
    classify_choices = [a.name for a in engine.library.list("classification")]
    return (
        gr.update(choices=chat_choices, value=_keep(chat, chat_choices, change, BASE)),
        gr.update(choices=chat_choices[1:], value=_keep(compare_a, chat_choices, change, None)),
        gr.update(choices=chat_choices[1:], value=_keep(compare_b, chat_choices, change, None)),
        gr.update(choices=classify_choices, value=_keep(classify, classify_choices, change, None)),
    )


def refresh_everything(engine: Engine, selected: str | None, *values: str | None) -> tuple[Any, ...]:
    """The library table and picker, and every other picker (page load, tab switch, a finished run)."""
    return (*library_update(engine, selected), *refresh_pickers(engine, None, *values))


def wire_pickers(
    app: gr.Blocks,
    engine: Engine,
    pickers: Pickers,
    library: LibraryTab,
    run_status: gr.Textbox,
    adapters_tab: gr.Tab,
    classify_tab: gr.Tab,
) -> None:
    """A library change, a finished run, a page load or opening a tab refreshes every adapter picker."""
    quick: dict[str, Any] = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}
    # Chained after the rename/delete succeeded, so the refresh always sees the new library (a separate listener
    # on the same click could run first and hand the pickers the old name).
    for event in library.changed:
        event.success(functools.partial(refresh_pickers, engine), [library.change, *pickers.all], pickers.all, **quick)
    everything = functools.partial(refresh_everything, engine)
    ins, outs = [library.pick, *pickers.all], [library.table, library.pick, *pickers.all]
    # The run's status flips to finished when its adapter lands: refresh then.
    run_status.change(functools.partial(_after_run, engine), [run_status, *ins], outs, **quick)
    adapters_tab.select(everything, ins, outs, **quick)
    classify_tab.select(everything, ins, outs, **quick)
    # Pickers are built once per server start; a page (re)load brings in adapters trained since.
    app.load(everything, ins, outs, **quick)


def _after_run(engine: Engine, status: str, *values: str | None) -> tuple[Any, ...]:
    if status in ("finished", "time_budget"):
        return refresh_everything(engine, *values)
    return (gr.skip(),) * 6


# --- "Use in Chat" / "Use in Classify" --------------------------------------------------------------------------------


@shows_errors("switching to the adapter")
def use_in_chat(engine: Engine, name: str | None) -> tuple[Any, Any, str]:
    """Pick the adapter in the Chat tab, activate it, and open the tab."""
    if not name:
        raise gr.Error("Pick an adapter first.", duration=5)
    choices = adapter_choices(engine)
    if name not in choices:
        raise gr.Error(f"{name!r} is not a chat adapter for this app's model; see its card.", duration=8)
    seconds = engine.switch_adapter(name)
    note = f"Using adapter **{name}** (switched in {seconds * 1000:.0f} ms, base model not reloaded)."
    return gr.update(choices=choices, value=name), gr.Tabs(selected="chat"), note


@shows_errors("switching to the adapter")
def use_in_classify(engine: Engine, name: str | None) -> tuple[str, Any, Any]:
    """Pick the adapter in the Classify tab (method 'adapter') and open the tab."""
    if not name:
        raise gr.Error("Pick an adapter first.", duration=5)
    names = [a.name for a in engine.library.list("classification")]
    if name not in names:
        raise gr.Error(f"{name!r} is not a classification adapter; use it in the Chat tab.", duration=8)
    return "adapter", gr.update(choices=names, value=name, visible=True), gr.Tabs(selected="classify")


def wire_use_buttons(
    engine: Engine, tabs: gr.Tabs, chat: ChatTab, library: LibraryTab, method: gr.Radio, classify: gr.Dropdown
) -> None:
    """The library's 'Use in Chat' and 'Use in Classify' buttons switch tabs."""
    library.use_chat.click(
        functools.partial(use_in_chat, engine),
        [library.pick],
        [chat.column.adapter, tabs, chat.column.status],
        show_progress="hidden",
        api_visibility="private",
    )
    library.use_classify.click(
        functools.partial(use_in_classify, engine),
        [library.pick],
        [method, classify, tabs],
        queue=False,
        show_progress="hidden",
        api_visibility="private",
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
