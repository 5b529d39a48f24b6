"""The Chat tab: the chat column (``demo.chat.column``) and Compare (``demo.chat.compare``) over one set of
sampling controls.

Why not ``gr.ChatInterface``: it would keep streaming, stop, retry, undo, edit and the extra inputs, but
(1) its endpoint takes a message and returns text, so /respond's history-in/history-out contract would change;
(2) it clears the box before calling the model, so a refused message (too long, unknown adapter) cannot be put
back for the visitor to fix; (3) a stopped reply is not marked as interrupted; (4) Compare shares the sampling
controls, which ChatInterface renders inside its own accordion. The column below is about as short.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from core.config import DemoProfile
from core.engine import Engine
from demo.chat.column import ChatColumn, build_chat_column, wire_chat_column
from demo.chat.common import BASE, adapter_choices
from demo.chat.compare import Compare, build_compare, wire_compare
from demo.chat.served import build_served_picker, wire_served_picker

__all__ = ["BASE", "ChatTab", "adapter_choices", "build_chat_tab"]


@dataclass(frozen=True)
class ChatTab:
    """The Chat tab's parts."""

    column: ChatColumn
    compare: Compare

    @property
    def pickers(self) -> tuple[gr.Dropdown, gr.Dropdown, gr.Dropdown]:
        """The adapter pickers to refresh when the library changes: chat, compare A, compare B."""
        return self.column.adapter, self.compare.first, self.compare.second


def build_chat_tab(engine: Engine, profile: DemoProfile, concurrency: int = 1) -> ChatTab:
    """Build the Chat tab inside the current Blocks context and wire its events."""
    served = build_served_picker(engine)  # chat on a remote server: the builder picks the served model
    column = build_chat_column(engine, profile)
    compare = build_compare(engine)
    if served is not None:
        wire_served_picker(engine, served, column.model_info)
    wire_chat_column(engine, column, concurrency)
    wire_compare(engine, compare, column.sampling, concurrency)
    return ChatTab(column, compare)
