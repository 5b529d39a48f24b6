"""Mean pooling for sentence encoders (core.pooling): chosen from the encoder's own sentence-transformers config,
recorded in the adapter card, and applied the same way when the adapter is loaded or merged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from core.config import ConfigError, TrainConfig
from core.pooling import MEAN_POOLING_HOWTO, MeanPooler, declared_pooling, pick_pooling, pooling_of, use_mean_pooling
from tests.toy_data import cls_cfg, write_cls


@pytest.fixture
def st_bert(tiny_models: dict[str, Path], tmp_path: Path) -> Path:
    """The tiny BERT as a sentence-transformers folder that declares mean pooling (like the embedded MiniLM)."""
    folder = tmp_path / "st-bert"
    shutil.copytree(tiny_models["bert"], folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 16, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True})
    )
    return folder


def _classifier(base: Path, labels: int = 2) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(base, num_labels=labels).eval()


def test_declared_pooling_reads_the_sentence_transformers_config(st_bert: Path, tiny_models: dict[str, Path]) -> None:
    assert declared_pooling(str(st_bert)) == "mean"
    assert declared_pooling(str(tiny_models["bert"])) == "cls"  # no 1_Pooling folder: the model's own pooler
    assert declared_pooling("sentence-transformers/all-MiniLM-L6-v2") == "cls"  # a Hub id is not fetched for this
    (st_bert / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert declared_pooling(str(st_bert)) == "cls"
    (st_bert / "1_Pooling" / "config.json").write_text("{not json")
    assert declared_pooling(str(st_bert)) == "cls"


def test_pick_pooling_rules(st_bert: Path, tiny_models: dict[str, Path]) -> None:
    from transformers import AutoModelForSequenceClassification

    bert = _classifier(st_bert)
    assert pick_pooling("auto", str(st_bert), bert) == "mean"
    assert pick_pooling("auto", str(st_bert), bert, full_finetune=True) == "cls"  # full FT keeps its LoRA target
    assert pick_pooling("cls", str(st_bert), bert) == "cls"
    assert pick_pooling("auto", str(tiny_models["bert"]), bert) == "cls"
    assert pick_pooling("mean", str(tiny_models["bert"]), bert) == "mean"  # asked for: any BERT-like encoder
    llama = AutoModelForSequenceClassification.from_pretrained(tiny_models["llama"], num_labels=2)
    assert pick_pooling("auto", str(st_bert), llama) == "cls"  # no encoder pooler to replace
    with pytest.raises(ValueError, match="pooler"):
        pick_pooling("mean", str(tiny_models["llama"]), llama)


def test_pooling_config_rules() -> None:
    assert TrainConfig(data_path="d.csv", adapter_name="a", task="classification").pooling == "auto"
    with pytest.raises(ConfigError, match="classification only"):
        TrainConfig(data_path="d.csv", adapter_name="a", task="sft", pooling="mean")
    with pytest.raises(ConfigError, match="full_finetune"):
        TrainConfig(data_path="d.csv", adapter_name="a", task="classification", pooling="mean", full_finetune=True)
    with pytest.raises(ConfigError, match="'auto', 'mean'"):
        TrainConfig(data_path="d.csv", adapter_name="a", task="classification", pooling="max")  # type: ignore[arg-type]


def test_mean_pooled_logits_ignore_padding_and_differ_from_cls(st_bert: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(st_bert)
    cls_model = _classifier(st_bert)
    model = _classifier(st_bert)
    use_mean_pooling(model)
    use_mean_pooling(model)  # a second call changes nothing
    assert pooling_of(model) == "mean" and pooling_of(cls_model) == "cls"
    texts = ["the movie was really very good", "bad"]
    with torch.no_grad():
        batch = model(**tok(texts, return_tensors="pt", padding=True)).logits
        alone = model(**tok(texts[1:], return_tensors="pt")).logits
        hidden = model.base_model(**tok(texts[1:], return_tensors="pt")).last_hidden_state
        by_hand = model.classifier(hidden.mean(1))
        cls_logits = cls_model(**tok(texts[1:], return_tensors="pt")).logits
    torch.testing.assert_close(batch[1:], alone, atol=1e-5, rtol=1e-4)  # the padded row pools its real tokens only
    torch.testing.assert_close(alone, by_hand, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(alone, cls_logits, atol=1e-3)
    assert model.base_model.pooler.mask is None  # cleared after each forward: no stale mask for the next call
    assert isinstance(model.base_model.pooler, MeanPooler)


def test_mean_pooled_run_records_it_and_every_loader_reads_it(
    st_bert: Path, tmp_path: Path, demoforge_home: Path
) -> None:
    """A run on a mean-pooling encoder trains on the mean, says so in the card and README; FineTunedClassifier and the
    README's recipe on the merged export give the training model's own predictions."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from core.classify.classifiers import FineTunedClassifier
    from core.export import merge
    from core.train import runner as train

    cfg = cls_cfg(st_bert, write_cls(tmp_path / "c.csv", n=160), adapter_name="mean-cls", max_steps=60)
    result = train.run(cfg, tmp_path / "run")
    assert result.status == "finished", result.error
    card = json.loads((result.adapter_dir / "adapter_card.json").read_text())
    assert card["pooling"] == "mean"
    assert "mean of the token vectors" in (result.adapter_dir / "README.md").read_text()
    texts = ["the movie was really good", "the film was very awful", "a great story", "poor plot"]
    clf = FineTunedClassifier.load(result.adapter_dir, device="cpu", dtype="float32")
    assert pooling_of(clf.model) == "mean"
    probs = clf.predict_proba(texts)

    merged = merge("mean-cls")
    assert json.loads((merged / "config.json").read_text())["demoforge_pooling"] == "mean"
    assert MEAN_POOLING_HOWTO in (merged / "README.md").read_text()
    assert declared_pooling(str(merged)) == "mean"  # a new run on the merged classifier pools the same way
    model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    enc = AutoTokenizer.from_pretrained(merged)(texts, return_tensors="pt", padding=True)
    recipe = MEAN_POOLING_HOWTO.split("```python")[1].split("```")[0]
    scope = {"model": model, "enc": enc}
    with torch.no_grad():
        exec(recipe, scope)  # the README's own code, run as a user would
    torch.testing.assert_close(scope["logits"].softmax(-1), probs, atol=1e-4, rtol=1e-3)
    with torch.no_grad():
        cls_probs = model(**enc).logits.softmax(-1)  # what the recipe is there to avoid
    assert not torch.allclose(cls_probs, probs, atol=1e-3)


def test_poolers_that_see_only_the_first_token_are_not_replaced(st_bert: Path) -> None:
    """ALBERT's (and BigBird's) pooler is a bare Linear on the first token's vector: a mean pooler there would get 2-D
    input, so 'auto' keeps it and 'mean' is refused with a reason."""
    from transformers import AlbertConfig, AlbertForSequenceClassification

    albert = AlbertForSequenceClassification(
        AlbertConfig(
            vocab_size=64,
            embedding_size=8,
            hidden_size=16,
            num_attention_heads=2,
            intermediate_size=32,
            num_hidden_layers=1,
            num_labels=2,
        )
    )
    assert pick_pooling("auto", str(st_bert), albert) == "cls"
    with pytest.raises(ValueError, match="pooler"):
        pick_pooling("mean", str(st_bert), albert)


def test_each_thread_pools_with_its_own_mask(st_bert: Path) -> None:
    """Two threads classify with one model: the one paused mid-forward still pools with its own mask after the other
    ran a whole forward (which sets and clears a mask of its own)."""
    import threading

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(st_bert)
    model = _classifier(st_bert)
    use_mean_pooling(model)
    padded = tok(["the movie was really very good indeed", "bad"], return_tensors="pt", padding=True)
    other = tok(["a great story", "poor plot was really very bad and long"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**padded).logits
    inside, go, result = threading.Event(), threading.Event(), {}
    paused = {"thread": None}

    def pause(_module: object, _args: object) -> None:
        if threading.get_ident() == paused["thread"]:
            inside.set()
            go.wait(10)

    hook = model.base_model.encoder.register_forward_pre_hook(pause)

    def classify() -> None:
        paused["thread"] = threading.get_ident()
        with torch.no_grad():
            result["logits"] = model(**padded).logits

    worker = threading.Thread(target=classify)
    worker.start()
    assert inside.wait(10)
    with torch.no_grad():
        model(**other)  # a whole forward on this thread while the worker waits inside its own
    go.set()
    worker.join(10)
    hook.remove()
    torch.testing.assert_close(result["logits"], expected, atol=1e-5, rtol=1e-4)


def test_a_run_started_before_pooling_existed_resumes_on_the_cls_pooler(tmp_path: Path) -> None:
    from core.train.runner import _started_before_pooling

    cfg = TrainConfig(data_path="d.csv", adapter_name="a", task="classification")
    (tmp_path / "config.yaml").write_text("data_path: d.csv\nadapter_name: a\ntask: classification\n")
    assert _started_before_pooling(cfg, tmp_path)  # its LoRA and head were trained on [CLS]: keep that
    cfg.to_yaml(tmp_path / "config.yaml")
    assert not _started_before_pooling(cfg, tmp_path)
    sft = TrainConfig(data_path="d.csv", adapter_name="a", task="sft")
    (tmp_path / "config.yaml").write_text("data_path: d.csv\nadapter_name: a\n")
    assert not _started_before_pooling(sft, tmp_path)
