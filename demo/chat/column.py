"""The chat column: streaming multi-turn chat with a system prompt, sampling, stop/retry/undo/edit/clear.

A reply streams into the Chatbot while Send is disabled: a second message cannot cut the first reply short
(``busy`` also refuses it on the server, for Enter and for a second tab of the same page). Stop keeps what was
written, marked as interrupted. Waiting visitors see Gradio's queue position and estimate in the status line.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from core.config import DemoProfile
from core.engine import Engine
from core.errors import DemoForgeError
from demo.chat.common import (
    BASE,
    INTERRUPTED,
    ChatRequest,
    SamplingControls,
    adapter_arg,
    adapter_choices,
    build_sampling,
    text_of,
    to_plain,
)
from demo.errors import shows_errors, to_gr_error
from demo.queue import MODEL_QUEUE

BUSY = "A reply is still being written: wait for it, or press Stop."
EMPTY = "The message is empty: type something, then press Send."


@dataclass(frozen=True)
class ChatColumn:
    """The chat column's components."""

    model_info: gr.Markdown
    adapter: gr.Dropdown
    adapter_refresh: gr.Button
    chatbot: gr.Chatbot
    msg: gr.Textbox
    send: gr.Button
    stop: gr.Button
    retry: gr.Button
    undo: gr.Button
    clear: gr.Button
    status: gr.Markdown
    sampling: SamplingControls
    busy: gr.State
    """True while a reply of this page streams (server-side, per visitor)."""


# --- handlers ---------------------------------------------------------------------------------------------------------


def check_message(message: str, history: list[dict], busy: bool) -> list[dict]:
    """Validator of Send/Enter: an empty box or a reply in progress gets an inline note under the box, no error."""
    if busy:
        return [gr.validate(False, BUSY), gr.validate(True, ""), gr.validate(True, "")]
    empty = not (message or "").strip()
    return [gr.validate(not empty, EMPTY), gr.validate(True, ""), gr.validate(True, "")]


@shows_errors("sending a message")
def accept_message(message: str, history: list[dict], busy: bool) -> tuple[list[dict], str, Any, bool]:
    """Put the message into the chat, empty the box, lock Send until the reply ends."""
    if busy or not (message or "").strip():  # the validator said so already; API callers get the same words
        raise gr.Error(BUSY if busy else EMPTY, duration=5, title="Not sent")
    return [*history, {"role": "user", "content": message}], "", gr.update(interactive=False), True


@shows_errors("redoing a reply")
def drop_reply(history: list[dict], busy: bool) -> tuple[list[dict], Any, bool]:
    """Retry: remove the last reply so the last user message is answered again."""
    if busy:
        raise gr.Error(BUSY, duration=5, title="Not now")
    history = list(history)
    while history and history[-1]["role"] != "user":
        history.pop()
    if not history:
        raise gr.Error("Nothing to retry yet: send a message first.", duration=5, title="Nothing to retry")
    return history, gr.update(interactive=False), True


@shows_errors("editing a message")
def apply_edit(history: list[dict], busy: bool, edit: gr.EditData) -> tuple[list[dict], Any, bool]:
    """Edit: keep the conversation up to the edited user message (with its new text); the reply is redone."""
    if busy:
        raise gr.Error(BUSY, duration=5, title="Not now")
    index = edit.index if isinstance(edit.index, int) else edit.index[0]
    return [*history[:index], {"role": "user", "content": text_of(edit.value)}], gr.update(interactive=False), True


def respond(
    engine: Engine,
    history: list[dict],
    system_prompt: str,
    temperature: float,
    top_p: float,
    top_k: float,
    max_new_tokens: float,
    repetition_penalty: float,
    seed: float,
    adapter_choice: str | None = None,
) -> Iterator[tuple[list[dict], str, Any]]:
    """/respond: stream the assistant's reply to ``history`` (which ends with the user's message).

    Yields (chat history, status line, textbox). A request that cannot be served as given (too long, bad
    settings, unknown adapter) takes the user's message back out of the chat and into the textbox, so nothing
    typed is lost, and says why. An error mid-reply keeps the partial text, marked as interrupted.
    """
    base = list(history)
    reply = ""
    try:
        request = ChatRequest.from_widgets(
            system_prompt, temperature, top_p, top_k, max_new_tokens, repetition_penalty, seed, adapter_choice
        )
        pieces = engine.chat_stream(to_plain(history), request.settings, request.system_prompt, request.adapter)
        yield [*base, {"role": "assistant", "content": ""}], "*Thinking…*", gr.skip()
        for piece in pieces:
            reply = piece.text
            note = f"**Note:** {piece.notice}\n\n" if piece.notice else ""
            done = piece.done and piece.stats is not None
            status = note + (piece.stats.summary() if done else "*Generating…*")
            yield [*base, {"role": "assistant", "content": reply}], status, gr.skip()
    except DemoForgeError as exc:
        error = to_gr_error(exc, "generating a reply")
        if reply:  # refused mid-reply: keep what was written
            yield [*base, {"role": "assistant", "content": reply + INTERRUPTED}], f"**Stopped:** {exc}", gr.skip()
            return
        gr.Warning(error.message, duration=8)
        plain = to_plain(history)
        last_is_user = bool(plain) and plain[-1]["role"] == "user"
        yield (
            (history[:-1] if last_is_user else history),
            f"**Not sent:** {exc}",
            (plain[-1]["content"] if last_is_user else gr.skip()),
        )
    except Exception as exc:
        if reply:
            yield [*base, {"role": "assistant", "content": reply + INTERRUPTED}], "**Interrupted.**", gr.skip()
        raise to_gr_error(exc, "generating a reply") from exc


def unlock() -> tuple[Any, bool]:
    """After a reply (finished, refused or failed): Send works again."""
    return gr.update(interactive=True), False


def stop_reply(history: list[dict]) -> tuple[list[dict], str, Any, bool]:
    """Stop (the stream is cancelled by the listener): keep the partial reply, marked as interrupted."""
    history = list(history or [])
    if history and history[-1]["role"] == "assistant":
        text = text_of(history[-1]["content"])
        if not text.endswith(INTERRUPTED):
            history[-1] = {"role": "assistant", "content": text + INTERRUPTED}
        return history, "Stopped.", gr.update(interactive=True), False
    return history, "Stopped before the reply began.", gr.update(interactive=True), False


def undo_turn(history: list[dict]) -> tuple[list[dict], str, Any, bool]:
    """Undo: remove the last exchange and put the user's message back in the textbox."""
    history = list(history or [])
    while history and history[-1]["role"] != "user":
        history.pop()
    if not history:
        return history, "", gr.update(interactive=True), False
    last = history.pop()
    return history, text_of(last["content"]), gr.update(interactive=True), False


def clear_chat() -> tuple[list[dict], str, Any, bool]:
    """Clear: an empty chat and status."""
    return [], "", gr.update(interactive=True), False


@shows_errors("switching adapter")
def switch_adapter(engine: Engine, choice: str | None) -> str:
    """/switch_adapter: load (first time) and activate the chosen adapter now, so the next reply starts at once."""
    seconds = engine.switch_adapter(adapter_arg(choice))
    if adapter_arg(choice) is None:
        return "Using the base model."
    return f"Using adapter **{choice}** (switched in {seconds * 1000:.0f} ms, base model not reloaded)."


def picker_update(engine: Engine) -> Any:
    """Fresh choices for the chat adapter picker."""
    return gr.update(choices=adapter_choices(engine))


# --- layout and wiring ------------------------------------------------------------------------------------------------


def build_chat_column(engine: Engine, profile: DemoProfile) -> ChatColumn:
    """Lay out the chat column inside the current Blocks context (events are wired by :func:`wire_chat_column`)."""
    with gr.Row(equal_height=True, elem_id="df-chat-head"):
        model_info = gr.Markdown(f"**Model:** {engine.chat_label()}", elem_id="df-model-info")
        with gr.Row(elem_id="df-adapter-row"):
            adapter = gr.Dropdown(
                choices=adapter_choices(engine),
                value=BASE,
                label="Adapter",
                scale=2,
                allow_custom_value=True,
                elem_id="df-adapter",
                info="LoRA adapters from the Fine-tune tab; switching keeps the base loaded.",
            )
            refresh = gr.Button("Refresh", size="sm", scale=0, min_width=40, elem_id="df-adapter-refresh")
    chatbot = gr.Chatbot(
        label="Chat",
        editable="user",
        height=460,
        buttons=["copy", "copy_all"],
        placeholder="Send a message to start. Press **Stop** to end a reply early; edit a message to redo from it.",
        elem_id="df-chatbot",
    )
    with gr.Row(equal_height=True, elem_id="df-input-row"):
        msg = gr.Textbox(
            show_label=False,
            placeholder="Type a message and press Enter",
            scale=8,
            lines=1,
            max_lines=8,
            elem_id="df-msg",
        )
        send = gr.Button("Send", variant="primary", scale=1, min_width=64, elem_id="df-send")
        stop = gr.Button("Stop", variant="stop", scale=1, min_width=64, elem_id="df-stop")
    with gr.Row(elem_id="df-chat-actions"):
        retry = gr.Button("Retry", size="sm", elem_id="df-retry")
        undo = gr.Button("Undo", size="sm", elem_id="df-undo")
        clear = gr.Button("Clear", size="sm", elem_id="df-clear")
    status = gr.Markdown("", elem_id="df-status")
    if profile.examples:
        gr.Examples(examples=[[e] for e in profile.examples], inputs=[msg], label="Try an example")
    sampling = build_sampling(profile)
    busy = gr.State(False)
    return ChatColumn(
        model_info, adapter, refresh, chatbot, msg, send, stop, retry, undo, clear, status, sampling, busy
    )


def wire_chat_column(engine: Engine, col: ChatColumn, concurrency: int) -> None:
    """Events of the chat column, and the /chat, /respond and /switch_adapter endpoints."""
    private: dict[str, Any] = {"api_visibility": "private"}
    quick: dict[str, Any] = {"queue": False, "show_progress": "hidden", **private}
    model: dict[str, Any] = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": concurrency}
    lock = [col.send, col.busy]
    knobs = [*col.sampling.inputs, col.adapter]
    # The reply shows its progress (queue position, Gradio's estimate from measured reply times) in the status
    # line: an overlay on the Chatbot would hide the conversation while a visitor waits.
    streaming: dict[str, Any] = {"show_progress_on": [col.status], **model}
    reply = functools.partial(respond, engine)
    outs = [col.chatbot, col.status, col.msg]

    # The validator runs before the queue: an empty box gets a note under it instead of red error badges.
    sent = gr.on(
        [col.msg.submit, col.send.click],
        accept_message,
        [col.msg, col.chatbot, col.busy],
        [col.chatbot, col.msg, *lock],
        validator=check_message,
        show_progress="hidden",
        **private,
    ).success(reply, [col.chatbot, *knobs], outs, api_name="respond", **streaming)
    redo = gr.on(
        [col.retry.click, col.chatbot.retry], drop_reply, [col.chatbot, col.busy], [col.chatbot, *lock], **quick
    )
    redo = redo.success(reply, [col.chatbot, *knobs], outs, **streaming, **private)
    edited = col.chatbot.edit(apply_edit, [col.chatbot, col.busy], [col.chatbot, *lock], **quick)
    edited = edited.success(reply, [col.chatbot, *knobs], outs, **streaming, **private)
    running = [sent, redo, edited]
    for event in running:
        # Both: Gradio 6.31's page runs a .then only after a success (its docs say "regardless"), so a reply that
        # failed (or that the queue refused) left Send disabled and every later Enter answered "still answering".
        # A cancelled reply (Stop, Undo, Clear) runs both; unlock twice is harmless.
        event.then(unlock, None, lock, **quick)
        event.failure(unlock, None, lock, **quick)
    # Cancel first, then mark: marking in the cancelling event itself raced the stream's last updates, which
    # could land after the mark and overwrite it (seen with the fast engine's quicker updates).
    col.stop.click(None, None, None, cancels=running, **quick).then(
        stop_reply, [col.chatbot], [col.chatbot, col.status, *lock], **quick
    )
    gr.on(
        [col.undo.click, col.chatbot.undo],
        undo_turn,
        [col.chatbot],
        [col.chatbot, col.msg, *lock],
        cancels=running,
        **quick,
    )
    gr.on(
        [col.clear.click, col.chatbot.clear],
        clear_chat,
        None,
        [col.chatbot, col.status, *lock],
        cancels=running,
        **quick,
    )

    gr.api(chat_endpoint(engine, col.sampling.system.value), api_name="chat", **model)
    col.adapter.input(
        functools.partial(switch_adapter, engine),
        [col.adapter],
        [col.status],
        api_name="switch_adapter",
        show_progress_on=[col.status],
        **model,
    )
    col.adapter_refresh.click(functools.partial(picker_update, engine), None, [col.adapter], **quick)


def chat_text(engine: Engine, message: str, history: list[dict] | None, request: ChatRequest) -> Iterator[str]:
    """The reply text to ``message`` after an optional role/content history, streamed."""
    plain = [*to_plain(history), {"role": "user", "content": message or ""}]
    for piece in engine.chat_stream(plain, request.settings, request.system_prompt, request.adapter):
        yield piece.text


def chat_endpoint(engine: Engine, default_system: str) -> Any:
    """/chat, the scripting endpoint. gr.api reads its parameters from the signature, so they are spelled out."""

    @shows_errors("generating a reply")
    def chat(
        message: str,
        history: list[dict] | None = None,
        system_prompt: str = default_system,
        temperature: float = 0.7,
        top_p: float = 0.9,
        top_k: int = 50,
        max_new_tokens: int = 256,
        repetition_penalty: float = 1.1,
        seed: int = -1,
        adapter: str = "",
    ) -> Iterator[str]:
        """Stream the reply text to ``message`` after an optional role/content history.

        ``adapter`` names a chat adapter from the library; empty uses the base model.
        """
        request = ChatRequest.from_widgets(
            system_prompt, temperature, top_p, top_k, max_new_tokens, repetition_penalty, seed, adapter
        )
        yield from chat_text(engine, message, history, request)

    return chat
