"""The Chat tab through a real Gradio server and gradio_client: streaming, concurrency, bad input, busy, errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from core.chat import StreamPiece
from core.config import AppConfig
from core.engine import Engine
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


class SlowEngine:
    """A test double for Engine: a slow fake reply, or a crash, without loading a model."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls = 0
        self.lock = threading.Lock()

    def chat_label(self) -> str:
        return "fake · float32 · cpu"

    def chat_adapters(self) -> list:
        return []

    def chat_stream(self, history, settings, system_prompt=None, adapter=None) -> Iterator[StreamPiece]:
        with self.lock:
            self.calls += 1
            call = self.calls
        if self.fail and call == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        text = ""
        for word in ["one ", "two ", "three "]:
            time.sleep(0.4)
            text += word
            yield StreamPiece(text=text)


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


def test_exception_in_handler_gives_short_error_and_server_keeps_serving() -> None:
    with serve(SlowEngine(fail=True)) as url:
        client = Client(url, verbose=False)
        with pytest.raises(AppError) as err:
            client.predict("hi", api_name="/chat")
        msg = str(err.value)
        assert "Something went wrong" in msg and "still running" in msg and "Traceback" not in msg
        assert client.predict("hi", api_name="/chat").strip() == "one two three"
