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


# --- the card written at the end of a run --------------------------------------------------------------------------


def _held_out_rows(html: str) -> list[list[str]]:
    section = html.split("base vs tuned</h2>", 1)[1].split("<h2>", 1)[0]
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>", section, re.S)
    return [list(r) for r in rows]


def test_a_finished_sft_run_writes_its_card_with_base_vs_tuned_answers(
    tiny_models: dict[str, Path], tmp_path: Path, demoforge_home: Path
) -> None:
    from core.train import runner
    from tests.toy_data import sft_cfg, write_sft

    result = runner.run(sft_cfg(tiny_models, write_sft(tmp_path / "d.jsonl"), max_steps=40), tmp_path / "run")
    assert result.status == "finished", result.error
    html = (result.adapter_dir / "run_card.html").read_text(encoding="utf-8")
    assert "<script" not in html and "<polyline" in html
    assert "status</th><td>finished</td>" in html  # written before the end event, with the run's status
    rows = _held_out_rows(html)
    assert len(rows) == 3, rows  # CARD_PROMPTS held-out prompts from the run's own eval split
    for prompt, base, tuned, expected in rows:
        assert re.fullmatch(r"w\d+", prompt) and re.fullmatch(r"r\d+ r\d+", expected)
        assert base != tuned  # the adapter was disabled for the base answer
    # 40 steps at lr 3e-2 learn the toy mapping: most tuned answers start with the expected reply.
    assert sum(tuned.split()[:1] == expected.split()[:1] for _, _, tuned, expected in rows) >= 2, rows


def test_a_finished_classification_run_compares_zero_shot_with_the_tuned_label(
    tiny_models: dict[str, Path], tmp_path: Path, demoforge_home: Path
) -> None:
    from core.train import runner
    from tests.toy_data import cls_cfg, write_cls

    cfg = cls_cfg(tiny_models["bert"], write_cls(tmp_path / "c.csv", n=80))
    result = runner.run(cfg, tmp_path / "run")
    assert result.status == "finished", result.error
    rows = _held_out_rows((result.adapter_dir / "run_card.html").read_text(encoding="utf-8"))
    assert len(rows) == 3, rows
    for _text, base, tuned, expected in rows:
        assert {base, tuned, expected} <= {"negative", "positive"}, (base, tuned, expected)


def test_a_card_that_fails_never_fails_the_run(
    tiny_models: dict[str, Path], tmp_path: Path, demoforge_home: Path, monkeypatch
) -> None:
    from core import runcard
    from core.train import runner
    from tests.toy_data import sft_cfg, write_sft

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(runcard, "answer_held_out", broken)
    result = runner.run(sft_cfg(tiny_models, write_sft(tmp_path / "d.jsonl"), max_steps=3), tmp_path / "run")
    assert result.status == "finished", result.error
    assert not (result.adapter_dir / "run_card.html").exists()
    assert "run card not written (RuntimeError: disk full)" in (tmp_path / "run" / "train.log").read_text()


def test_no_comparison_starts_past_the_deadline(demoforge_home: Path) -> None:
    import time
    from types import SimpleNamespace

    from core.runcard import answer_held_out

    class Untouchable:
        training = False

        def eval(self) -> None:
            pass

        def train(self, mode: bool) -> None:
            pass

        def __getattr__(self, name: str):
            raise AssertionError(f"the model was used ({name}) after the deadline")

    info = _fake_run(demoforge_home)
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=0)
    assert answer_held_out(info, Untouchable(), tokenizer, deadline=time.monotonic() - 1) == []


def test_a_run_without_an_eval_split_says_why_nothing_was_compared(demoforge_home: Path) -> None:
    info = _fake_run(demoforge_home)
    info.card["config"]["eval_fraction"] = 0.0
    assert held_out(info) == []  # nothing held out: every row trained
    assert "kept no held-out examples (eval fraction 0" in render_run_card(info)
    info.card["config"]["eval_fraction"] = 0.1
    assert "kept no held-out" not in render_run_card(info)
