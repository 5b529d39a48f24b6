"""Run cards: one self-contained HTML file per finished run (no scripts, no external files; opens with no server).

It shows the data report, the settings, the loss curve as inline SVG, the eval metrics, a few held-out prompts
with base vs tuned answers (when given), the hardware and the duration. Everything comes from the adapter's card
and the run's ``events.jsonl``. The answers come from the caller: the training worker, which still holds the tuned
model when the run ends (:func:`answer_held_out`), or the builder app's engine when a card is made on demand.
This module loads no chat model of its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from core.adapters import AdapterInfo

CARD_FILE = "run_card.html"
CARD_PROMPTS = 3
"""Held-out examples compared on a card made at the end of a run."""
CARD_NEW_TOKENS = 48
"""Greedy new tokens per answer on such a card: enough to show the tuned style, cheap on a CPU."""
FIRST_GUESS_S = 5.0
"""Seconds the first comparison may take (then the measured time of the last): none starts that late in a budget."""


@dataclass(frozen=True)
class Comparison:
    """One held-out prompt with the base model's and the tuned model's answer."""

    prompt: str
    base: str
    tuned: str
    expected: str = ""


def held_out(info: AdapterInfo, n: int = 3) -> list[tuple[str, str, list[dict[str, str]]]]:
    """Up to ``n`` held-out examples of the adapter's run as (shown prompt, expected answer, chat turns before it).

    The eval file when the run had one, else the same deterministic split the run made (same fraction and seed).
    Returns [] when the training data is no longer where the run read it.
    """
    from core.data import dataset as D

    cfg = info.card.get("config") or {}
    source = cfg.get("eval_path") or cfg.get("data_path")
    if not source or not Path(source).is_file():
        return []
    loaded = D.load_data(source, info.task, mapping=cfg.get("columns") or None)
    examples = loaded.examples
    if not cfg.get("eval_path"):
        names = loaded.label_names or []
        strat = (
            [names.index(x.label) if x.label in names else x.label for x in examples]
            if info.task == "classification"
            else None
        )
        examples = D.split_train_eval(examples, float(cfg.get("eval_fraction", 0.1)), int(cfg.get("seed", 42)), strat)[
            1
        ]
    out = []
    for ex in examples[:n]:
        if ex.messages:
            turns = list(ex.messages)
            last = (
                max(i for i, m in enumerate(turns) if m["role"] == "assistant")
                if any(m["role"] == "assistant" for m in turns)
                else len(turns)
            )
            before = [m for m in turns[:last] if m["role"] != "system"]
            if before:
                out.append((before[-1]["content"], turns[last]["content"] if last < len(turns) else "", before))
        elif ex.text is not None:
            expected = str(ex.label) if ex.label is not None else ""
            out.append((ex.text, expected, [{"role": "user", "content": ex.text}]))
    return out


def read_events(run_dir: Path | None) -> list[dict[str, Any]]:
    """The run's events (unreadable lines skipped: a crash can leave half a line at the end)."""
    path = Path(run_dir) / "events.jsonl" if run_dir else None
    if path is None or not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def loss_svg(events: Sequence[dict[str, Any]], width: int = 640, height: int = 260) -> str:
    """Training loss (line) and eval loss (dots) against the step, as an inline SVG; a note when no steps."""
    train = {e["step"]: e["loss"] for e in events if e.get("type") == "step" and e.get("loss") is not None}
    evals = {
        e["step"]: e["metrics"]["eval_loss"]
        for e in events
        if e.get("type") == "eval" and (e.get("metrics") or {}).get("eval_loss") is not None
    }
    if not train and not evals:
        return "<p><em>No loss was recorded for this run.</em></p>"
    points = sorted(train.items())  # a resumed run repeats steps: the later value wins
    steps = [s for s, _ in points] + list(evals)
    values = [v for _, v in points] + list(evals.values())
    x0, x1 = min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1
    y0, y1 = min(0.0, min(values)), max(values) * 1.05 or 1.0
    pad = 44

    def xy(step: float, value: float) -> tuple[float, float]:
        x = pad + (step - x0) / (x1 - x0) * (width - 2 * pad)
        y = height - pad - (value - y0) / (y1 - y0) * (height - 2 * pad)
        return round(x, 1), round(y, 1)

    line = " ".join(f"{x},{y}" for x, y in (xy(s, v) for s, v in points))
    dots = "".join(f'<circle cx="{x}" cy="{y}" r="4" fill="#d9480f"/>' for x, y in (xy(*p) for p in evals.items()))
    bottom, right = height - pad, width - pad
    axes = (
        f'<line x1="{pad}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{bottom}" stroke="#888"/>'
        f'<text x="{pad}" y="{bottom + 18}" font-size="12">step {x0}</text>'
        f'<text x="{right}" y="{bottom + 18}" font-size="12" text-anchor="end">step {x1}</text>'
        f'<text x="{pad - 6}" y="{pad + 4}" font-size="12" text-anchor="end">{y1:.2f}</text>'
        f'<text x="{pad - 6}" y="{bottom}" font-size="12" text-anchor="end">{y0:.2f}</text>'
    )
    legend = (
        f'<text x="{right}" y="{pad - 16}" font-size="12" text-anchor="end">'
        '<tspan fill="#1f6feb">— training loss</tspan>  <tspan fill="#d9480f">● eval loss</tspan></text>'
    )
    path = f'<polyline points="{line}" fill="none" stroke="#1f6feb" stroke-width="2"/>' if points else ""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="loss curve">{axes}{legend}{path}{dots}</svg>'
    )


def _table(rows: dict[str, Any]) -> str:
    cells = "".join(
        f"<tr><th>{escape(str(k))}</th><td>{escape(_fmt(v))}</td></tr>" for k, v in rows.items() if v is not None
    )
    return f"<table>{cells}</table>" if cells else "<p><em>none recorded</em></p>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def _hardware(events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    start = next((e for e in events if e.get("type") == "start" and e.get("device")), {})
    end = next((e for e in reversed(events) if e.get("type") == "end"), {})
    elapsed = [e["elapsed_s"] for e in events if e.get("type") == "step" and e.get("elapsed_s") is not None]
    return {
        "device": start.get("device"),
        "processes": start.get("world_size"),
        "mixed precision": start.get("mixed_precision"),
        "trainable parameters": start.get("trainable_params"),
        "steps": end.get("step"),
        "status": end.get("status"),
        "training time (s)": round(max(elapsed), 1) if elapsed else None,
    }


def render_run_card(info: AdapterInfo, comparisons: Sequence[Comparison] = (), status: str | None = None) -> str:
    """The run card of adapter ``info`` as one HTML document.

    ``status`` stands in for the run's end event when the card is written before it (at the end of the run).
    """
    card = info.card
    events = read_events(Path(card["run_dir"]) if card.get("run_dir") else None)
    if status and not any(e.get("type") == "end" for e in events):
        events = [*events, {"type": "end", "status": status, "step": info.metrics.get("steps")}]
    rows = "".join(
        f"<tr><td>{escape(c.prompt)}</td><td>{escape(c.base)}</td><td>{escape(c.tuned)}</td>"
        f"<td>{escape(c.expected)}</td></tr>"
        for c in comparisons
    )
    cfg = card.get("config") or {}
    none_kept = cfg and not cfg.get("eval_path") and not float(cfg.get("eval_fraction", 0.1) or 0)
    held_out = (
        f"<table><tr><th>prompt</th><th>base model</th><th>tuned</th><th>expected</th></tr>{rows}</table>"
        if rows
        else "<p><em>This run kept no held-out examples (eval fraction 0, no eval file): none to compare.</em></p>"
        if none_kept
        else "<p><em>No held-out prompts were compared for this card.</em></p>"
    )
    title = escape(f"{info.name} · run card")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 900px; margin: 2rem auto; padding: 0 1rem; color: #1b1f24; }}
table {{ border-collapse: collapse; width: 100%; margin-bottom: 1rem; }}
th, td {{ border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; font-size: 0.9rem; }}
th {{ background: #f6f8fa; }} h2 {{ border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }}
</style></head><body>
<h1>{escape(info.name)}</h1>
<p>LoRA adapter ({escape(info.task)}) on <code>{escape(info.base_model)}</code>, created {escape(info.created)}
with DemoForge {escape(str(card.get("demoforge_version", "?")))}.</p>
<h2>Eval metrics</h2>{_table(info.metrics)}
<h2>Loss curve</h2>{loss_svg(events)}
<h2>Held-out prompts: base vs tuned</h2>{held_out}
<h2>Data</h2>{_table({**(card.get("data") or {}), "labels": info.labels or None})}
<h2>Settings</h2>{_table(card.get("config") or {})}
<h2>Hardware and duration</h2>{_table(_hardware(events))}
</body></html>
"""


def write_run_card(info: AdapterInfo, comparisons: Sequence[Comparison] = (), status: str | None = None) -> Path:
    """Write ``run_card.html`` into the adapter's folder (it travels with the adapter); returns its path."""
    from core import store

    path = info.path / CARD_FILE
    store.atomic_write_text(path, render_run_card(info, comparisons, status))
    return path


def answer_held_out(
    info: AdapterInfo,
    model: Any,
    tokenizer: Any,
    deadline: float | None = None,
    n: int = CARD_PROMPTS,
    max_new_tokens: int = CARD_NEW_TOKENS,
) -> list[Comparison]:
    """Base vs tuned on up to ``n`` held-out examples, with the run's own peft ``model`` still in memory.

    SFT: greedy answers of ``max_new_tokens`` with the adapter disabled and enabled. Classification: the base's
    zero-shot label (its encoder, cosine to the label names, no label expansion: cheap) vs the tuned head's label.
    No new comparison starts after ``deadline`` (``time.monotonic()``), so a time-budgeted run stays in budget.
    """
    import torch

    examples = held_out(info, n)
    if not examples:
        return []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if info.task == "sft":
                return _answer_sft(examples, model, tokenizer, deadline, max_new_tokens)
            return _answer_labels(info, examples, model, tokenizer, deadline)
    finally:
        model.train(was_training)


def _late(deadline: float | None, need_s: float = 0.0) -> bool:
    return deadline is not None and time.monotonic() + need_s > deadline


def _answer_sft(
    examples: list[tuple[str, str, list[dict[str, str]]]],
    model: Any,
    tokenizer: Any,
    deadline: float | None,
    max_new_tokens: int,
) -> list[Comparison]:
    """All prompts in one left-padded batch, twice (adapter off, then on): decoding a batch of 3 costs about what
    one answer does on a CPU, and the KV cache is turned back on (training turned it off)."""
    import torch

    from core.chat import generation_kwargs, render_ids
    from core.config import GenerationSettings

    if _late(deadline, FIRST_GUESS_S):
        return []
    kwargs = generation_kwargs(GenerationSettings(temperature=0.0, max_new_tokens=max_new_tokens), tokenizer)
    rows = [render_ids(tokenizer, turns) for _, _, turns in examples]
    width = max(len(r) for r in rows)
    pad = kwargs["pad_token_id"] if kwargs["pad_token_id"] is not None else 0
    device = next(model.parameters()).device
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)  # (prompts, width)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)

    def answers() -> list[str]:
        new = model.generate(input_ids=ids, attention_mask=mask, use_cache=True, **kwargs)[:, width:]
        return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]

    start = time.monotonic()
    with model.disable_adapter():
        base = answers()
    if _late(deadline, time.monotonic() - start):  # the tuned batch would end past the deadline
        return []
    tuned = answers()
    return [Comparison(p, b, t, e) for (p, e, _), b, t in zip(examples, base, tuned)]


def _answer_labels(
    info: AdapterInfo,
    examples: list[tuple[str, str, list[dict[str, str]]]],
    model: Any,
    tokenizer: Any,
    deadline: float | None,
) -> list[Comparison]:
    from core.classify.zero_shot import SentenceEncoder, ZeroShotEmbeddingClassifier

    labels = list(info.labels)
    texts = [prompt for prompt, _, _ in examples]
    device = next(model.parameters()).device
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt").to(device)
    tuned = [labels[i] for i in model(**batch).logits.argmax(-1).tolist()]  # (rows,)
    base = ["(not compared: the run's time budget was spent)"] * len(texts)
    if not _late(deadline, FIRST_GUESS_S):  # loading the encoder takes a few seconds on a CPU
        path = info.card.get("base_model_path")
        zero_shot = ZeroShotEmbeddingClassifier(labels, SentenceEncoder.load(path, device=device.type), expand=0)
        base = [p.label for p in zero_shot.predict(texts)]
    return [Comparison(text, b, t, expected) for text, b, t, (_, expected, _) in zip(texts, base, tuned, examples)]


def _last_text(pieces: Any) -> str:
    text = ""
    for piece in pieces:
        text = piece.text
    return text


def make_run_card(engine: Any, name: str, max_new_tokens: int = CARD_NEW_TOKENS) -> Path:
    """Write adapter ``name``'s run card now, answering its held-out examples through ``engine`` (a
    :class:`core.engine.Engine`): greedy chat with the adapter off and on (SFT), or zero-shot vs the adapter
    (classification). For an adapter whose run wrote no card, or a card to refresh."""
    from core.config import GenerationSettings

    info = engine.library.get(name)
    comparisons = []
    for prompt, expected, turns in held_out(info):
        if info.task == "sft":
            settings = GenerationSettings(temperature=0.0, max_new_tokens=max_new_tokens)
            base = _last_text(engine.chat_stream(turns, settings, None, adapter=None))
            tuned = _last_text(engine.chat_stream(turns, settings, None, adapter=name))
        else:
            base = engine.classify.classify(prompt, info.labels, "embedding").label
            tuned = engine.classify.classify(prompt, None, "adapter", name).label
        comparisons.append(Comparison(prompt, base, tuned, expected))
    return write_run_card(info, comparisons)
