"""The audience's chat handler, without a server: what each streamed update does to the page's widgets."""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr

from core.chat import StreamPiece
from core.config import DemoProfile
from demo.audience import AudienceHandlers


class _Engine:
    """Streams a fixed reply in three pieces."""

    def chat_stream(self, turns: list, settings: object, system: str | None, adapter: str | None) -> Iterator:
        for text in ("Hel", "Hello", "Hello there"):
            yield StreamPiece(text=text)


def test_a_streaming_reply_empties_the_box_once_and_then_leaves_it_to_the_visitor() -> None:
    """Every streamed update used to set the message box to "": whatever a visitor typed while the reply was
    written was wiped. The first update empties it (the message is in the chat now); later ones skip it."""
    handlers = AudienceHandlers(_Engine(), DemoProfile(title="t"))
    updates = list(handlers.respond("hi", [], None))
    assert updates[0][1] == ""
    assert len(updates) == 4 and all(box == gr.skip() for _, box in updates[1:]), updates
    assert updates[-1][0][-1] == {"role": "assistant", "content": "Hello there"}
    assert list(handlers.chat("hi")) == ["", "Hel", "Hello", "Hello there"]  # the API's one-shot chat is unchanged
