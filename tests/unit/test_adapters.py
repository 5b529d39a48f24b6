"""The adapter library and hot-swapping adapters on the loaded chat base (tiny Llama, adapters built in the test)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from core import adapters
from core.adapters import AdapterError
from core.config import AppConfig, GenerationSettings
from core.engine import Engine
from core.export import ExportError, merge, push
from tests.lora import make_adapter as _make_adapter


@pytest.fixture
def library(tiny_models: dict[str, Path], demoforge_home: Path) -> dict:
    base = tiny_models["llama"]
    return {"base": base, "a": _make_adapter(base, "alpha", 1), "b": _make_adapter(base, "beta", 2)}


def _greedy(engine: Engine, adapter: str | None) -> str:
    *_, last = engine.chat_stream(
        [{"role": "user", "content": "good movie"}],
        GenerationSettings(temperature=0.0, max_new_tokens=8, repetition_penalty=1.0),
        adapter=adapter,
    )
    return last.text


def test_list_get_and_unfinished_folders_are_ignored(library: dict) -> None:
    (adapters.adapters_dir() / ".tmp-gamma-123").mkdir()
    half = adapters.adapters_dir() / "half"
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"x")  # weights but no card: not finished
    names = [a.name for a in adapters.list_adapters()]
    assert names == ["beta", "alpha"]  # newest first; half-written folders never listed
    assert adapters.get("alpha").metrics["eval_loss"] == 1.5
    assert "eval loss 1.500" in adapters.get("alpha").summary()
    with pytest.raises(AdapterError, match="No adapter named 'half'"):
        adapters.get("half")


def test_rename_delete_needs_confirmation_and_zip(library: dict, tmp_path: Path) -> None:
    renamed = adapters.rename("alpha", "alpha v2/../x")
    assert renamed.name == "alpha-v2-..-x" or renamed.name.startswith("alpha-v2")
    assert json.loads((renamed.path / "adapter_card.json").read_text())["name"] == renamed.name
    assert (renamed.path / "README.md").read_text().startswith(f"# {renamed.name}\n")  # the card's heading too
    with pytest.raises(AdapterError, match="already exists"):
        adapters.rename(renamed.name, "beta")
    with pytest.raises(AdapterError, match="type its name exactly"):
        adapters.delete("beta", "bet")
    assert adapters.get("beta")
    archive = adapters.zip_adapter("beta", tmp_path)
    assert "beta/adapter_model.safetensors" in zipfile.ZipFile(archive).namelist()
    adapters.delete("beta", "beta")
    assert [a.name for a in adapters.list_adapters()] == [renamed.name]


def test_switching_adapters_never_reloads_the_base(library: dict) -> None:
    engine = Engine(AppConfig(model=str(library["base"]), device="cpu", dtype="float32"))
    base_model = engine.chat_model().model
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        base_logits = base_model(ids).logits
    plain = _greedy(engine, None)
    with_a = _greedy(engine, "alpha")
    with_b = _greedy(engine, "beta")
    assert len({plain, with_a, with_b}) == 3  # each adapter changes the output
    assert _greedy(engine, None) == plain  # the base is intact when no adapter is chosen
    assert _greedy(engine, "alpha") == with_a  # switching back is exact
    assert engine.chat_model().model is base_model  # same loaded weights object: no reload
    with torch.no_grad():  # between requests the adapters rest disabled: other users of the model see the base
        assert torch.allclose(base_model(ids).logits, base_logits)
    assert engine.switch_adapter("beta") < 1.0  # already loaded: instant
    assert [a.name for a in engine.chat_adapters()] == ["beta", "alpha"]


def test_wrong_base_or_task_is_refused_with_a_reason(library: dict) -> None:
    _make_adapter(library["base"], "other-base", 3, base_spec="HuggingFaceTB/SmolLM2-360M-Instruct")
    _make_adapter(library["base"], "classifier", 4, task="classification")
    engine = Engine(AppConfig(model=str(library["base"]), device="cpu", dtype="float32"))
    with pytest.raises(AdapterError, match="was trained on 'HuggingFaceTB/SmolLM2-360M-Instruct'"):
        engine.switch_adapter("other-base")
    with pytest.raises(AdapterError, match="classification adapter"):
        engine.switch_adapter("classifier")
    assert "other-base" not in [a.name for a in engine.chat_adapters()]


def test_merge_saves_safetensors_that_reproduce_the_adapter(library: dict) -> None:
    engine = Engine(AppConfig(model=str(library["base"]), device="cpu", dtype="float32"))
    with_a = _greedy(engine, "alpha")
    merged = merge("alpha")
    assert list(merged.glob("*.safetensors")) and not list(merged.glob("*.bin"))
    assert _greedy(Engine(AppConfig(model=str(merged), device="cpu", dtype="float32")), None) == with_a


def test_an_engine_with_its_own_home_merges_into_that_home_once(
    library: dict, demoforge_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library's merge writes under the engine's home, not the environment's, and a merged push reuses it."""
    import shutil

    from core import export

    own = tmp_path / "own-home"
    shutil.copytree(demoforge_home / "adapters", own / "adapters")
    engine = Engine(AppConfig(model=str(library["base"]), device="cpu", dtype="float32"), home=own)
    merged = engine.library.merge("alpha")
    assert merged == own / "merged" / "alpha" and (merged / "model.safetensors").is_file()
    assert not (demoforge_home / "merged").exists()
    calls: list[str] = []
    real_merge = export.merge
    monkeypatch.setattr(export, "merge", lambda *a, **k: calls.append("merge") or real_merge(*a, **k))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError, match="offline|reach"):
        export.push("alpha", "me/alpha", "hf_x", merged=True, home=own)
    assert calls == []  # the fresh merge above was reused, not merged again
    (own / "adapters" / "alpha" / "adapter_model.safetensors").touch()  # newer weights: the merge is stale
    assert export.fresh_merge(adapters.get("alpha", own), own) is None


def test_push_without_token_or_offline_is_a_clear_error(library: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ExportError, match="token"):
        push("alpha", "me/alpha", "")
    with pytest.raises(ExportError, match="your-name/model-name"):
        push("alpha", "no-slash", "hf_x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError, match="offline|reach"):
        push("alpha", "me/alpha", "hf_x")


def test_the_engines_library_renames_and_deletes_without_leaving_a_stale_name(library: dict) -> None:
    engine = Engine(AppConfig(model=str(library["base"]), device="cpu", dtype="float32"))
    with_a, with_b = _greedy(engine, "alpha"), _greedy(engine, "beta")  # both loaded onto the base
    info = engine.library.rename("alpha", "gamma")
    assert info.name == "gamma" and engine.library.card_markdown("gamma").startswith("# gamma\n")
    assert _greedy(engine, "gamma") == with_a  # the same weights under the new name
    with pytest.raises(AdapterError, match="No adapter named 'alpha'"):
        _greedy(engine, "alpha")
    assert [a.name for a in engine.chat_adapters()] == ["beta", "gamma"]
    engine.library.delete("beta", "beta")
    with pytest.raises(AdapterError, match="No adapter named 'beta'"):
        engine.switch_adapter("beta")
    assert _greedy(engine, "gamma") == with_a and with_a != with_b
    assert [a.name for a in engine.library.list()] == ["gamma"]


def test_classification_waits_while_a_chat_request_holds_its_adapter(library: dict) -> None:
    """A transformers chat request enables its LoRA layers on the shared base under the generation lock; the
    chat-likelihood classifier scores with that same base, so a classify call must wait for the lock (issue 9.8)."""
    import threading
    import time

    engine = Engine(AppConfig(model=str(library["base"]), device="cpu", dtype="float32"))
    done = threading.Event()

    def classify() -> None:
        engine.classify.methods()  # any call goes through the engine's classify door
        done.set()

    with engine._gen_lock:  # what a chat request holds while its adapter is enabled
        worker = threading.Thread(target=classify)
        worker.start()
        time.sleep(0.3)
        assert not done.is_set(), "a classify call ran while a chat request had its adapter enabled"
    worker.join(timeout=10)
    assert done.is_set()
