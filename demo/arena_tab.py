"""The blind A/B arena for an audience, and the builder's view of its results.

A round: two models from the profile (the base and its audience adapters) answer the same prompt as "A" and "B"
in random order; the visitor votes A, B, tie or both bad; only then are the names shown. Which model is A lives in
a ``gr.State`` (kept on the server, never sent to the browser), so the page cannot peek.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from core.arena import BASE, STATS_HEADERS, VERDICTS, ArenaError, Round, VoteStore, pick_round, stats_rows
from core.config import DemoProfile, GenerationSettings
from demo.errors import shows_errors
from demo.queue import MODEL_QUEUE

MAX_PROMPT_CHARS = 4000


@dataclass
class ArenaHandlers:
    """The arena's handlers, bound to one engine, profile and vote store (module-level logic, no UI state)."""

    engine: Any
    profile: DemoProfile
    votes: VoteStore
    profile_name: str = ""

    def models(self) -> list[str]:
        """Contestants: the base model and every audience adapter."""
        return [BASE, *self.profile.audience_adapters]

    def _answer(self, model: str, prompt: str, seed: int) -> Iterator[str]:
        # Same seed on both sides: sampling noise does not decide the vote.
        p = self.profile
        settings = GenerationSettings(temperature=p.temperature, seed=seed, max_new_tokens=p.max_new_tokens)
        adapter = None if model == BASE else model
        history = [{"role": "user", "content": prompt}]
        for piece in self.engine.chat_stream(history, settings, self.profile.system_prompt, adapter=adapter):
            yield piece.text

    def ask(self, prompt: str) -> Iterator[tuple[str, str, Round | None, str]]:
        """Stream A's answer, then B's; the round (who is who) is kept only once both are complete."""
        prompt = (prompt or "").strip()
        if not prompt:
            raise ArenaError("The prompt is empty: type a question for both models.")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ArenaError(f"The prompt is too long ({len(prompt)} characters): keep it under {MAX_PROMPT_CHARS}.")
        rnd = pick_round(self.models())
        seed = random.SystemRandom().randrange(2**31)
        a = b = ""
        yield a, b, None, "*A is answering…*"
        for a in self._answer(rnd.model_a, prompt, seed):  # the last piece is the whole answer
            yield a, b, None, "*A is answering…*"
        for b in self._answer(rnd.model_b, prompt, seed):
            yield a, b, None, "*B is answering…*"
        yield a, b, _Pending(rnd, prompt), "Both answered. Which is better? Vote, and the names are revealed."

    def vote(self, verdict: str, pending: _Pending | None) -> tuple[str, None]:
        """Record a vote on the current round and reveal the names; the round is then closed."""
        if not isinstance(pending, _Pending):
            raise ArenaError("There is no open round to vote on: ask a question first (one vote per round).")
        prompt = pending.prompt if self.profile.store_prompts else None
        self.votes.record(pending.round, verdict, self.profile_name, prompt)
        reveal = (
            f"**You voted: {VERDICTS[verdict]}.** A was **{pending.round.model_a}**, "
            f"B was **{pending.round.model_b}**. Ask another question for a new round."
        )
        return reveal, None


@dataclass(frozen=True)
class _Pending:
    """An answered round waiting for its vote."""

    round: Round
    prompt: str


def build_arena_tab(handlers: ArenaHandlers, concurrency: int = 1) -> dict[str, gr.components.Component]:
    """The audience's arena; returns its components."""
    gr.Markdown("Two anonymous models answer the same question. Vote for the better answer, then see who is who.")
    with gr.Row():
        prompt = gr.Textbox(label="Your question", scale=5, elem_id="df-arena-prompt", max_length=MAX_PROMPT_CHARS)
        ask = gr.Button("Ask both", variant="primary", scale=1, elem_id="df-arena-ask")
    with gr.Row():
        answer_a = gr.Textbox(label="Answer A", lines=8, interactive=False, elem_id="df-arena-a")
        answer_b = gr.Textbox(label="Answer B", lines=8, interactive=False, elem_id="df-arena-b")
    with gr.Row():
        buttons = {v: gr.Button(text, elem_id=f"df-vote-{v}") for v, text in VERDICTS.items()}
    status = gr.Markdown(elem_id="df-arena-status")
    pending = gr.State(None)

    ask_fn = shows_errors("answering in the arena")(handlers.ask)
    kw: dict[str, Any] = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": concurrency}
    outputs = [answer_a, answer_b, pending, status]
    gr.on([ask.click, prompt.submit], ask_fn, [prompt], outputs, api_name="arena_ask", **kw)
    for verdict, button in buttons.items():
        button.click(_voter(handlers, verdict), [pending], [status, pending], api_name=f"vote_{verdict}")
    return {"prompt": prompt, "ask": ask, "a": answer_a, "b": answer_b, "status": status, **buttons}


def _voter(handlers: ArenaHandlers, verdict: str) -> Callable[[_Pending | None], tuple[str, None]]:
    @shows_errors("recording your vote")
    def vote(pending: _Pending | None) -> tuple[str, None]:
        return handlers.vote(verdict, pending)

    vote.__name__ = f"vote_{verdict}"
    return vote


def build_results_panel(votes: VoteStore, scratch_dir: Callable[[str], Path]) -> dict[str, gr.components.Component]:
    """The builder's arena results: per pair, votes, wins, win rate with a 95% Wilson interval; CSV export into a
    ``scratch_dir(prefix)`` folder (the engine's: under the home's tmp/, swept after an hour)."""
    table = gr.Dataframe(headers=STATS_HEADERS, interactive=False, elem_id="df-arena-results")
    with gr.Row():
        refresh = gr.Button("Refresh results", elem_id="df-arena-refresh")
        export = gr.Button("Export votes as CSV")
    csv_file = gr.File(label="Votes (CSV)", interactive=False)

    @shows_errors("reading the arena's results")
    def results() -> list[list[str | int]]:
        return stats_rows(votes.stats())

    @shows_errors("exporting the votes")
    def export_csv() -> str:
        path = scratch_dir("votes") / "arena_votes.csv"
        path.write_text(votes.to_csv(), encoding="utf-8")
        return str(path)

    refresh.click(results, None, [table], api_name="arena_results")
    export.click(export_csv, None, [csv_file], api_name="arena_export")
    return {"table": table, "refresh": refresh, "export": export, "csv": csv_file}
