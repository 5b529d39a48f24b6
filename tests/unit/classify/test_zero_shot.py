"""Zero-shot label vectors on the tiny BERT: prompt ensembles, vocabulary expansion, and the moved import path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core.classify.zero_shot import (
    DEFAULT_TEMPLATES,
    ClassifyError,
    SentenceEncoder,
    ZeroShotEmbeddingClassifier,
    label_prompts,
)

TOY_WHOLE_WORDS = {"user", "assistant", "system", "good", "great", "fine", "bad", "awful", "poor", "the", "movie"}


@pytest.fixture(scope="module")
def encoder(tiny_models: dict[str, Path]) -> SentenceEncoder:
    return SentenceEncoder.load(tiny_models["bert"], device="cpu", dtype="float32")


def test_label_prompts_one_per_template_or_the_description() -> None:
    assert label_prompts("card_arrival", "", ["{label}", "It is {label}."]) == ["card arrival", "It is card arrival."]
    assert label_prompts("x", "my own words") == ["my own words"]  # the user's description is used as written
    assert len(label_prompts("x", "")) == len(DEFAULT_TEMPLATES) > 1


def test_label_vector_is_the_mean_of_its_prompt_embeddings(encoder: SentenceEncoder) -> None:
    templates = ["{label}", "the {label} movie"]
    clf = ZeroShotEmbeddingClassifier("good, bad: a bad film", encoder, template=templates, expand=0)
    good = F.normalize(encoder.embed(["good", "the good movie"]).mean(0), dim=-1)
    bad = encoder.embed(["a bad film"])[0]
    assert torch.allclose(clf.label_vectors, torch.stack([good, bad]), atol=1e-5)
    # the ensemble differs from any single template, so a regression to one prompt shows
    single = ZeroShotEmbeddingClassifier("good, bad: a bad film", encoder, template="{label}", expand=0)
    assert not torch.allclose(single.label_vectors[0], clf.label_vectors[0], atol=1e-3)
    assert clf.expansions == {}


def test_vocabulary_is_whole_words_in_vocabulary_order_and_cached(encoder: SentenceEncoder) -> None:
    words, vectors = encoder.vocabulary()
    assert set(words) >= TOY_WHOLE_WORDS
    assert all(w.isalpha() and len(w) > 2 for w in words)  # no w1/r2 pieces, no [CLS], no 2-letter words
    ids = encoder.tokenizer.get_vocab()
    assert [ids[w] for w in words] == sorted(ids[w] for w in words)
    assert torch.allclose(vectors, encoder.embed(words), atol=1e-6)
    assert encoder.vocabulary()[1].data_ptr() == vectors.data_ptr()  # embedded once per encoder
    assert encoder.vocabulary(3)[0] == words[:3]


def test_expansion_adds_the_words_nearest_each_label_rather_than_the_others(encoder: SentenceEncoder) -> None:
    base = ZeroShotEmbeddingClassifier("good, bad", encoder, expand=0).label_vectors
    clf = ZeroShotEmbeddingClassifier("good, bad", encoder, expand=3, expand_weight=0.5)
    words, vocab = encoder.vocabulary()
    sims = vocab @ base.T  # (words, 2)
    for j, label in enumerate(["good", "bad"]):
        margin = sims[:, j] - sims[:, 1 - j]
        chosen = clf.expansions[label]
        assert len(chosen) == 3 and set(chosen) <= set(words)
        worst_chosen = min(float(margin[words.index(w)]) for w in chosen)
        assert all(float(margin[i]) <= worst_chosen + 1e-6 for i, w in enumerate(words) if w not in chosen)
        extra = F.normalize(vocab[[words.index(w) for w in chosen]].mean(0), dim=-1)
        assert torch.allclose(clf.label_vectors[j], F.normalize(base[j] + 0.5 * extra, dim=-1), atol=1e-5)
    assert set(clf.expansions["good"]).isdisjoint(clf.expansions["bad"])
    probs = clf.predict_proba(["good movie", "awful"])
    assert torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-5)


def test_expansion_is_skipped_when_the_vocabulary_is_too_small(encoder: SentenceEncoder) -> None:
    base = ZeroShotEmbeddingClassifier("good, bad", encoder, expand=0)
    big = ZeroShotEmbeddingClassifier("good, bad", encoder, expand=10_000)
    assert torch.allclose(big.label_vectors, base.label_vectors) and big.expansions == {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"template": ["{label}", "no placeholder"]}, "no placeholder"),
        ({"template": []}, "template"),
        ({"expand": -1}, "expand"),
        ({"expand_weight": -0.1}, "expand_weight"),
    ],
)
def test_bad_templates_and_expansion_settings(encoder: SentenceEncoder, kwargs: dict, message: str) -> None:
    with pytest.raises(ClassifyError, match=message):
        ZeroShotEmbeddingClassifier("a, b", encoder, **kwargs)


def test_old_import_path_still_works() -> None:
    from core.classify import classifiers, zero_shot

    assert classifiers.ZeroShotEmbeddingClassifier is zero_shot.ZeroShotEmbeddingClassifier
    assert classifiers.DEFAULT_TEMPERATURE == zero_shot.DEFAULT_TEMPERATURE
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = classifiers.no_such_name
