"""The Gradio layer: assembles the tabs on top of core's Engine. Never imports torch or transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from core.config import AppConfig
from core.engine import Engine
from demo.chat_tab import build_chat_tab

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def build_app(engine: Engine, config: AppConfig) -> gr.Blocks:
    """Build the whole app; theme and css are passed to launch() (Gradio 6)."""
    profile = config.profile
    with gr.Blocks(title=profile.title) as app:
        with gr.Column(elem_id="df-header"):
            gr.Markdown(f"# {profile.title}\n{profile.description}")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                build_chat_tab(engine, profile, concurrency=config.concurrency)
    # A bounded queue: beyond queue_size waiting requests, Gradio answers "queue is full" at once instead of
    # letting visitors wait forever; each visitor sees their position while waiting.
    app.queue(max_size=config.queue_size, default_concurrency_limit=config.concurrency)
    return app


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
