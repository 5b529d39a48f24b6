"""The Classify tab through a real server and gradio_client, on the real embedded MiniLM (and SmolLM2 for chat)."""

from __future__ import annotations

import contextlib
import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from core.config import AppConfig
from core.engine import Engine
from demo.classify_tab import DEFAULT_LABELS, TABLE_COLUMNS
from tests.helpers import isolated_home, serve

pytestmark = pytest.mark.ui

LABELS = ["billing", "bug", "feature_request", "account_access", "how_to"]
CLEAR = [
    ("I forgot my password and cannot log in to my account.", "account_access"),
    ("Please refund the duplicate charge on my last invoice.", "billing"),
]
LONG = " ".join(
    (["The", "export", "button", "crashes", "the", "app", "with", "an", "error", "every", "single", "time."] * 500)[
        :5000
    ]
)


def _make_adapter(folder: Path) -> None:
    """An untrained-but-valid MiniLM classification adapter, saved like core.train.save_adapter (2 s, no training)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from core.models import embedded_encoder_path

    torch.manual_seed(0)
    base_path = embedded_encoder_path()
    base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=len(LABELS))
    model = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["query", "value"]))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(folder)
    card = {
        "name": folder.name,
        "task": "classification",
        "base_model": "minilm",
        "labels": LABELS,
        "metrics": {"macro_f1": 0.5},
        "created": "2026-01-01T00:00:00+00:00",
    }
    (folder / "adapter_card.json").write_text(json.dumps(card), encoding="utf-8")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    # A home of its own (no runs or adapters from other tests); the converted SmolLM2 is reused via a link.
    home = tmp_path_factory.mktemp("classify-home")
    stack = contextlib.ExitStack()
    stack.enter_context(isolated_home(home))
    files = tmp_path_factory.mktemp("classify-files")
    _make_adapter(home / "adapters" / "ticket-lora")
    assert len(LONG.split()) == 5000
    rows = [
        ("a", CLEAR[0][0], "account_access"),
        ("b", "", "bug"),
        ("c", LONG, "bug"),
        ("d", "=SUM(A1)", "billing"),
        ("e", CLEAR[1][0], "billing"),
    ]
    scored = files / "tickets.csv"
    with scored.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "body", "label"])
        writer.writerows(rows)
    (files / "latin1.csv").write_bytes("text,label\nCaf\xe9 au lait,billing\n".encode("latin-1"))
    engine = Engine(AppConfig())
    with stack, serve(engine) as url:
        yield {"url": url, "engine": engine, "home": home, "scored": scored, "rows": rows, "files": files}


@pytest.fixture
def client(server: dict) -> Client:
    return Client(server["url"], verbose=False)


def test_zero_shot_classify_and_explain(client: Client) -> None:
    for text, gold in CLEAR:
        probs = client.predict(text, DEFAULT_LABELS, "embedding", "", api_name="/classify")
        assert list(probs) == LABELS
        assert max(probs, key=probs.get) == gold, probs
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
    text = CLEAR[0][0]
    spans = client.predict(text, DEFAULT_LABELS, "embedding", "", "", api_name="/explain")
    assert [w.strip() for w, _ in spans] == text.split()  # one item per word, in order
    assert all(-1.0 <= s <= 1.0 for _, s in spans) and max(abs(s) for _, s in spans) == pytest.approx(1.0)
    # The display name of a method works as well as its key; a label list of one is refused with the reason.
    shown = client.predict(text, "billing, account_access", "Zero-shot (MiniLM embeddings)", "", api_name="/classify")
    assert max(shown, key=shown.get) == "account_access"
    with pytest.raises(AppError, match="at least 2 labels"):
        client.predict(text, "billing", "embedding", "", api_name="/classify")


def test_fine_tuned_and_chat_methods(client: Client) -> None:
    probs = client.predict(CLEAR[0][0], "", "adapter", "ticket-lora", api_name="/classify")
    assert list(probs) == LABELS  # labels come from the adapter's card, not the labels box
    spans = client.predict("the app crashes", "", "Fine-tuned adapter", "ticket-lora", "bug", api_name="/explain")
    assert len(spans) == 3
    with pytest.raises(AppError, match="Pick a fine-tuned classification adapter"):
        client.predict("x", "", "adapter", "", api_name="/classify")
    with pytest.raises(AppError, match="No adapter named"):
        client.predict("x", "", "adapter", "nope", api_name="/classify")
    chat = client.predict("My invoice is wrong", "billing, bug", "chat", "", api_name="/classify")
    assert set(chat) == {"billing", "bug"} and sum(chat.values()) == pytest.approx(1.0, abs=1e-3)


def test_score_file_one_row_per_input_escaped_with_metrics(server: dict, client: Client) -> None:
    out, note = client.predict(
        handle_file(str(server["scored"])), "body", "label", DEFAULT_LABELS, "embedding", "", api_name="/score_file"
    )
    with open(out, encoding="utf-8", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [r["id"] for r in got] == [r[0] for r in server["rows"]]  # every row, in input order
    assert set(got[0]) >= {"predicted_label", *(f"p_{x}" for x in LABELS)}
    assert got[3]["body"] == "'=SUM(A1)"  # a formula cell is neutralised for spreadsheets
    assert got[0]["predicted_label"] == "account_access" and got[4]["predicted_label"] == "billing"
    assert got[2]["predicted_label"] == "bug"  # 5,000 words: truncated by the encoder, still scored
    assert all(float(got[1][f"p_{x}"]) == pytest.approx(0.2) for x in LABELS)  # empty text: uniform
    assert "Accuracy" in note and "macro-F1" in note and "empty text" in note
    # Without a label column: scores but no metrics.
    _, note = client.predict(
        handle_file(str(server["scored"])), "body", "(none)", DEFAULT_LABELS, "embedding", "", api_name="/score_file"
    )
    assert "Accuracy" not in note and "no metrics" in note


def test_bad_files_give_clear_errors_and_the_server_keeps_serving(server: dict, client: Client) -> None:
    with pytest.raises(AppError, match="'text'.*not in tickets.csv.*id, body, label"):
        client.predict(
            handle_file(str(server["scored"])), "text", "label", DEFAULT_LABELS, "embedding", "", api_name="/score_file"
        )
    with pytest.raises(AppError, match="not valid UTF-8"):
        client.predict(
            handle_file(str(server["files"] / "latin1.csv")),
            "text",
            "label",
            DEFAULT_LABELS,
            "embedding",
            "",
            api_name="/score_file",
        )
    probs = client.predict(CLEAR[1][0], DEFAULT_LABELS, "embedding", "", api_name="/classify")
    assert max(probs, key=probs.get) == "billing"


def test_compare_methods_side_by_side(server: dict, client: Client) -> None:
    table, note = client.predict(
        handle_file(str(server["scored"])), "body", "label", DEFAULT_LABELS, "ticket-lora", api_name="/compare_methods"
    )
    assert [row[0].split(" ·")[0] for row in table["data"]] == ["zero-shot", "fine-tuned"]
    assert table["headers"] == ["method", "accuracy", "macro-F1", "rows"]
    assert all(0.0 <= row[1] <= 1.0 and row[3] == 5 for row in table["data"])
    assert "macro-F1" in note


def test_scored_files_live_in_the_homes_tmp_and_old_ones_are_cleaned(server: dict, client: Client) -> None:
    import os
    import tempfile

    scratch = server["home"] / "tmp"
    old = scratch / "demoforge-scored-old"
    old.mkdir(parents=True, exist_ok=True)
    (old / "x-scored.csv").write_text("a\n", encoding="utf-8")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    in_system_tmp = set(Path(tempfile.gettempdir()).glob("demoforge-scored-*"))
    client.predict(
        handle_file(str(server["scored"])), "body", "label", DEFAULT_LABELS, "embedding", "", api_name="/score_file"
    )
    fresh = list(scratch.glob("demoforge-scored-*"))
    assert [f.name for f in fresh] != [] and not old.exists()  # one folder per call; an hour-old one removed
    assert all((f / "tickets-scored.csv").is_file() for f in fresh)
    assert set(Path(tempfile.gettempdir()).glob("demoforge-scored-*")) == in_system_tmp  # nothing left in /tmp


def test_an_internal_error_is_a_short_message_with_a_reference(
    server: dict, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("internal detail at /srv/secret/path.py")  # a bug, not a user error

    monkeypatch.setattr(server["engine"].classify, "classify", broken)
    with pytest.raises(AppError) as err:
        client.predict("some text", DEFAULT_LABELS, "embedding", "", api_name="/classify")
    msg = str(err.value)
    assert "Something went wrong" in msg and "reference" in msg
    assert "/srv/secret" not in msg and "internal detail" not in msg
    monkeypatch.undo()
    probs = client.predict(CLEAR[1][0], DEFAULT_LABELS, "embedding", "", api_name="/classify")
    assert max(probs, key=probs.get) == "billing"  # the server keeps serving


def test_finetune_from_corrections_starts_a_run_shown_here(server: dict, client: Client) -> None:
    data = [
        [i + 1, f"{word} ticket number {i}", "", "bug", 0.5, label]
        for i, (word, label) in enumerate([("refund", "billing"), ("crash", "bug")] * 12)
    ]
    table = {"headers": TABLE_COLUMNS, "data": data, "metadata": None}
    note, run_id, status = client.predict(table, "from corrections", 0.5, api_name="/finetune_from_corrections")
    engine = server["engine"]
    try:
        assert "Started run" in note and "Fine-tune" in note and run_id.endswith("-from-corrections")
        # The run's progress is shown in the Classify tab itself: a status badge and a bar, no emoji.
        assert run_id in status and "df-bar" in status and "df-badge" in status
        assert not any(ord(ch) > 0x2FFF for ch in status + note)
        assert engine.training.active() is not None
        saved = list((server["home"] / "uploads").glob("corrections-from-corrections-*.csv"))
        assert len(saved) == 1
        lines = saved[0].read_text(encoding="utf-8").splitlines()
        assert lines[:2] == ["text,label", "refund ticket number 0,billing"] and len(lines) == 25
        with pytest.raises(AppError, match="already in progress"):
            client.predict(table, "second", 0.5, api_name="/finetune_from_corrections")
        seen = client.predict("", api_name="/training_status")
        assert seen["run_id"] == run_id  # the run the Fine-tune tab follows
    finally:
        client.predict(api_name="/stop_training")  # keep the test short: the run itself is tested elsewhere
        deadline = time.monotonic() + 60
        while engine.training.active() is not None and time.monotonic() < deadline:
            time.sleep(0.5)
    assert engine.training.active() is None
    with pytest.raises(AppError, match="no usable characters"):  # a user error, not 'something went wrong'
        client.predict(table, "///", 0.5, api_name="/finetune_from_corrections")


def test_the_fine_tuned_method_comes_up_with_an_adapter_picked() -> None:
    """Keeps the adapter chosen while it exists, else the newest; none when the library has none; hidden otherwise."""
    from types import SimpleNamespace

    from demo import classify_run

    def engine(*names: str) -> SimpleNamespace:  # the library lists newest first
        listing = [SimpleNamespace(name=n) for n in names]
        return SimpleNamespace(library=SimpleNamespace(list=lambda task: listing))

    both = engine("newest", "older")
    assert classify_run.show_adapter(both, "adapter", "older") == {
        "__type__": "update", "visible": True, "choices": ["newest", "older"], "value": "older",
        "info": classify_run.ADAPTER_INFO,
    }  # fmt: skip
    assert classify_run.show_adapter(both, "adapter", None)["value"] == "newest"
    assert classify_run.show_adapter(both, "adapter", "deleted-one")["value"] == "newest"
    empty = classify_run.show_adapter(engine(), "adapter", None)
    assert empty["value"] is None and "Fine-tune tab" in empty["info"]  # says how to get one, not just blank
    assert classify_run.show_adapter(both, "embedding", "older") == {"__type__": "update", "visible": False}
