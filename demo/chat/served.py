"""The builder's "Served model" picker, shown when chat runs on a remote OpenAI-compatible server.

The audience app never builds it: the audience chats with whatever model the builder picked.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.errors import DemoForgeError
from demo.errors import shows_errors

if TYPE_CHECKING:
    from core.engine import Engine


@dataclass(frozen=True)
class ServedPicker:
    """The dropdown, its refresh button and the model line it keeps current."""

    dropdown: gr.Dropdown
    refresh: gr.Button


def remote(engine: Engine) -> Any | None:
    """The engine's chat backend when it is a remote server (it lists served models), else None."""
    backend = getattr(engine, "backend", None)  # test doubles of the engine have none
    return backend if callable(getattr(backend, "served_models", None)) else None


def build_served_picker(engine: Engine) -> ServedPicker | None:
    """Lay out the picker when chat is remote (the server's /v1/models list); None for a local engine."""
    backend = remote(engine)
    if backend is None:
        return None
    try:
        choices, value = backend.served_models(), backend.model
    except DemoForgeError:  # the server is down at startup: the picker starts empty, Refresh asks again
        choices, value = [], None
    with gr.Row(equal_height=True, elem_id="df-served-row"):
        dropdown = gr.Dropdown(
            choices=choices,
            value=value,
            label="Served model",
            info=f"Models the server at {backend.where} lists; adapters it serves appear under their names.",
            scale=4,
            elem_id="df-served-model",
        )
        refresh = gr.Button("Refresh", size="sm", scale=0, min_width=40, elem_id="df-served-refresh")
    return ServedPicker(dropdown, refresh)


@shows_errors("listing the served models")
def list_served(engine: Engine) -> Any:
    """/served_models: the server's list, asked again."""
    backend = remote(engine)
    names = backend.served_models(refresh=True)
    return gr.update(choices=names, value=backend.model if backend.model in names else None)


@shows_errors("choosing the served model")
def choose_served(engine: Engine, name: str | None) -> str:
    """/served_model: chat with ``name`` from now on; returns the new model line."""
    if not name:
        raise gr.Error("Pick a served model.", duration=5)
    remote(engine).choose_model(name)
    return f"**Model:** {engine.chat_label()}"


def wire_served_picker(engine: Engine, picker: ServedPicker, model_info: gr.Markdown) -> None:
    """Refresh lists the server's models again; picking one switches chat (and Compare) to it."""
    # Builder app only (the audience app never builds the picker), so the endpoints stay public for scripts.
    quick: dict[str, Any] = {"queue": False, "show_progress": "hidden"}
    picker.refresh.click(
        functools.partial(list_served, engine), None, [picker.dropdown], api_name="served_models", **quick
    )
    picker.dropdown.input(
        functools.partial(choose_served, engine), [picker.dropdown], [model_info], api_name="served_model", **quick
    )
