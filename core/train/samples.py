"""The sample datasets shipped in ``assets/data/`` for the one-click demo (written by the DemoForge team)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.config import ASSETS


@dataclass(frozen=True)
class Sample:
    """One bundled dataset and the task it is for."""

    label: str
    task: str
    path: Path
    adapter_name: str


SAMPLES = (
    Sample("Acme Cloud support chat (chat SFT)", "sft", ASSETS / "data" / "support_chat.jsonl", "acme-support"),
    Sample(
        "Support-ticket triage (classification, 5 classes)",
        "classification",
        ASSETS / "data" / "ticket_triage.csv",
        "ticket-triage",
    ),
)


def samples(task: str | None = None) -> list[Sample]:
    """Bundled samples that exist on disk, optionally for one task."""
    return [s for s in SAMPLES if s.path.is_file() and (task is None or s.task == task)]


def by_label(label: str) -> Sample:
    """The sample shown as ``label`` in the UI."""
    for s in SAMPLES:
        if s.label == label:
            return s
    raise KeyError(label)
