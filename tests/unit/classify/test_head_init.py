"""The classification head starts at the label names' prototypes (core.train.model.init_head_from_label_names):
a fine-tune then starts near zero-shot accuracy instead of chance, which is what lets short budgets converge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.config import LoraSettings, TrainConfig
from tests.conftest import TOY_WORDS


def _cfg(base: Path) -> TrainConfig:
    return TrainConfig(
        data_path="d.csv",
        adapter_name="a",
        task="classification",
        base_model=str(base),
        precision="fp32",
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
    )


def _bert(base: Path, labels: list[str]):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(base, num_labels=len(labels)).eval()


def test_head_starts_at_label_name_prototypes(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    from core.train import model as tl
    from core.train.model import init_head_from_label_names

    # one template, the bare name: each label's prototype is then exactly the feature of its name's text
    monkeypatch.setattr(tl, "HEAD_INIT_TEMPLATES", ("{label}",))

    base = tiny_models["bert"]
    tok = AutoTokenizer.from_pretrained(base)
    labels = [w for w in TOY_WORDS if w.isalpha()][:4]
    model = _bert(base, labels)
    random_head = model.classifier.weight.clone()
    sample = [tok(f"the {w}")["input_ids"] for w in TOY_WORDS[:40]]
    assert init_head_from_label_names(model, tok, labels, sample)
    assert not torch.allclose(model.classifier.weight, random_head)
    # each row is the unit direction of its name's feature minus the sample's mean direction, scaled so a logit is
    # HEAD_INIT_SCALE x a cosine; the bias subtracts the centre's score
    with torch.no_grad():
        feats = model.bert(**tok(labels, return_tensors="pt", padding=True)).pooler_output
        texts = torch.cat([model.bert(input_ids=torch.tensor([ids])).pooler_output for ids in sample])
    centre = torch.nn.functional.normalize(texts, dim=-1).mean(0)
    units = torch.nn.functional.normalize(torch.nn.functional.normalize(feats, dim=-1) - centre, dim=-1)
    w = model.classifier.weight.detach()
    assert torch.allclose(torch.nn.functional.normalize(w, dim=-1), units, atol=1e-4)
    assert w.norm(dim=-1) == pytest.approx([tl.HEAD_INIT_SCALE / float(texts.norm(dim=-1).mean())] * 4, rel=1e-3)
    bias = (-tl.HEAD_INIT_SCALE * units @ centre).tolist()
    # Compared in cosine units: the features here are encoded one by one, the head's in padded batches, and that
    # moves a cosine by ~1e-5 in fp32 (7e-6 on an AMD EPYC, where abs=1e-4 on the 20x bias failed); a wrong centre
    # or sign moves it by >1e-2.
    assert model.classifier.bias.detach().tolist() == pytest.approx(bias, abs=tl.HEAD_INIT_SCALE * 5e-5)


def test_head_init_skips_labels_without_words_and_causal_lm_heads(tiny_models: dict[str, Path]) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from core.train.model import init_head_from_label_names

    tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
    model = _bert(tiny_models["bert"], ["0", "1"])
    before = model.classifier.weight.clone()
    assert not init_head_from_label_names(model, tok, ["0", "1"], [])  # '0'/'1' name nothing to start from
    assert torch.equal(model.classifier.weight, before)
    # names the tokenizer cannot read ('[UNK]' alike) would make equal rows, and equal logits train no encoder weight
    assert not init_head_from_label_names(model, tok, ["negative", "positive"], [])
    assert torch.equal(model.classifier.weight, before)
    llama = AutoModelForSequenceClassification.from_pretrained(tiny_models["llama"], num_labels=2)
    llama.config.pad_token_id = tok.pad_token_id
    before = llama.score.weight.clone()
    # the score head runs on every position (the last token is picked after it): no one vector per text
    assert not init_head_from_label_names(llama, tok, ["negative", "positive"], [])
    assert torch.equal(llama.score.weight, before)


def test_build_model_starts_the_trained_head_from_label_names(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_model with the tokenizer (as the runner calls it) wraps the initialised head in the adapter."""
    from transformers import AutoTokenizer

    from core.train import model as tl

    monkeypatch.setattr(tl, "HEAD_INIT_TEMPLATES", ("{label}",))

    base = tiny_models["bert"]
    tok = AutoTokenizer.from_pretrained(base)
    labels = [w for w in TOY_WORDS if w.isalpha()][:3]
    torch.manual_seed(0)
    plain = tl.build_model(_cfg(base), str(base), labels, tok.pad_token_id)
    torch.manual_seed(0)
    sample = [tok(f"the {w}")["input_ids"] for w in TOY_WORDS[:40]]
    seeded = tl.build_model(_cfg(base), str(base), labels, tok.pad_token_id, tok, sample)
    head = "classifier.modules_to_save.default.weight"
    w_plain = dict(plain.named_parameters())[f"base_model.model.{head}"]
    w_seeded = dict(seeded.named_parameters())[f"base_model.model.{head}"]
    assert w_seeded.requires_grad and not torch.allclose(w_plain, w_seeded)
    with torch.no_grad():
        bert = seeded.base_model.model.bert
        feats = bert(**tok(labels, return_tensors="pt", padding=True)).pooler_output
        texts = torch.cat([bert(input_ids=torch.tensor([ids])).pooler_output for ids in sample])
    centre = torch.nn.functional.normalize(texts, dim=-1).mean(0)
    units = torch.nn.functional.normalize(torch.nn.functional.normalize(feats, dim=-1) - centre, dim=-1)
    assert torch.allclose(torch.nn.functional.normalize(w_seeded.detach(), dim=-1), units, atol=1e-4)
