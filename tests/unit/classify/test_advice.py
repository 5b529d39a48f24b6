"""Advice after comparing zero-shot with a fine-tuned adapter on the user's file (issue 8: a fine-tuned
classifier that loses to zero-shot must say so, and why)."""

from __future__ import annotations

from types import SimpleNamespace

from core.classify.advice import MIN_ROWS_PER_CLASS, comparison_advice
from core.classify.scoring import compute_metrics
from core.classify.service import ClassifyService

GOLD = ["a", "a", "b", "b", "c", "c"]
GOOD = compute_metrics(GOLD, ["a", "a", "b", "b", "c", "c"], ["a", "b", "c"])
POOR = compute_metrics(GOLD, ["a", "b", "b", "a", "a", "a"], ["a", "b", "c"])


def card(counts: dict[str, int], labels: tuple[str, ...] = ("a", "b", "c")) -> dict:
    return {"labels": list(labels), "data": {"label_counts": counts}}


def test_better_adapter_is_recommended() -> None:
    advice, zero_better = comparison_advice(POOR, GOOD, card({"a": 3, "b": 3, "c": 3}))
    assert not zero_better and "use the adapter" in advice


def test_worse_adapter_with_few_rows_per_class_says_so_and_keeps_zero_shot() -> None:
    advice, zero_better = comparison_advice(GOOD, POOR, card({"a": 40, "b": 30, "c": MIN_ROWS_PER_CLASS - 5}))
    assert zero_better
    assert "keep zero-shot" in advice and "too few rows per class" in advice and "'c'" in advice
    assert f"{POOR.macro_f1:.3f}" in advice and f"{GOOD.macro_f1:.3f}" in advice


def test_worse_adapter_with_enough_rows_points_at_the_data_instead() -> None:
    advice, zero_better = comparison_advice(GOOD, POOR, card({"a": 200, "b": 200, "c": 200}))
    assert zero_better and "keep zero-shot" in advice and "too few" not in advice


def test_labels_the_adapter_never_saw_are_named() -> None:
    tuned = compute_metrics(GOLD, ["a", "a", "b", "b", "a", "b"], ["a", "b"])  # the adapter knows only a and b
    advice, zero_better = comparison_advice(GOOD, tuned, card({"a": 50, "b": 50}, ("a", "b")))
    assert zero_better and "never trained on ('c')" in advice


def test_no_card_still_gives_advice() -> None:
    advice, zero_better = comparison_advice(GOOD, POOR, None)
    assert zero_better and advice.startswith("The fine-tuned adapter scores below zero-shot")


def test_service_compare_report_adds_advice_to_compare(monkeypatch) -> None:
    service = ClassifyService(chat_model=lambda: None)  # type: ignore[arg-type, return-value]
    results = [("zero-shot · x", GOOD), ("fine-tuned · y", POOR)]
    calls = []
    monkeypatch.setattr(service, "compare", lambda *a, **k: calls.append(a) or results)
    monkeypatch.setattr(service, "_adapter_classifier", lambda name: SimpleNamespace(card=card({"a": 2, "b": 2})))
    report = service.compare_report("f.csv", "text", "label", "a, b, c", "y")
    assert report.results == results and report.zero_shot_better
    assert "too few rows per class" in report.advice
    assert calls and calls[0][:5] == ("f.csv", "text", "label", "a, b, c", "y")
