"""End to end in headless Chromium: the live loss plot as drawn; pick the sample chat dataset, train with a small
budget, chat with the adapter."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.config import AppConfig
from core.engine import Engine
from core.train.progress import RunProgress
from tests.helpers import browser_page, isolated_home, serve, set_number

pytestmark = pytest.mark.e2e

SHOTS = os.environ.get("DEMOFORGE_SCREENSHOTS")
BUDGET_MINUTES = "3"
"""The tab's default budget: the planner refuses budgets too short for 10 steps plus an evaluation and a save (a
1-minute SFT budget needs ~2.4 minutes on 2 cores), so a shorter one would test the refusal, not training."""
PLOT_JS = """() => {
  const svg = document.querySelector('#df-ft-plot svg');
  if (!svg) return null;
  const axis = (name) => [...svg.querySelectorAll('g.role-axis')]
    .find(a => (a.getAttribute('aria-label') || '').startsWith(name));
  const y = axis('Y-axis'), x = axis('X-axis');
  return {
    points: [...svg.querySelectorAll('g.mark-line.role-mark path')]
      .map(p => ((p.getAttribute('d') || '').match(/[ML]/g) || []).length),
    legend: [...svg.querySelectorAll('.role-legend-label text')].map(t => t.textContent),
    x_axis: x ? x.getAttribute('aria-label') : null,
    y_axis: y ? y.getAttribute('aria-label') : null,
    // (label, vertical position on screen) of each y tick
    y_ticks: y ? [...y.querySelectorAll('.role-axis-label text')]
      .map(t => [t.textContent, t.getBoundingClientRect().top]) : [],
  };
}"""
EMOJI = re.compile("[\u2600-\u27bf\U0001f000-\U0001faff]")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # A home of its own: no adapters or runs from other tests; the converted SmolLM2 is reused via a link.
    home = tmp_path_factory.mktemp("e2e-home")
    with isolated_home(home), serve(Engine(AppConfig())) as url:
        yield url


def _check_plot(plot: dict, min_points: int = 3) -> None:
    """The loss plot as drawn: numeric axes, both series in the legend, a line through its points, ticks with at
    most 3 significant digits in order."""
    assert "linear scale" in plot["x_axis"] and "linear scale" in plot["y_axis"], plot
    assert plot["legend"] == ["train loss", "eval loss"], plot
    assert max(plot["points"], default=0) >= min_points, plot
    labels = [label for label, _ in sorted(plot["y_ticks"], key=lambda t: -t[1])]  # bottom to top
    values = [float(label) for label in labels]
    assert len(values) >= 2 and values == sorted(values), plot  # numbers, increasing upwards
    assert all(len(label.lstrip("-0.").replace(".", "")) <= 3 for label in labels), plot


class GrowingRun:
    """A test double of the engine's training door: one live run that gains two steps a second once ``begin()`` is
    called, with an eval point every 4 steps, then sits in its final evaluation. Deterministic, whatever the CPU."""

    RUN = "20260101-000000-live"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.t0 = 0.0

    def begin(self) -> None:
        self.t0 = time.monotonic()
        self.started.set()

    def samples(self) -> list:
        return []

    def active(self) -> SimpleNamespace | None:
        return SimpleNamespace(run_id=self.RUN) if self.started.is_set() else None

    def latest(self) -> str | None:
        return self.RUN if self.started.is_set() else None

    def progress(self, run_id: str) -> RunProgress:
        step = min(24, int((time.monotonic() - self.t0) * 2))
        points = [
            {"step": i, "value": 2.5 * 0.95**i + 0.0123456789, "series": "train loss"} for i in range(1, step + 1)
        ]
        points += [{"step": i, "value": 2.6 * 0.96**i, "series": "eval loss"} for i in range(4, step + 1, 4)]
        p = RunProgress(
            run_id, "running", adapter_name="live", step=step, total_steps=24, eta_s=30.0, loss_points=points
        )
        p.phase = "final_eval" if step >= 24 else None  # type: ignore[attr-defined]
        return p


class GrowingEngine(Engine):
    """The real engine with its training door replaced by :class:`GrowingRun`."""

    def __init__(self) -> None:
        super().__init__(AppConfig())
        self.fake = GrowingRun()

    @property
    def training(self) -> GrowingRun:  # type: ignore[override]
        return self.fake


def test_live_loss_plot_draws_two_numeric_lines_while_the_run_trains(tmp_path_factory: pytest.TempPathFactory) -> None:
    engine = GrowingEngine()
    with isolated_home(tmp_path_factory.mktemp("plot-home")), serve(engine) as url, browser_page(url) as page:
        page.get_by_role("tab", name="Fine-tune").click()
        engine.fake.begin()  # the first points arrive while the tab is on screen (no tab switch to redraw it)
        page.wait_for_function(
            f"() => {{ const p = ({PLOT_JS})(); return p && Math.max(0, ...p.points) >= 6; }}", timeout=60_000
        )
        _check_plot(page.evaluate(PLOT_JS), min_points=6)
        assert "ETA" in page.locator("#df-ft-headline").inner_text()
        # The final evaluation replaces the ETA (which would otherwise sit frozen until the run ends).
        page.wait_for_function(
            "() => document.querySelector('#df-ft-headline').innerText.includes('final evaluation')", timeout=60_000
        )
        assert "ETA" not in page.locator("#df-ft-headline").inner_text()
        plot = page.evaluate(PLOT_JS)
        _check_plot(plot, min_points=20)
        assert sorted(plot["points"]) == [6, 24]  # both lines drawn through every point


def test_markup_in_an_upload_stays_text(app_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "markup.csv"
    rows = "".join(f"row {i} fine,{'ab'[i % 2]}\n" for i in range(10))
    bad.write_text(f'text,label\n"<svg id=""pwn"" onload=""alert(1)""></svg> hi",a\n{rows}', encoding="utf-8")
    with browser_page(app_url) as page:
        page.get_by_role("tab", name="Fine-tune").click()
        page.get_by_role("radio", name="Classification").check()
        page.locator("#df-ft-upload input[type=file]").set_input_files(str(bad))
        page.wait_for_function(
            "() => document.querySelector('#df-ft-report').innerText.includes('kept')", timeout=120_000
        )
        assert page.locator("#pwn").count() == 0  # no live <svg> from the file
        assert "<svg" in page.locator("#df-ft-report").inner_text()  # shown as text
        assert "<svg" in page.locator("#df-ft-preview").inner_text()


def test_pick_sample_train_then_chat_with_the_adapter(app_url: str) -> None:
    with browser_page(app_url) as page:
        page.get_by_role("tab", name="Fine-tune").click()

        # Pick the bundled chat sample: the validation report and preview appear before anything trains.
        page.locator("#df-ft-sample input").click()
        page.get_by_role("option", name=re.compile("Acme Cloud support chat")).click()
        page.wait_for_function(
            "() => document.querySelector('#df-ft-report').innerText.includes('kept')", timeout=60_000
        )
        assert "sft" in page.locator("#df-ft-report").inner_text()
        # The preview draws conversations (role + text), not Python's [{'role': ...}] text.
        assert page.locator("#df-ft-preview .df-turn-user").count() >= 5
        assert "'role'" not in page.locator("#df-ft-preview").inner_text()
        assert page.locator("#df-ft-name input, #df-ft-name textarea").first.input_value() == "acme-support"

        set_number(page, "Time budget (minutes)", float(BUDGET_MINUTES))
        page.locator("#df-ft-start").click()

        # Live progress: the headline shows steps, the bar moves, the loss curve draws while the run trains
        # (no tab switch needed).
        page.wait_for_function(
            "() => /step \\d+\\/\\d+|failed/.test(document.querySelector('#df-ft-headline').innerText)",
            timeout=300_000,
        )
        started = page.locator("#df-ft-headline").inner_text()
        assert "failed" not in started, started
        assert not EMOJI.search(page.locator("#df-ft-headline").inner_text())  # words and CSS, no emoji boxes
        assert page.locator("#df-ft-headline .df-badge").count() == 1
        if SHOTS:
            time.sleep(8)  # a few more steps on the curve
            page.screenshot(path=str(Path(SHOTS) / "screenshot-finetune.png"), full_page=True)
        page.wait_for_function(
            "() => /is ready|failed/.test(document.querySelector('#df-ft-headline').innerText)", timeout=600_000
        )
        headline = page.locator("#df-ft-headline").inner_text()
        assert "acme-support" in headline
        # The bar shows the real fraction: a run cut by its time budget is not drawn as 100%.
        run = page.locator("#df-ft-headline .df-run")
        step, total = int(run.get_attribute("data-step")), int(run.get_attribute("data-total"))
        fraction = float(run.get_attribute("data-fraction"))
        expected = 1.0 if run.get_attribute("data-status") == "finished" else step / total
        assert fraction == pytest.approx(expected, abs=1e-3), (step, total, fraction)
        _check_plot(page.evaluate(PLOT_JS), min_points=1)  # a loaded machine may fit only a few steps

        # Use it in Chat: pick it in the adapter dropdown (refreshed when the run finished), then ask.
        page.get_by_role("tab", name="Chat").click()
        page.locator("#df-adapter input").click()
        page.get_by_role("option", name="acme-support").click()
        page.wait_for_function(
            "() => document.querySelector('#df-status').innerText.includes('acme-support')", timeout=60_000
        )
        page.locator("#df-msg textarea").fill("How do I deploy my app?")
        page.locator("#df-send").click()
        page.wait_for_function(
            "() => document.querySelector('#df-status').innerText.includes('tok/s')", timeout=120_000
        )
        reply = page.locator('#df-chatbot [data-testid="bot"]').last.inner_text()
        assert reply.strip()

        # Compare view: base and tuned side by side.
        page.get_by_text("Compare: base vs fine-tuned, side by side").click()
        page.locator("#df-compare-prompt textarea").fill("How do I reset my password?")
        page.locator("#df-compare-a input").click()
        page.get_by_role("option", name="acme-support").click()
        page.locator("#df-compare-run").click()
        page.wait_for_function(  # the speed line sits under each answer, not inside it
            "() => document.querySelector('#df-compare-stats-a').innerText.includes('tok/s')", timeout=180_000
        )
        base = page.locator("#df-compare-out-base textarea").input_value()
        tuned = page.locator("#df-compare-out-a textarea").input_value()
        assert base.strip() and tuned.strip()
        if SHOTS:
            page.locator("#df-compare").scroll_into_view_if_needed()
            page.screenshot(path=str(Path(SHOTS) / "screenshot-compare.png"), full_page=True)
