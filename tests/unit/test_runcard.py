"""Run cards: self-contained HTML with the loss curve as inline SVG, metrics, settings and held-out answers."""

from __future__ import annotations

import json
import re
from pathlib import Path

from core import adapters
from core.runcard import Comparison, held_out, loss_svg, render_run_card, write_run_card


def _fake_run(home: Path) -> adapters.AdapterInfo:
    run_dir = home / "runs" / "r1"
    run_dir.mkdir(parents=True)
    events = [{"type": "start", "device": "cpu", "world_size": 1, "mixed_precision": "bf16", "trainable_params": 99}]
    events += [{"type": "step", "step": s, "loss": 2.0 / s, "elapsed_s": s * 1.5} for s in range(1, 11)]
    events += [{"type": "eval", "step": 10, "metrics": {"eval_loss": 0.4}}, {"type": "end", "status": "finished"}]
    (run_dir / "events.jsonl").write_text("\n".join(map(json.dumps, events)) + "\n{half a li", encoding="utf-8")
    data = home / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(20)
    ]
    data.write_text("\n".join(map(json.dumps, rows)), encoding="utf-8")
    folder = home / "adapters" / "tuned"
    folder.mkdir(parents=True)
    (folder / adapters.WEIGHTS).write_bytes(b"")
    card = {
        "name": "tuned",
        "task": "sft",
        "base_model": "default",
        "metrics": {"eval_loss": 0.4, "steps": 10},
        "data": {"source": "chat.jsonl", "train_rows": 18, "eval_rows": 2},
        "config": {"data_path": str(data), "eval_fraction": 0.1, "seed": 42, "lr": 0.001, "columns": {}},
        "run_dir": str(run_dir),
        "created": "2026-01-01T00:00:00+00:00",
        "demoforge_version": "0.test",
    }
    (folder / adapters.CARD).write_text(json.dumps(card), encoding="utf-8")
    return adapters.get("tuned")


def test_run_card_is_self_contained_and_shows_the_run(demoforge_home: Path) -> None:
    info = _fake_run(demoforge_home)
    html = render_run_card(info, [Comparison("Q <b>", "base says", "tuned says", "expected")])
    assert html.startswith("<!doctype html>")
    assert "<script" not in html and not re.search(r'(src|href)="(http|/)', html)  # nothing to fetch
    assert "<svg" in html and "<polyline" in html and html.count("<circle") == 1  # 10 steps, 1 eval point
    assert "Q &lt;b&gt;" in html  # escaped
    assert "eval_loss" in html and "0.4" in html and "lr" in html and "bf16" in html
    assert "training time (s)</th><td>15</td>" in html
    path = write_run_card(info)
    assert path == info.path / "run_card.html" and path.read_text(encoding="utf-8").startswith("<!doctype html>")


def test_held_out_prompts_come_from_the_runs_own_eval_split(demoforge_home: Path) -> None:
    info = _fake_run(demoforge_home)
    picked = held_out(info)
    assert 1 <= len(picked) <= 3
    train_questions = {f"question {i}" for i in range(20)}
    for prompt, expected, turns in picked:
        assert prompt in train_questions and expected == prompt.replace("question", "answer")
        assert turns[-1] == {"role": "user", "content": prompt}


def test_loss_svg_without_steps_says_so() -> None:
    assert "No loss was recorded" in loss_svg([])
