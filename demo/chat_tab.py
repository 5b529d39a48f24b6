"""The Chat tab: streaming multi-turn chat with a system prompt, sampling controls, stop/retry/undo/edit/clear."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import gradio as gr

from core.adapters import AdapterError
from core.chat import ChatError, Message
from core.config import ConfigError, DemoProfile, GenerationSettings
from core.engine import Engine
from demo.errors import user_error

log = logging.getLogger(__name__)

MODEL_QUEUE = "model"
"""concurrency_id shared by every listener that runs a model, so they queue behind one limit."""


def text_of(content: Any) -> str:
    """Gradio 6 message content (a string, or a list of {'type': 'text', 'text': ...} blocks) -> plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    if isinstance(content, list):
        return "".join(text_of(block) for block in content)
    return "" if content is None else str(content)


def to_plain(history: list[dict] | None) -> list[Message]:
    """Chatbot history -> plain role/content dicts for core.chat (drops non-text metadata)."""
    return [{"role": m["role"], "content": text_of(m.get("content"))} for m in history or []]


def make_settings(
    temperature: float, top_p: float, top_k: float, max_new_tokens: float, repetition_penalty: float, seed: float | None
) -> GenerationSettings:
    """Widget values -> GenerationSettings (validated); seed -1 or empty means random."""
    return GenerationSettings(
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=int(top_k),
        max_new_tokens=int(max_new_tokens),
        repetition_penalty=float(repetition_penalty),
        seed=None if seed is None or int(seed) < 0 else int(seed),
    )


BASE = "Base model (no adapter)"


def adapter_choices(engine: Engine) -> list[str]:
    """Dropdown choices: the plain base first, then every chat adapter trained on this base."""
    return [BASE, *(a.name for a in engine.chat_adapters())]


def adapter_arg(choice: str | None) -> str | None:
    """Dropdown value -> adapter name for the engine (None = base)."""
    return None if not choice or choice == BASE else choice


def build_chat_tab(engine: Engine, profile: DemoProfile, concurrency: int = 1) -> dict[str, gr.components.Component]:
    """Build the Chat tab inside the current Blocks context and wire its events; returns its components."""
    with gr.Row(equal_height=True):
        gr.Markdown(f"**Model:** {engine.chat_label()}", elem_id="df-model-info")
        adapter = gr.Dropdown(
            choices=adapter_choices(engine),
            value=BASE,
            label="Adapter",
            scale=2,
            allow_custom_value=True,
            elem_id="df-adapter",
            info="LoRA adapters from the Fine-tune tab; switching keeps the base loaded.",
        )
        refresh = gr.Button("⟳", size="sm", scale=0, min_width=40, elem_id="df-adapter-refresh")
    chatbot = gr.Chatbot(
        label="Chat",
        editable="user",
        height=460,
        buttons=["copy", "copy_all"],
        placeholder="Send a message to start. Press **Stop** to end a reply early; edit a message to redo from it.",
        elem_id="df-chatbot",
    )
    with gr.Row(equal_height=True):
        msg = gr.Textbox(
            show_label=False,
            placeholder="Type a message and press Enter",
            scale=8,
            lines=1,
            max_lines=8,
            elem_id="df-msg",
        )
        send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="df-send")
        stop = gr.Button("Stop", variant="stop", scale=1, min_width=80, elem_id="df-stop")
    with gr.Row():
        retry = gr.Button("↻ Retry", size="sm", elem_id="df-retry")
        undo = gr.Button("↶ Undo", size="sm", elem_id="df-undo")
        clear = gr.Button("✕ Clear", size="sm", elem_id="df-clear")
    status = gr.Markdown("", elem_id="df-status")
    if profile.examples:
        gr.Examples(examples=[[e] for e in profile.examples], inputs=[msg], label="Try an example")
    with gr.Accordion("System prompt and sampling", open=False):
        system = gr.Textbox(label="System prompt", value=profile.system_prompt, lines=3)
        with gr.Row():
            temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p")
            top_k = gr.Slider(0, 200, value=50, step=1, label="Top-k (0 = off)")
        with gr.Row():
            max_new = gr.Slider(16, 2048, value=256, step=16, label="Max new tokens")
            rep = gr.Slider(1.0, 2.0, value=1.1, step=0.05, label="Repetition penalty")
            seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
    knobs = [system, temperature, top_p, top_k, max_new, rep, seed, adapter]

    def add_user(message: str, history: list[dict]) -> tuple[list[dict], str]:
        if not message or not message.strip():
            raise gr.Error("The message is empty: type something, then press Send.", duration=5)
        return [*history, {"role": "user", "content": message}], ""

    def respond(
        history: list[dict],
        system_prompt: str,
        temperature: float,
        top_p: float,
        top_k: float,
        max_new_tokens: float,
        repetition_penalty: float,
        seed: float,
        adapter_choice: str | None = None,
    ):
        """Stream the assistant's reply to the history, which ends with the user's message."""
        plain = to_plain(history)
        try:
            settings = make_settings(temperature, top_p, top_k, max_new_tokens, repetition_penalty, seed)
            pieces = engine.chat_stream(plain, settings, system_prompt, adapter=adapter_arg(adapter_choice))
            base = list(history)
            yield [*base, {"role": "assistant", "content": ""}], "*Thinking…*", gr.skip()
            for piece in pieces:
                note = f"ℹ️ {piece.notice}\n\n" if piece.notice else ""
                if piece.done and piece.stats is not None:
                    yield [*base, {"role": "assistant", "content": piece.text}], note + piece.stats.summary(), gr.skip()
                else:
                    yield [*base, {"role": "assistant", "content": piece.text}], note + "*Generating…*", gr.skip()
        except (ChatError, ConfigError, AdapterError) as exc:
            # The request cannot be served as given: take the user's message back out of the chat and put it
            # back in the textbox, so nothing typed is lost, and say why.
            gr.Warning(str(exc), duration=8)
            last = plain[-1]["content"] if plain and plain[-1]["role"] == "user" else gr.skip()
            kept = history[:-1] if plain and plain[-1]["role"] == "user" else history
            yield kept, f"⚠️ {exc}", last
        except Exception as exc:
            raise user_error(exc, "generating a reply") from exc

    def drop_reply(history: list[dict]) -> list[dict]:
        """Retry: remove the last reply so the last user message is answered again."""
        history = list(history)
        while history and history[-1]["role"] != "user":
            history.pop()
        if not history:
            raise gr.Error("Nothing to retry yet: send a message first.", duration=5)
        return history

    def undo_turn(history: list[dict]) -> tuple[list[dict], str]:
        """Undo: remove the last exchange and put the user's message back in the textbox."""
        history = list(history)
        while history and history[-1]["role"] != "user":
            history.pop()
        if not history:
            return history, ""
        last = history.pop()
        return history, text_of(last["content"])

    def apply_edit(history: list[dict], edit: gr.EditData) -> list[dict]:
        """Edit: keep the conversation up to the edited user message (with its new text); the reply is redone."""
        index = edit.index if isinstance(edit.index, int) else edit.index[0]
        return [*history[:index], {"role": "user", "content": text_of(edit.value)}]

    stream_kw: dict[str, Any] = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": concurrency}
    outs = [chatbot, status, msg]
    ev_submit = msg.submit(add_user, [msg, chatbot], [chatbot, msg], queue=False, api_visibility="private").success(
        respond, [chatbot, *knobs], outs, api_name="respond", **stream_kw
    )
    ev_send = send.click(add_user, [msg, chatbot], [chatbot, msg], queue=False, api_visibility="private").success(
        respond, [chatbot, *knobs], outs, api_visibility="private", **stream_kw
    )
    ev_retry = retry.click(drop_reply, [chatbot], [chatbot], queue=False, api_visibility="private").success(
        respond, [chatbot, *knobs], outs, api_visibility="private", **stream_kw
    )
    ev_retry2 = chatbot.retry(drop_reply, [chatbot], [chatbot], queue=False, api_visibility="private").success(
        respond, [chatbot, *knobs], outs, api_visibility="private", **stream_kw
    )
    ev_edit = chatbot.edit(apply_edit, [chatbot], [chatbot], queue=False, api_visibility="private").success(
        respond, [chatbot, *knobs], outs, api_visibility="private", **stream_kw
    )
    running = [ev_submit, ev_send, ev_retry, ev_retry2, ev_edit]
    stop.click(lambda: "Stopped.", None, [status], cancels=running, queue=False, api_visibility="private")
    undo.click(undo_turn, [chatbot], [chatbot, msg], cancels=running, queue=False, api_visibility="private")
    chatbot.undo(undo_turn, [chatbot], [chatbot, msg], cancels=running, queue=False, api_visibility="private")
    clear.click(lambda: ([], ""), None, [chatbot, status], cancels=running, queue=False, api_visibility="private")
    chatbot.clear(lambda: "", None, [status], cancels=running, queue=False, api_visibility="private")

    def chat(
        message: str,
        history: list[dict] | None = None,
        system_prompt: str = profile.system_prompt,
        temperature: float = 0.7,
        top_p: float = 0.9,
        top_k: int = 50,
        max_new_tokens: int = 256,
        repetition_penalty: float = 1.1,
        seed: int = -1,
        adapter: str = "",
    ) -> Iterator[str]:
        """Scripting endpoint: stream the reply text to ``message`` after an optional role/content history.

        ``adapter`` names a chat adapter from the library; empty uses the base model.
        """
        try:
            settings = make_settings(temperature, top_p, top_k, max_new_tokens, repetition_penalty, seed)
            plain = [*to_plain(history), {"role": "user", "content": message or ""}]
            for piece in engine.chat_stream(plain, settings, system_prompt, adapter=adapter_arg(adapter)):
                yield piece.text
        except (ChatError, ConfigError, AdapterError) as exc:
            raise gr.Error(str(exc)) from exc
        except Exception as exc:
            raise user_error(exc, "generating a reply") from exc

    gr.api(chat, api_name="chat", **stream_kw)

    def switch(choice: str | None) -> str:
        """Load (first time) and activate the chosen adapter now, so the next reply starts at once."""
        try:
            seconds = engine.switch_adapter(adapter_arg(choice))
        except AdapterError as exc:
            raise gr.Error(str(exc)) from exc
        if adapter_arg(choice) is None:
            return "Using the base model."
        return f"Using adapter **{choice}** (switched in {seconds * 1000:.0f} ms, base model not reloaded)."

    adapter.input(switch, [adapter], [status], api_name="switch_adapter", **stream_kw)
    refresh.click(
        lambda: gr.update(choices=adapter_choices(engine)), None, [adapter], queue=False, api_visibility="private"
    )
    compare = build_compare(engine, knobs[:-1], stream_kw)
    return {
        "adapter": adapter,
        "adapter_refresh": refresh,
        **compare,
        "chatbot": chatbot,
        "msg": msg,
        "send": send,
        "stop": stop,
        "retry": retry,
        "undo": undo,
        "clear": clear,
        "status": status,
        "system": system,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "max_new_tokens": max_new,
        "repetition_penalty": rep,
        "seed": seed,
    }


def build_compare(engine: Engine, knobs: list, stream_kw: dict[str, Any]) -> dict[str, gr.components.Component]:
    """Compare mode: one prompt answered by the base and by one or two adapters, side by side, streaming."""
    with gr.Accordion("Compare: base vs fine-tuned, side by side", open=False, elem_id="df-compare"):
        with gr.Row():
            prompt = gr.Textbox(
                label="Prompt", placeholder="One question, answered by each model", scale=4, elem_id="df-compare-prompt"
            )
            first = gr.Dropdown(
                choices=adapter_choices(engine)[1:],
                label="Adapter A",
                scale=2,
                allow_custom_value=True,
                elem_id="df-compare-a",
            )
            second = gr.Dropdown(
                choices=adapter_choices(engine)[1:],
                label="Adapter B (optional)",
                scale=2,
                allow_custom_value=True,
                elem_id="df-compare-b",
            )
        with gr.Row():
            run = gr.Button("Compare", variant="primary", elem_id="df-compare-run")
            stop = gr.Button("Stop comparing", variant="stop", elem_id="df-compare-stop")
        with gr.Row(equal_height=True):
            out_base = gr.Textbox(label="Base model", lines=8, interactive=False, elem_id="df-compare-out-base")
            out_a = gr.Textbox(label="Adapter A", lines=8, interactive=False, elem_id="df-compare-out-a")
            out_b = gr.Textbox(label="Adapter B", lines=8, interactive=False, elem_id="df-compare-out-b")

    def run_compare(
        text: str,
        a: str | None,
        b: str | None,
        system_prompt: str,
        temperature: float,
        top_p: float,
        top_k: float,
        max_new_tokens: float,
        repetition_penalty: float,
        seed: float,
    ):
        """Answer the same prompt with each model in turn; each column streams while its model generates."""
        if not text or not text.strip():
            raise gr.Error("Type a prompt to compare.", duration=5)
        if not a and not b:
            raise gr.Error("Pick at least one adapter to compare with the base model.", duration=5)
        try:
            settings = make_settings(temperature, top_p, top_k, max_new_tokens, repetition_penalty, seed)
            outs = ["", "", ""]
            for col, name in enumerate([None, a or None, b or None]):
                if col and name is None:
                    outs[col] = "(no adapter picked)"
                    yield tuple(outs)
                    continue
                for piece in engine.chat_stream(
                    [{"role": "user", "content": text}], settings, system_prompt, adapter=name
                ):
                    outs[col] = piece.text + (f"\n\n— {piece.stats.summary()}" if piece.done and piece.stats else "")
                    yield tuple(outs)
        except (ChatError, ConfigError, AdapterError) as exc:
            raise gr.Error(str(exc)) from exc
        except Exception as exc:
            raise user_error(exc, "comparing models") from exc

    ev = run.click(
        run_compare, [prompt, first, second, *knobs], [out_base, out_a, out_b], api_name="compare", **stream_kw
    )
    prompt.submit(
        run_compare, [prompt, first, second, *knobs], [out_base, out_a, out_b], api_visibility="private", **stream_kw
    )
    stop.click(None, None, None, cancels=[ev], queue=False, api_visibility="private")
    return {
        "compare_prompt": prompt,
        "compare_a": first,
        "compare_b": second,
        "compare_run": run,
        "compare_base": out_base,
        "compare_out_a": out_a,
        "compare_out_b": out_b,
    }
