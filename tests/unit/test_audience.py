"""The audience's chat handler, without a server: what each streamed update does to the page's widgets."""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr
import pytest

from core.chat import StreamPiece
from core.config import DemoProfile
from core.errors import ChatError
from demo.audience import BUSY, EMPTY, AudienceHandlers


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


class _Request:
    def __init__(self, session: str) -> None:
        self.session_hash = session


def test_the_pages_enter_takes_the_message_at_once_and_answers_it_in_a_second_step() -> None:
    """Enter moves the message into the chat and out of the box before the queue; the answer step never writes the
    box (what the visitor types while waiting is theirs); a second Enter before the answer ends is refused in the
    validator's words, per page; the answer's end lets that page send again."""
    handlers = AudienceHandlers(_Engine(), DemoProfile(title="t"))
    me, other = _Request("s1"), _Request("s2")
    assert handlers.check_enter("  hi ", [], me)[0]["is_valid"]
    history, box, pending = handlers.accept("  hi ", [], me)
    assert (history, box, pending) == ([{"role": "user", "content": "hi"}], "", "hi")
    note = handlers.check_enter("next", history, me)[0]
    assert not note["is_valid"] and note["message"] == BUSY
    with pytest.raises(ChatError, match="still on its way"):
        handlers.accept("next", history, me)  # a raw caller past the validator gets the same words
    assert handlers.check_enter("mine", [], other)[0]["is_valid"]  # another page is not held up
    answers = list(handlers.answer(pending, history, None))
    assert answers[0] == [*history, {"role": "assistant", "content": ""}]  # the message once, not twice
    assert answers[-1][-1] == {"role": "assistant", "content": "Hello there"}
    assert all(isinstance(a, list) for a in answers)  # the chat only: never the box
    handlers.release(me)
    assert handlers.check_enter("next", answers[-1], me)[0]["is_valid"]
    assert handlers.check_enter("   ", [], me)[0]["message"] == EMPTY
