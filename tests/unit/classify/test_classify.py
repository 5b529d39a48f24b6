"""Classify engine on tiny models: label parsing, batching/order, blanks, metrics, CSV escaping, adapters, occlusion."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from core.classify.chat_likelihood import ZeroShotChatClassifier
from core.classify.classifiers import (
    ClassifyError,
    FineTunedClassifier,
    SentenceEncoder,
    SequenceClassifier,
    ZeroShotEmbeddingClassifier,
    fit_temperature,
    label_prompt,
    parse_labels,
)
from core.classify.explain import explain, explain_text, split_words
from core.classify.scoring import compute_metrics, escape_cell, score_file, score_table, write_csv

LABELS = "good: a good movie, bad: a bad movie, plot"
TEXTS = ["the movie was good", "awful plot", "a very very really bad and poor film story", "great", "w1 w2 w3 w4 w5"]


@pytest.fixture(scope="module")
def encoder(tiny_models: dict[str, Path]) -> SentenceEncoder:
    return SentenceEncoder.load(tiny_models["bert"], device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def zero_shot(encoder: SentenceEncoder) -> ZeroShotEmbeddingClassifier:
    return ZeroShotEmbeddingClassifier(LABELS, encoder)


# --- labels ---------------------------------------------------------------------------------------------------------


def test_parse_labels_names_and_descriptions() -> None:
    assert parse_labels("billing: payment or invoice questions, bug, feature request") == [
        ("billing", "payment or invoice questions"),
        ("bug", ""),
        ("feature request", ""),
    ]
    # one per line: commas stay inside descriptions
    assert parse_labels("a: x, y\nb") == [("a", "x, y"), ("b", "")]
    assert parse_labels([("x", "first"), ("y", "")]) == [("x", "first"), ("y", "")]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "at least 2"),
        ("only", "at least 2"),
        ("a, b, A", "appears twice"),
        ("a, : no name", "has no name"),
    ],
)
def test_parse_labels_errors(spec: str, message: str) -> None:
    with pytest.raises(ClassifyError, match=message):
        parse_labels(spec)


def test_label_prompt_uses_description_or_template() -> None:
    assert label_prompt("card_arrival", "") == "This text is about card arrival."
    assert label_prompt("x", "short description") == "short description"


# --- zero-shot embeddings -------------------------------------------------------------------------------------------


def test_encoder_mean_pools_real_tokens_and_normalises(encoder: SentenceEncoder) -> None:
    vecs = encoder.embed(["good movie", "bad"])
    assert torch.allclose(vecs.norm(dim=-1), torch.ones(2), atol=1e-5)
    # manual: mean of the last hidden states over the unpadded tokens
    ids = encoder.tokenizer("good movie", return_tensors="pt")
    with torch.no_grad():
        hidden = encoder.model(**ids).last_hidden_state[0]
    assert torch.allclose(vecs[0], torch.nn.functional.normalize(hidden.mean(0), dim=-1), atol=1e-5)


def test_probabilities_sum_to_one_and_match_cosine_softmax(zero_shot: ZeroShotEmbeddingClassifier) -> None:
    preds = zero_shot.predict(TEXTS)
    assert [list(p.probs) for p in preds] == [["good", "bad", "plot"]] * len(TEXTS)
    for p in preds:
        assert sum(p.probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert p.label == max(p.probs, key=p.probs.get)
    expected = torch.softmax(zero_shot.cosines(TEXTS) / zero_shot.temperature, dim=-1)
    assert torch.allclose(zero_shot.predict_proba(TEXTS), expected, atol=1e-5)


def test_order_preserved_with_sorting_and_padding(zero_shot: ZeroShotEmbeddingClassifier) -> None:
    one_by_one = torch.cat([zero_shot.predict_proba([t]) for t in TEXTS])
    zero_shot.batch_size = 2  # several sorted batches, padded differently from the single runs
    try:
        batched = zero_shot.predict_proba(TEXTS)
    finally:
        zero_shot.batch_size = 32
    assert torch.allclose(batched, one_by_one, atol=1e-5)


def test_empty_and_very_long_texts(zero_shot: ZeroShotEmbeddingClassifier) -> None:
    long_text = "good movie " * 5000  # far past the tiny BERT's 128 positions: must be truncated, not crash
    preds = zero_shot.predict(["", long_text, "   ", None, "good"])  # type: ignore[list-item]
    assert len(preds) == 5
    for i in (0, 2, 3):
        assert preds[i].blank and preds[i].probs == pytest.approx({k: 1 / 3 for k in ("good", "bad", "plot")})
        assert preds[i].label == "good"
    assert not preds[1].blank and sum(preds[1].probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert zero_shot.encoder.max_length == 128


def test_bad_temperature_and_template(encoder: SentenceEncoder) -> None:
    with pytest.raises(ClassifyError, match="temperature"):
        ZeroShotEmbeddingClassifier("a, b", encoder, temperature=0)
    with pytest.raises(ClassifyError, match="template"):
        ZeroShotEmbeddingClassifier("a, b", encoder, template="no placeholder")


def test_fit_temperature_prefers_sharper_softmax_for_separable_scores() -> None:
    cos = torch.tensor([[0.5, 0.2], [0.1, 0.4], [0.6, 0.3]])
    t, nll = fit_temperature(cos, [0, 1, 0])
    assert t == 0.01 and nll < 0.01
    t_noisy, _ = fit_temperature(cos, [0, 1, 1])  # one contradiction: a softer softmax wins
    assert t_noisy > 0.01


# --- chat zero-shot -------------------------------------------------------------------------------------------------


def test_chat_classifier_scores_label_likelihood_in_one_forward(tiny_models: dict[str, Path]) -> None:
    from core.chat import render_ids
    from core.models import load_causal_lm

    chat = load_causal_lm(str(tiny_models["llama"]), device="cpu", dtype="float32")
    clf = ZeroShotChatClassifier("good, bad movie, plot", chat)
    calls = []
    hook = chat.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        probs = clf.predict_proba(["the movie was great", "", "awful"])
    finally:
        hook.remove()
    assert len(calls) == 4  # per non-blank text: the prompt once, then all label continuations in one batch
    assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(probs[1], torch.full((3,), 1 / 3))
    # reference: score each label alone, without padding
    prompt = render_ids(
        chat.tokenizer, [{"role": "user", "content": clf.PROMPT.format(labels=clf._listing, text="awful")}]
    )
    scores = []
    with torch.no_grad():
        for answer in clf.answers:
            ids = torch.tensor([prompt + answer])
            logp = torch.log_softmax(chat.model(ids).logits[0, len(prompt) - 1 : -1].float(), -1)
            scores.append(logp.gather(-1, torch.tensor(answer)[:, None]).sum())
    assert torch.allclose(probs[2], torch.softmax(torch.stack(scores), -1), atol=1e-4)


# --- fine-tuned adapters --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A SEQ_CLS LoRA adapter on the tiny BERT, saved like core.train.save_adapter; returns (folder, model)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    labels = ["neg", "neutral", "pos"]
    base = AutoModelForSequenceClassification.from_pretrained(tiny_models["bert"], num_labels=3)
    model = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["query", "value"]))
    with torch.no_grad():  # a trained-looking adapter: nonzero LoRA B and a head unlike the base's
        for name, p in model.named_parameters():
            if "lora_B" in name or "classifier" in name:
                p.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("adapters") / "tiny-cls"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_models["bert"]).save_pretrained(folder)
    card = {
        "name": "tiny-cls",
        "task": "classification",
        "base_model": str(tiny_models["bert"]),
        "base_model_path": str(tiny_models["bert"]),
        "labels": labels,
    }
    (folder / "adapter_card.json").write_text(json.dumps(card))
    return folder, model.eval()


def test_fine_tuned_adapter_loads_with_card_labels_and_same_outputs(adapter: tuple[Path, object]) -> None:
    folder, model = adapter
    clf = FineTunedClassifier.load(folder, device="cpu", dtype="float32")
    assert clf.labels == ["neg", "neutral", "pos"]
    with torch.no_grad():
        enc = clf.tokenizer(TEXTS, padding=True, return_tensors="pt")
        expected = torch.softmax(model(**enc).logits, -1)  # type: ignore[operator]
    assert torch.allclose(clf.predict_proba(TEXTS), expected, atol=1e-5)
    # the adapter matters: the bare base with a fresh head gives something else
    assert not torch.allclose(expected, torch.full_like(expected, 1 / 3), atol=1e-2)


def test_fine_tuned_adapter_refuses_bad_folders(adapter: tuple[Path, object], tmp_path: Path) -> None:
    import shutil

    folder, _ = adapter
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    card = json.loads((bad / "adapter_card.json").read_text())
    (bad / "adapter_card.json").write_text(json.dumps({**card, "task": "sft"}))
    with pytest.raises(ClassifyError, match="not a classification"):
        FineTunedClassifier.load(bad, device="cpu")
    (bad / "adapter_card.json").write_text(json.dumps(card))
    (bad / "adapter_model.safetensors").rename(bad / "adapter_model.bin")
    with pytest.raises(ClassifyError, match="safetensors"):
        FineTunedClassifier.load(bad, device="cpu")
    (bad / "adapter_card.json").unlink()
    with pytest.raises(ClassifyError, match="adapter_card.json"):
        FineTunedClassifier.load(bad, device="cpu")


def test_loads_an_adapter_written_by_the_trainer(
    tiny_models: dict[str, Path], tmp_path: Path, demoforge_home: Path
) -> None:
    """The real core.train output (card format, saved head), not just our own fixture's idea of it."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from core.config import LoraSettings
    from core.train import runner as train
    from tests.toy_data import cls_cfg

    rows = ["text,label"] + [
        f"the movie was {w},{'positive' if w in ('good', 'great') else 'negative'}"
        for w in ("good", "bad", "great", "awful") * 10
    ]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = cls_cfg(
        tiny_models["bert"],
        tmp_path / "d.csv",
        max_steps=10,
        lr=1e-2,
        batch_size=8,
        max_length=16,
        eval_fraction=0.2,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
    )
    result = train.run(cfg, tmp_path / "run")
    assert result.status == "finished", result.error
    clf = FineTunedClassifier.load(result.adapter_dir, device="cpu", dtype="float32")
    assert clf.labels == ["negative", "positive"]
    base = AutoModelForSequenceClassification.from_pretrained(tiny_models["bert"], num_labels=2)
    reference = PeftModel.from_pretrained(base, result.adapter_dir).eval()
    with torch.no_grad():
        expected = torch.softmax(reference(**clf.tokenizer(TEXTS, padding=True, return_tensors="pt")).logits, -1)
    assert torch.allclose(clf.predict_proba(TEXTS), expected, atol=1e-5)


def test_sequence_classifier_checks_label_count(adapter: tuple[Path, object], tiny_models: dict[str, Path]) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["bert"], num_labels=2)
    with pytest.raises(ClassifyError, match="2 outputs but 3 labels"):
        SequenceClassifier(model, AutoTokenizer.from_pretrained(tiny_models["bert"]), ["a", "b", "c"])


# --- explanations ---------------------------------------------------------------------------------------------------


def test_explanation_has_one_score_per_word(zero_shot: ZeroShotEmbeddingClassifier) -> None:
    text = "  the movie was  really good\tand the plot great "
    out = explain(zero_shot, text)
    assert len(out) == len(text.split()) == 9
    assert "".join(w for w, _ in out) == text.lstrip()
    assert all(-1.0 <= s <= 1.0 for _, s in out) and max(abs(s) for _, s in out) == pytest.approx(1.0)
    full = explain_text(zero_shot, text, target_label="plot")
    assert full.label == "plot" and len(full.drops) == 9
    # a drop is exactly p(label | text) - p(label | text without that word)
    without_first = "".join(w for w, _ in out[1:])
    p_without = float(zero_shot.predict_proba([without_first])[0, 2])
    assert full.drops[0] == pytest.approx(full.probability - p_without, abs=1e-5)
    assert explain(zero_shot, "") == []
    assert split_words("a  b\nc") == ["a  ", "b\n", "c"]
    with pytest.raises(ClassifyError, match="Unknown label"):
        explain(zero_shot, text, target_label="nope")


# --- batch scoring, metrics, CSV ------------------------------------------------------------------------------------


def test_metrics_on_hand_made_example() -> None:
    m = compute_metrics(["a", "a", "b", "b", "c", ""], ["a", "b", "b", "b", "a", "c"], labels=["a", "b", "c"])
    assert m.labels == ["a", "b", "c"]
    assert m.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m.n == 5 and m.n_without_gold == 1
    assert m.accuracy == pytest.approx(0.6)
    assert m.per_label_f1 == pytest.approx({"a": 0.5, "b": 0.8, "c": 0.0})
    assert m.macro_f1 == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    # a gold label the classifier does not know is appended and counts against it
    m2 = compute_metrics(["x", "a"], ["a", "a"], labels=["a", "b"])
    assert m2.labels == ["a", "b", "x"] and m2.confusion[2] == [1, 0, 0]
    assert m2.macro_f1 == pytest.approx((2 / 3 + 0.0) / 2)  # b is neither gold nor predicted: not averaged


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("=SUM(A1:A2)", "'=SUM(A1:A2)"),
        ("+1", "'+1"),
        ("-2+3", "'-2+3"),
        ("@cmd", "'@cmd"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("fine = ok", "fine = ok"),
        ("", ""),
        (0.25, 0.25),
        (-1, -1),
    ],
)
def test_escape_cell(cell: object, expected: object) -> None:
    assert escape_cell(cell) == expected


def test_score_table_one_row_per_input_in_order(zero_shot: ZeroShotEmbeddingClassifier, tmp_path: Path) -> None:
    rows = [
        {"id": "1", "text": "the movie was good", "gold": "good"},
        {"id": "2", "text": "", "gold": "bad"},
        {"id": "3", "text": None, "gold": ""},
        {"id": "4", "text": "bad plot " * 3000, "gold": "plot"},
        {"id": "5", "gold": "bad"},  # column missing in this row (JSONL)
        {"id": "=6", "text": '=HYPERLINK("http://x")', "gold": "good"},
    ]
    seen: list[float] = []
    result = score_table(zero_shot, rows, "text", "gold", progress=seen.append)
    assert [r["id"] for r in result.rows] == ["1", "2", "3", "4", "5", "=6"]
    assert result.columns == ["id", "text", "gold", "predicted_label", "p_good", "p_bad", "p_plot"]
    assert result.blank_rows == [1, 2, 4]
    for r in result.rows:
        assert r["predicted_label"] in zero_shot.labels
        assert sum(r[f"p_{k}"] for k in zero_shot.labels) == pytest.approx(1.0, abs=1e-4)
    assert result.metrics is not None and result.metrics.n == 5 and seen[-1] == 1.0
    assert seen == sorted(seen)
    path = write_csv(result, tmp_path / "out.csv")
    with open(path, newline="", encoding="utf-8") as fh:
        back = list(csv.DictReader(fh))
    assert len(back) == 6 and back[5]["id"] == "'=6" and back[5]["text"].startswith("'=HYPERLINK")
    assert back[0]["text"] == "the movie was good"
    with pytest.raises(ClassifyError, match="not found"):
        score_table(zero_shot, rows, "body")


def test_score_file_reads_through_core_data(zero_shot: ZeroShotEmbeddingClassifier, tmp_path: Path) -> None:
    path = tmp_path / "in.tsv"
    path.write_text("sentence\tintent\nthe movie was good\tgood\n\tbad\nawful plot\tplot\n", encoding="utf-8")
    result = score_file(zero_shot, path)
    assert len(result.rows) == 3 and result.metrics is not None and result.metrics.n == 3
    assert [r["sentence"] for r in result.rows] == ["the movie was good", "", "awful plot"]
