"""The audience's app: a Blocks built only from audience-safe handlers (Chat, Arena, Classify as the profile says).

Why a separate Blocks rather than a role check in every builder handler: Gradio keeps every event of a Blocks
callable over HTTP (by api_name, and by fn_index even when ``api_visibility="private"``), hidden or not. Here the
builder's events (training, rename, delete, merge, push, model switching) are never registered, so no request can
reach them; a check per handler would have to be remembered in every future handler, and one forgotten is a hole.
What the audience may pick (adapters, labels) is still checked on the server in each handler below.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from core.arena import BASE, VoteStore
from core.auth import refusal
from core.config import AppConfig, DemoProfile, GenerationSettings
from core.errors import ChatError, ClassifyError, ConfigError, DemoForgeError
from demo.arena_tab import MAX_PROMPT_CHARS, ArenaHandlers, build_arena_tab
from demo.errors import shows_errors
from demo.queue import MODEL_QUEUE, open_queue

MAX_TURNS = 20
"""Earlier messages an audience reply sees (the oldest beyond this are dropped)."""
ANSWER_TIMEOUT_S = 600.0
"""A page's message counts as still being answered for at most this long (a page closed mid-answer never says)."""
MAX_SESSIONS = 10_000
"""Pages tracked as being answered; beyond this, expired ones and then the oldest are forgotten."""
MCP_TOOLS = ("chat", "classify")
"""The api_names an MCP client sees as tools (``--mcp``): one-shot, stateless, audience-safe."""


EMPTY = "The message is empty: type something to send."
BUSY = "The answer to your last message is still on its way: send this one when it has arrived."


def message_problem(text: str) -> str | None:
    """What is wrong with an audience message (already stripped), in the words both the page and the API get."""
    if not text:
        return EMPTY
    if len(text) > MAX_PROMPT_CHARS:
        return f"The message is too long ({len(text)} characters): keep it under {MAX_PROMPT_CHARS}."
    return None


def _text_part(chat_message: Any) -> Any:
    """A message part as the audience's replies read it: text as is, anything else as empty text."""
    if getattr(chat_message, "type", None) == "text":
        return chat_message.model_dump()
    return {"type": "text", "text": ""}


def text_only(bot: gr.Chatbot) -> gr.Chatbot:
    """Make ``bot`` read back only the text of the messages a page sends.

    Gradio's Chatbot builds and preprocesses any component a message embeds (``{"type": "component", "component":
    "image", "value": {"path": ...}}``): an Image or Audio opened any server path, a File fetched any URL, and a
    validator ran it all again before the queue. The audience's replies need text only. Done on the instance:
    a Chatbot subclass would make Gradio write a ``.pyi`` stub beside this module at import."""
    bot._preprocess_content = _text_part  # type: ignore[method-assign]
    return bot


def _text(content: Any) -> str:
    """Gradio 6 message content (a string or a list of text blocks) -> plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, list):
        return "".join(_text(block) for block in content)
    return "" if content is None else str(content)


@dataclass
class AudienceHandlers:
    """Chat and Classify for an audience, confined to what the profile names."""

    engine: Any
    profile: DemoProfile
    answering: dict[str, float] = field(default_factory=dict)
    """Session -> when its last message was accepted, until its answer ends (see :meth:`_answering`)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def chat_choices(self) -> list[str]:
        """What the audience may chat with: the profile's adapters, or the base alone when it names none."""
        return list(self.profile.audience_adapters) or [BASE]

    def _adapter(self, choice: str | None) -> str | None:
        choice = choice or self.profile.default_adapter or self.chat_choices()[0]
        if choice not in self.chat_choices():
            raise refusal("switch_model")
        return None if choice == BASE else choice

    def chat(self, message: str, adapter: str | None = None) -> Iterator[str]:
        """Ask this demo's chat model one question and get its answer (no earlier turns; the demo's own system
        prompt applies). The answer streams; the last value is the whole answer.

        Args:
            message: the question or instruction, in plain text (under 4000 characters).
            adapter: which of the demo's models answers (one of the listed choices); empty for the demo's default.
        """
        for history, _ in self.respond(message, [], adapter):
            yield _text(history[-1]["content"]) if history[-1]["role"] == "assistant" else ""

    def respond(self, message: str, history: list[dict] | None, adapter: str | None) -> Iterator[tuple[list, str]]:
        """Stream the reply into the chat history; the system prompt is always the profile's."""
        message = (message or "").strip()
        problem = message_problem(message)
        if problem:
            raise ChatError(problem)
        name = self._adapter(adapter)
        plain = [{"role": m["role"], "content": _text(m.get("content"))} for m in history or []]
        # No system prompt from the client; and a bounded history (core truncates to the context anyway, but a
        # visitor's multi-megabyte history should not cost the server a tokenisation).
        plain = [m for m in plain if m["role"] in ("user", "assistant")][-MAX_TURNS:]
        plain = [m for m in plain if len(m["content"]) <= 4 * MAX_PROMPT_CHARS]
        turns = [*plain, {"role": "user", "content": message}]
        yield [*turns, {"role": "assistant", "content": ""}], ""
        settings = GenerationSettings(temperature=self.profile.temperature, max_new_tokens=self.profile.max_new_tokens)
        for piece in self.engine.chat_stream(turns, settings, self.profile.system_prompt, adapter=name):
            # The box was emptied above, when the message went into the chat; from then on it is the visitor's.
            # Emptying it on every streamed update wiped whatever they typed while the reply was written.
            yield [*turns, {"role": "assistant", "content": piece.text}], gr.skip()

    def _session(self, request: gr.Request | None) -> str | None:
        """The page's session, or None for a caller without one (never tracked: it could only block other such
        callers)."""
        return getattr(request, "session_hash", None) or None

    def _answering(self, request: gr.Request | None) -> bool:
        """Whether this page's last message is still waiting for or receiving its answer. Kept here by session,
        not in a gr.State: Gradio's validators read a State's initial value, not the session's."""
        session = self._session(request)
        with self._lock:
            started = self.answering.get(session) if session else None
        return started is not None and time.monotonic() - started < ANSWER_TIMEOUT_S

    def _enter_problem(self, message: str, request: gr.Request | None) -> str | None:
        """What stops the page's Enter (message already stripped): an empty or too long message, or the answer to
        the last one still on its way (a second message would be answered without the first's answer)."""
        return BUSY if self._answering(request) else message_problem(message)

    def check_enter(self, message: str, history: list[dict] | None, request: gr.Request) -> list[dict]:
        """Validator of the page's Enter: a note under the box for what :meth:`_enter_problem` finds."""
        problem = self._enter_problem((message or "").strip(), request)
        return [gr.validate(problem is None, problem or ""), gr.validate(True, "")]

    def accept(self, message: str, history: list[dict] | None, request: gr.Request) -> tuple[list[dict], str, str]:
        """The page's Enter, first step (before the queue): the message goes into the chat and out of the box, so
        whatever the visitor types while it waits for its turn stays in the box. Kept for the second step."""
        message = (message or "").strip()
        problem = self._enter_problem(message, request)
        if problem:  # the validator said so already; a raw caller gets the same words
            raise ChatError(problem)
        session = self._session(request)
        if session:
            now = time.monotonic()
            with self._lock:
                if len(self.answering) >= MAX_SESSIONS:  # pages closed mid-answer: the expired, else the oldest half
                    expired = [k for k, t in self.answering.items() if now - t >= ANSWER_TIMEOUT_S]
                    oldest = sorted(self.answering, key=self.answering.__getitem__)[: len(self.answering) // 2]
                    for old in expired or oldest:
                        del self.answering[old]
                self.answering[session] = now
        return [*(history or []), {"role": "user", "content": message}], "", message

    def answer(
        self, message: str, history: list[dict] | None, adapter: str | None, request: gr.Request
    ) -> Iterator[list[dict]]:
        """The page's Enter, second step (in the model's queue): answer the message :meth:`accept` put into the
        chat. The box is not an output: the visitor's next words there are theirs. However it ends (answered,
        refused, failed), the page may send again."""
        earlier = list(history or [])
        if earlier and earlier[-1].get("role") == "user":
            earlier.pop()  # the accepted message: respond adds it again with the reply
        try:
            for turns, _ in self.respond(message, earlier, adapter):
                yield turns
        finally:
            self.release(request)

    def unanswered(self, message: str, history: list[dict] | None, box: str, request: gr.Request) -> tuple[Any, Any]:
        """After an answer failed or the queue refused it: the page may send again; a message that got no reply
        leaves the chat and goes back into the box (unless the visitor has typed something else there), so it can
        be shortened or sent again."""
        self.release(request)
        history = list(history or [])
        if history and history[-1].get("role") == "assistant" and not _text(history[-1].get("content")).strip():
            history.pop()  # the empty reply the answer opened before it failed
        if not history or history[-1].get("role") != "user" or _text(history[-1].get("content")) != message:
            return gr.skip(), gr.skip()  # a partial reply stays, marked by the error shown with it
        return history[:-1], (message if not (box or "").strip() else gr.skip())

    def release(self, request: gr.Request) -> None:
        """After an answer (finished, refused or failed): this page's Enter sends again."""
        session = self._session(request)
        if session:
            with self._lock:
                self.answering.pop(session, None)

    def classify(self, text: str) -> dict[str, float]:
        """Classify a text with this demo's classifier (a fine-tuned one, or zero-shot over the demo's labels).
        Returns the most likely label and each label's probability.

        Args:
            text: the text to classify, in plain text (under 16000 characters).
        """
        p = self.profile
        if len(text or "") > 4 * MAX_PROMPT_CHARS:
            raise ClassifyError(f"The text is too long ({len(text)} characters): keep it under {4 * MAX_PROMPT_CHARS}.")
        if p.classify_adapter:
            pred = self.engine.classify.classify(text, None, "adapter", p.classify_adapter)
        else:
            pred = self.engine.classify.classify(text, p.classify_labels, p.classify_method)
        return dict(pred.probs)


def check_message(message: str, history: list[dict] | None, adapter: str | None) -> list[dict]:
    """Validator of the audience's Enter: a note under the box for an empty or too long message (API callers get
    the same words as an error from :meth:`AudienceHandlers.respond`)."""
    problem = message_problem((message or "").strip())
    return [gr.validate(problem is None, problem or ""), gr.validate(True, ""), gr.validate(True, "")]


def check_profile(engine: Any, profile: DemoProfile) -> None:
    """Fail at start, with the names to use, when the profile names adapters that are not in the library."""
    chat = {a.name for a in engine.chat_adapters()}
    missing = [a for a in profile.audience_adapters if a not in chat]
    if missing:
        raise ConfigError(
            f"The profile names chat adapters {missing} that this app's model has not got; available: {sorted(chat)}."
        )
    if "classify" in profile.tabs and profile.classify_adapter:
        names = {a.name for a in engine.classify.adapters()}
        if profile.classify_adapter not in names:
            raise ConfigError(
                f"The profile's classify_adapter {profile.classify_adapter!r} is not in the library; "
                f"available: {sorted(names)}."
            )


def _run_card(engine: Any, profile: DemoProfile) -> str | None:
    """The run card of the adapter the audience lands on, if it has one (through the engine's library)."""
    name = profile.default_adapter or (profile.audience_adapters or [None])[0]
    if not name:
        return None
    try:
        path = engine.library.run_card(name)
    except DemoForgeError:
        return None
    return path.read_text(encoding="utf-8") if path is not None else None


def accent_css(profile: DemoProfile) -> str:
    """CSS for the profile's accent colour (primary buttons and the header rule)."""
    if not profile.accent_color:
        return ""
    c = profile.accent_color
    return (
        f":root {{ --df-accent: {c}; }}\n"
        f"button.primary, .primary {{ background: {c} !important; border-color: {c} !important; }}\n"
        f"#df-header {{ border-bottom: 3px solid {c}; }}\n"
    )


def limit_mcp_tools(app: gr.Blocks, profile: DemoProfile) -> list[str]:
    """Make :data:`MCP_TOOLS` the only public endpoints of ``app``; returns the tools it has.

    Gradio's MCP server makes a tool of every endpoint whose ``api_visibility`` is "public" (its API info). The
    rest (the chat box's history-carrying /respond, the arena's ask and votes) become "undocumented": still
    callable by the page and gradio_client, but neither tools nor listed on the API page. The classify tool's
    description names the profile's labels, so an agent knows what it will get back.
    """
    tools = []
    for fn in app.fns.values():
        if fn.api_name in MCP_TOOLS:
            tools.append(fn.api_name)
            if fn.api_name == "classify" and profile.classify_labels and not profile.classify_adapter:
                doc = (fn.fn.__doc__ or "").partition("Args:")[0]
                labels = ", ".join(profile.classify_labels)
                fn.api_description = f"{' '.join(doc.split())} The labels are: {labels}."
        elif fn.api_visibility == "public":
            fn.api_visibility = "undocumented"
    return sorted(tools)


def build_audience_app(engine: Any, config: AppConfig, votes: VoteStore | None = None, mcp: bool = False) -> gr.Blocks:
    """The audience's Blocks: only the profile's tabs, only audience-safe events; with ``mcp``, only chat and
    classify are public (the MCP server's tools, see :func:`limit_mcp_tools`)."""
    profile = config.profile
    check_profile(engine, profile)
    chat = AudienceHandlers(engine, profile)
    arena_on = profile.arena_shown
    kw: dict[str, Any] = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": config.concurrency}
    with gr.Blocks(title=profile.title) as app:
        with gr.Row(elem_id="df-header"):
            if profile.logo:
                gr.Image(profile.logo, show_label=False, height=64, width=64, container=False, scale=0)
            gr.Markdown(f"# {profile.title}\n{profile.description}")
        gr.Markdown(f"*{profile.notice}*", elem_id="df-data-notice")
        with gr.Tabs():
            if "chat" in profile.tabs:
                with gr.Tab("Chat", id="chat"):
                    choices = chat.chat_choices()
                    default = profile.default_adapter or choices[0]
                    # Custom values reach the handler, whose check refuses them in words naming the builder role.
                    adapter = gr.Dropdown(
                        choices, value=default, label="Model", visible=len(choices) > 1, allow_custom_value=True
                    )
                    # No label pill: the title is the heading above, and at phone width the pill covered the
                    # chat's own buttons.
                    bot = text_only(gr.Chatbot(label=profile.title, show_label=False, height=420, elem_id="df-chatbot"))
                    msg = gr.Textbox(label="Message", elem_id="df-msg", max_length=MAX_PROMPT_CHARS)
                    pending = gr.State("")
                    private: dict[str, Any] = {"api_visibility": "private", "show_progress": "hidden"}
                    # Enter in two steps, as the builder's chat: the message moves into the chat and out of the box
                    # before the queue, then waits its turn; the box stays the visitor's meanwhile (one step that
                    # emptied the box when its turn came wiped what they had typed while waiting). The validator
                    # answers an empty or too long message, or one sent while an answer is on its way, with a note
                    # under the box before the queue (a raised error covered the conversation with red badges).
                    accepted = msg.submit(
                        shows_errors("sending a message")(chat.accept),
                        [msg, bot],
                        [bot, msg, pending],
                        validator=chat.check_enter,
                        **private,
                    )
                    answer = shows_errors("answering")(chat.answer)
                    answered = accepted.success(answer, [pending, bot, adapter], [bot], api_visibility="private", **kw)
                    # answer releases the page however it ends; an answer the queue refused never ran, so the
                    # failure step releases too and gives the text back.
                    answered.failure(chat.unanswered, [pending, bot, msg], [bot, msg], queue=False, **private)
                    # /respond for API callers, as before: the message in, the chat out (a hidden box of its own).
                    api_msg = gr.Textbox(label="Message", visible=False)
                    respond = shows_errors("answering")(chat.respond)
                    api_msg.submit(
                        respond,
                        [api_msg, bot, adapter],
                        [bot, api_msg],
                        api_name="respond",
                        validator=check_message,
                        **kw,
                    )
                    if profile.examples:
                        gr.Examples(profile.examples, [msg])
                    hidden = gr.Textbox(visible=False)
                    api_chat = shows_errors("answering")(chat.chat)
                    hidden.submit(api_chat, [hidden, adapter], [hidden], api_name="chat", **kw)
            if arena_on:
                with gr.Tab("Arena", id="arena"):
                    handlers = ArenaHandlers(engine, profile, votes or VoteStore(retention_days=profile.retention_days))
                    build_arena_tab(handlers, config.concurrency)
            about = _run_card(engine, profile)
            if about is not None:
                with gr.Tab("About this model", id="about"):
                    # In an iframe: the card's own styles stay inside it; srcdoc needs no file route.
                    gr.HTML(f'<iframe srcdoc="{html.escape(about)}" style="width:100%;height:900px;border:0"></iframe>')
            if "classify" in profile.tabs:
                with gr.Tab("Classify", id="classify"):
                    text = gr.Textbox(label="Text to classify", lines=3, elem_id="df-classify-text")
                    go = gr.Button("Classify", variant="primary")
                    label = gr.Label(label="Label", elem_id="df-classify-label")
                    classify = shows_errors("classifying")(chat.classify)
                    go.click(classify, [text], [label], api_name="classify", **kw)
    open_queue(app, config.queue_size, config.concurrency)
    if mcp:
        limit_mcp_tools(app, profile)
    return app
