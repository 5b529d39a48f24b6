"""The Chat tab through a real Gradio server and gradio_client: streaming, concurrency, bad input, busy, errors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from gradio_client.utils import Status

from core.config import AppConfig
from core.engine import Engine
from core.errors import ChatError
from demo.chat.column import BUSY, EMPTY, accept_message, check_message, stop_reply
from demo.chat.common import INTERRUPTED, to_plain
from tests.fakes import SlowEngine
from tests.helpers import serve

pytestmark = pytest.mark.ui


@pytest.fixture(scope="module")
def real_url() -> Iterator[str]:
    """The app on the real embedded SmolLM2 (converted once per test session)."""
    engine = Engine(AppConfig())
    with serve(engine) as url:
        yield url


def _blocks(text: str) -> list[dict]:
    return [{"type": "text", "text": text}]


def test_streamed_reply_arrives_in_several_pieces(real_url: str) -> None:
    client = Client(real_url, verbose=False)
    job = client.submit(
        "How many legs does a spider have?",
        None,
        "You are a helpful, concise assistant.",
        0.0,
        0.9,
        50,
        64,
        1.1,
        -1,
        api_name="/chat",
    )
    pieces = list(job)
    assert len(pieces) >= 3, pieces
    assert all(b.startswith(a) for a, b in zip(pieces, pieces[1:]))  # each piece extends the last
    assert "8" in pieces[-1] or "eight" in pieces[-1].lower()


def test_two_concurrent_clients_both_get_complete_answers(real_url: str) -> None:
    questions = ["What is the capital of Japan?", "What is the opposite of hot?"]

    def ask(q: str) -> str:
        return Client(real_url, verbose=False).predict(
            q, None, "You are a helpful, concise assistant.", 0.0, 0.9, 50, 48, 1.1, -1, api_name="/chat"
        )

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(ask, questions))
    assert "Tokyo" in answers[0]
    assert "cold" in answers[1].lower()


def test_ui_endpoint_streams_into_the_chatbot_and_reports_speed(real_url: str) -> None:
    client = Client(real_url, verbose=False)
    history = [{"role": "user", "content": _blocks("What is the capital of Japan?")}]
    chat, status, _ = client.predict(
        history, "You are a helpful, concise assistant.", 0.0, 0.9, 50, 48, 1.1, -1, api_name="/respond"
    )
    assert chat[-1]["role"] == "assistant"
    assert "Tokyo" in str(chat[-1]["content"])
    assert "tok/s" in status and "first token" in status


def test_empty_message_is_a_clear_error_and_server_keeps_serving(real_url: str) -> None:
    client = Client(real_url, verbose=False)
    with pytest.raises(AppError, match="empty"):
        client.predict("   ", api_name="/chat")
    assert client.predict("Say hi.", None, "Be brief.", 0.0, 0.9, 50, 8, 1.1, -1, api_name="/chat").strip()


def test_huge_message_is_refused_clearly_and_given_back(real_url: str) -> None:
    client = Client(real_url, verbose=False)
    huge = "word " * 20_000  # 100,000 characters, far beyond the 8k-token context
    with pytest.raises(AppError, match="too long"):
        client.predict(huge, api_name="/chat")
    # Through the UI endpoint the message goes back to the textbox and the chat loses nothing.
    earlier = [{"role": "user", "content": _blocks("hi")}, {"role": "assistant", "content": _blocks("Hello!")}]
    chat, status, textbox = client.predict(
        [*earlier, {"role": "user", "content": _blocks(huge)}],
        "Be brief.",
        0.0,
        0.9,
        50,
        32,
        1.1,
        -1,
        api_name="/respond",
    )
    assert "too long" in status
    assert textbox == huge
    assert [m["role"] for m in chat] == ["user", "assistant"]
    assert client.predict("Say hi.", None, "Be brief.", 0.0, 0.9, 50, 8, 1.1, -1, api_name="/chat").strip()


def test_full_queue_answers_busy_at_once() -> None:
    with serve(SlowEngine(), AppConfig(queue_size=1)) as url:

        def ask(_: int) -> str:
            try:
                return Client(url, verbose=False).predict("hi", api_name="/chat")
            except Exception as exc:  # noqa: BLE001 - we classify the outcome below
                return f"ERROR {exc}"

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(ask, range(4)))
    busy = [r for r in results if "Queue is full" in r and "try again" in r]
    done = [r for r in results if r.strip() == "one two three"]
    assert busy, results
    assert done, results
    assert len(busy) + len(done) == 4


def test_every_reply_gives_send_back_after_a_failure_too() -> None:
    """Send, Retry and Edit each unlock Send after their reply succeeds *and* after it fails: the page runs a .then
    only after a success (the Chromium test fails a Send; this covers the other two without a browser)."""
    from demo import build_app

    app = build_app(SlowEngine(), AppConfig())
    unlocks = [fn for fn in app.fns.values() if getattr(fn.fn, "__name__", "") == "unlock"]
    on_failure = [fn for fn in unlocks if fn.trigger_only_on_failure]
    always = [fn for fn in unlocks if not fn.trigger_only_on_failure and not fn.trigger_only_on_success]
    assert len(on_failure) == len(always) == 3, [(fn.trigger_after, fn.trigger_only_on_failure) for fn in unlocks]
    assert {fn.trigger_after for fn in on_failure} == {fn.trigger_after for fn in always}


def test_exception_in_handler_gives_short_error_and_server_keeps_serving() -> None:
    with serve(SlowEngine(fail_after=0)) as url:
        client = Client(url, verbose=False)
        with pytest.raises(AppError) as err:
            client.predict("hi", api_name="/chat")
        msg = str(err.value)
        assert "Something went wrong" in msg and "still running" in msg and "Traceback" not in msg
        assert client.predict("hi", api_name="/chat").strip() == "one two three"


KNOBS = ("Be brief.", 0.0, 0.9, 50, 32, 1.1, -1)


def test_an_error_mid_reply_keeps_the_partial_text_marked_interrupted() -> None:
    with serve(SlowEngine(words=5, step_s=0.1, fail_after=2)) as url:
        client = Client(url, verbose=False)
        job = client.submit([{"role": "user", "content": _blocks("hi")}], *KNOBS, api_name="/respond")
        with pytest.raises(AppError, match="Something went wrong"):
            job.result()
        chat, status, _ = job.outputs()[-1]
        assert [m["role"] for m in chat] == ["user", "assistant"]
        assert text_of_last(chat) == "one two " + INTERRUPTED
        assert "Interrupted" in status
        # The mark never reaches the model: the next turn sees the partial reply's own words only.
        assert to_plain(chat)[-1]["content"] == "one two "


def test_a_refused_request_mid_reply_keeps_the_partial_text_too() -> None:
    engine = SlowEngine(words=5, step_s=0.1, fail_after=3, error=ChatError("The model stopped: out of context."))
    with serve(engine) as url:
        job = Client(url, verbose=False).submit(
            [{"role": "user", "content": _blocks("hi")}], *KNOBS, api_name="/respond"
        )
        chat, status, _ = job.result()
        assert text_of_last(chat) == "one two three " + INTERRUPTED
        assert "out of context" in status


def text_of_last(chat: list[dict]) -> str:
    content = chat[-1]["content"]
    return content if isinstance(content, str) else "".join(b.get("text", "") for b in content)


def test_a_waiting_visitor_gets_queue_position_and_an_estimate_from_measured_replies() -> None:
    with serve(SlowEngine(words=10, step_s=0.2)) as url:
        first, second = Client(url, verbose=False), Client(url, verbose=False)
        history = [{"role": "user", "content": _blocks("hi")}]
        started = time.perf_counter()
        first.predict(history, *KNOBS, api_name="/respond")  # one measured reply: ~2 s
        measured = time.perf_counter() - started
        running = first.submit(history, *KNOBS, api_name="/respond")
        time.sleep(0.5)
        waiting = second.submit(history, *KNOBS, api_name="/respond")
        seen = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st = waiting.status()
            if st.code == Status.IN_QUEUE and st.eta is not None:
                seen = st
                break
            time.sleep(0.1)
        assert seen is not None, "the waiting request never reported its place in the queue"
        assert seen.rank == 0 and seen.queue_size >= 1  # first in line, behind the running reply
        # The estimate comes from the measured reply: its own reply plus what is left of the running one.
        assert measured * 0.5 < seen.eta < measured * 3, (seen.eta, measured)
        assert running.result()[0][-1]["role"] == "assistant"
        assert waiting.result()[0][-1]["role"] == "assistant"


def _fake_adapter(home: Path, name: str) -> None:
    folder = home / "adapters" / name
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"not used by the fake engine")
    (folder / "adapter_card.json").write_text(json.dumps({"task": "sft", "base_model": "default"}))


def test_compare_streams_each_column_with_stats_apart_and_says_who_waits(demoforge_home: Path) -> None:
    _fake_adapter(demoforge_home, "support-bot")
    engine = SlowEngine(words=3, step_s=0.1)
    with serve(engine) as url:
        job = Client(url, verbose=False).submit("hi", "support-bot", None, *KNOBS, api_name="/compare")
        final = job.result()
        updates = job.outputs()
    answers, stats = final[:3], final[3:]
    assert answers[0] == answers[1] == "one two three "  # the answer only: no timing pasted in
    assert "tok/s" in stats[0] and "tok/s" in stats[1]
    assert answers[2] == "" and stats[2] == "No adapter picked."
    assert engine.adapters_used == [None, "support-bot"]
    while_base_runs = [u for u in updates if u[3] == "*Generating…*"]
    assert while_base_runs and all(u[4] == "Waiting: answers after Base model." for u in while_base_runs)


def test_compare_refuses_without_a_prompt_or_an_adapter() -> None:
    with serve(SlowEngine()) as url:
        client = Client(url, verbose=False)
        with pytest.raises(AppError, match="Type a prompt"):
            client.predict("  ", "x", None, *KNOBS, api_name="/compare")
        with pytest.raises(AppError, match="at least one adapter"):
            client.predict("hi", None, None, *KNOBS, api_name="/compare")


# --- the handlers behind the page's own listeners (private: not reachable through the API) ----------------------------


def test_send_is_refused_with_a_note_when_empty_or_while_a_reply_streams() -> None:
    empty = check_message("   ", [], False)
    assert empty[0]["is_valid"] is False and empty[0]["message"] == EMPTY
    busy = check_message("next question", [], True)
    assert busy[0]["is_valid"] is False and busy[0]["message"] == BUSY
    assert all(v["is_valid"] for v in check_message("hi", [], False))
    with pytest.raises(gr.Error, match="still being written"):
        accept_message("next question", [{"role": "user", "content": "hi"}], True)
    history, box, send, busy_now = accept_message("hi", [], False)
    assert history == [{"role": "user", "content": "hi"}] and box == "" and busy_now is True
    assert send["interactive"] is False


def test_stop_keeps_the_partial_reply_and_marks_it_once() -> None:
    partial = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "one two"}]
    history, status, send, busy = stop_reply(partial)
    assert history[-1]["content"] == "one two" + INTERRUPTED and status == "Stopped." and busy is False
    assert send["interactive"] is True
    assert stop_reply(history)[0][-1]["content"] == "one two" + INTERRUPTED  # a second Stop adds nothing
    assert stop_reply(partial[:1])[1] == "Stopped before the reply began."
