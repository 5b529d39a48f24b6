"""demo.render: escaping of user text, the run's status (real fraction, phases, no emoji, no server paths), the
typed loss frame, and the scratch folders of scored files."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from core.data import DataReport
from core.train.progress import RunProgress
from demo import render

EMOJI = re.compile("[\u2600-\u27bf\U0001f000-\U0001faff]")


def _report(**kw: object) -> DataReport:
    base = {
        "source": "/srv/uploads/tickets.csv",
        "task": "classification",
        "format": "csv",
        "schema": "text_label",
        "columns": {"text": "body", "label": "tag"},
        "all_columns": ["body", "tag"],
        "rows_read": 3,
        "rows_kept": 3,
    }
    return DataReport(**{**base, **kw})  # type: ignore[arg-type]


def test_report_escapes_markup_and_markdown_from_user_text() -> None:
    report = _report(
        label_counts={"<svg onload=alert(1)>": 2, "**bold** | [x](http://a.io)": 1},
        warnings=["label <b>x</b> has 1 row"],
        samples=[{"where": "line 2", "text": "<img src=x onerror=alert(1)>", "label": "<svg>"}],
    )
    out = render.data_report_markdown(report)
    assert "<svg" not in out and "<img" not in out and "<b>" not in out
    assert "&lt;svg onload\\=alert\\(1\\)&gt;" in out
    assert "**bold**" not in out and "](http" not in out and "\\|" in out  # no emphasis, link or table break
    assert "/srv/uploads" not in out and "tickets\\.csv" in out  # the file's name, not the server's path
    assert not EMOJI.search(out)


def test_report_shows_chat_samples_as_turns() -> None:
    turns = [{"role": "user", "content": "How do I <b>x</b>?"}, {"role": "assistant", "content": "Do y\\|z."}]
    out = render.data_report_markdown(_report(task="sft", samples=[{"where": "line 1", "messages": turns}]))
    assert "**user:** How do I &lt;b&gt;x&lt;/b&gt;?" in out and "'role'" not in out
    assert "Do y\\|z\\." in out  # core's cell escape of '|' is undone, then escaped once for Markdown


def test_preview_draws_conversations_and_escapes_cells() -> None:
    rows = [{"messages": [{"role": "user", "content": "hi <svg>"}, {"role": "assistant", "content": "hello"}]}]
    out = render.preview_html(rows, ["messages"])
    assert 'class="df-turn df-turn-user"' in out and "hi &lt;svg&gt;" in out and "<svg" not in out
    assert "'role'" not in out


def _progress(**kw: object) -> RunProgress:
    base = {"run_id": "20260101-000000-demo", "status": "running", "step": 21, "total_steps": 25, "eta_s": 31.0}
    return RunProgress(**{**base, **kw})  # type: ignore[arg-type]


def test_time_budget_run_shows_its_real_fraction() -> None:
    p = _progress(status="time_budget", adapter_name="demo", adapter_dir="/home/x/adapters/demo")
    assert render.run_fraction(p) == pytest.approx(21 / 25)
    out = render.run_status_html(p)
    assert 'aria-valuenow="84"' in out and "84%" in out and "is ready" in out
    assert render.run_fraction(_progress(status="finished")) == 1.0


def test_status_uses_words_and_css_and_shows_the_finishing_phase() -> None:
    p = _progress()
    assert "ETA 31s" in render.run_headline(p)
    p.phase = "final_eval"  # type: ignore[attr-defined] - added to RunProgress by the training helper
    line = render.run_headline(p)
    assert "final evaluation…" in line and "ETA" not in line  # not a frozen ETA
    p.phase = "saving"  # type: ignore[attr-defined]
    out = render.run_status_html(p)
    assert "saving the adapter…" in out and 'class="df-badge df-badge-run"' in out
    for status in ("starting", "running", "finished", "time_budget", "stopped", "failed"):
        assert not EMOJI.search(render.run_status_html(_progress(status=status)))


def test_run_errors_show_no_server_paths(tmp_path: Path) -> None:
    home = tmp_path / "home"
    error = (
        f"The worker exited; see {home}/runs/20260101-x/stderr.log: Traceback: File "
        f'"/opt/venv/lib/python3.11/site-packages/torch/nn/functional.py", line 3 in {Path.cwd()}/core/train/loop.py'
    )
    out = render.run_status_html(_progress(status="failed", error=error), home)
    assert str(tmp_path) not in out and "/opt/venv" not in out
    assert "runs/20260101-x/stderr.log" in out and "torch/nn/functional.py" in out
    other_home = render.relative_paths("/var/lib/demoforge/adapters/x/adapter_card.json")
    assert other_home == "adapters/x/adapter_card.json"


def test_loss_frame_is_typed_and_names_both_series() -> None:
    assert render.loss_frame([]) is None  # an empty plot, not a frame of untyped columns
    frame = render.loss_frame([{"step": 3, "value": 2.0, "series": "train loss"}])
    assert list(frame["series"]) == ["train loss", "eval loss"]  # both in the legend from the first point
    assert pd.api.types.is_integer_dtype(frame["step"]) and pd.api.types.is_float_dtype(frame["loss"])
    frame = render.loss_frame(
        [
            {"step": 1, "value": 2.3456789, "series": "train loss"},
            {"step": 2, "value": 0.0123456, "series": "train loss"},
        ]
    )
    train = frame[frame["series"] == "train loss"]
    assert list(train["loss"]) == [2.35, 0.0123]  # 3 significant digits
    assert frame[frame["series"] == "eval loss"]["loss"].isna().all()
