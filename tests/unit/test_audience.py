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
    answers = list(handlers.answer(pending, history, None, _Request("other-page")))
    assert answers[0] == [*history, {"role": "assistant", "content": ""}]  # the message once, not twice
    assert answers[-1][-1] == {"role": "assistant", "content": "Hello there"}
    assert all(isinstance(a, list) for a in answers)  # the chat only: never the box
    assert not handlers.check_enter("next", answers[-1], me)[0]["is_valid"]  # another page's answer ended
    handlers.release(me)
    assert handlers.check_enter("next", answers[-1], me)[0]["is_valid"]
    assert handlers.check_enter("   ", [], me)[0]["message"] == EMPTY


class _Failing:
    """Refuses every message, as the model does one too long for its context."""

    def chat_stream(self, turns: list, settings: object, system: str | None, adapter: str | None) -> Iterator:
        raise ChatError("Your message is too long for this model: shorten it.")
        yield  # a generator, as the engine's


def test_a_failed_answer_releases_the_page_and_gives_the_message_back() -> None:
    """Gradio's page runs a ``.then`` only after a success: when the answer failed (or the queue refused it), the page
    stayed 'still on its way' for ten minutes and the message was gone from the box. The answer releases the page
    however it ends; the page's failure step gives an unanswered message back to the box (not over new text)."""
    handlers = AudienceHandlers(_Failing(), DemoProfile(title="t"))
    me = _Request("s1")
    history, _, pending = handlers.accept("a very long message", [], me)
    with pytest.raises(ChatError, match="too long"):
        list(handlers.answer(pending, history, None, me))
    assert handlers.check_enter("again", history, me)[0]["is_valid"]  # released by the answer itself
    handlers.accept("a very long message", [], me)  # the page may send again at once
    assert not handlers.check_enter("again", history, me)[0]["is_valid"]
    chat, box = handlers.unanswered(pending, history, "", me)  # the queue refused it: answer never ran
    assert chat == [] and box == "a very long message"
    opened = [*history, {"role": "assistant", "content": ""}]  # refused after the answer opened its reply
    assert handlers.unanswered(pending, opened, "", me) == ([], "a very long message")
    assert handlers.check_enter("again", [], me)[0]["is_valid"]
    chat, box = handlers.unanswered(pending, history, "typed meanwhile", me)
    assert chat == [] and box == gr.skip()  # what the visitor typed since is not overwritten
    partial = [*history, {"role": "assistant", "content": "Half an ans"}]
    assert handlers.unanswered(pending, partial, "", me) == (gr.skip(), gr.skip())  # a partial reply stays


def test_callers_without_a_session_are_never_held_up_and_old_sessions_are_forgotten(monkeypatch) -> None:
    from demo import audience

    handlers = AudienceHandlers(_Engine(), DemoProfile(title="t"))
    handlers.accept("hi", [], _Request(""))
    assert handlers.answering == {} and handlers.check_enter("hi", [], _Request(""))[0]["is_valid"]
    monkeypatch.setattr(audience, "MAX_SESSIONS", 4)
    for i in range(4):
        handlers.accept("hi", [], _Request(f"s{i}"))
    handlers.answering["s0"] -= audience.ANSWER_TIMEOUT_S + 1  # a page closed mid-answer, long ago
    handlers.accept("hi", [], _Request("s4"))
    assert set(handlers.answering) == {"s1", "s2", "s3", "s4"}  # the expired one went; the waiting ones stay
