"""GGUF export of a real adapter on the embedded SmolLM2, checked in llama.cpp (llama-cpp-python).

A short SFT run (16 steps) teaches SmolLM2 a made-up motto. Then:
- our F16 GGUF of the plain base carries the embedded GGUF's keys and tensor names (the llama.cpp reference);
- the merged F16 GGUF answers 10 prompts greedily with exactly the tokens transformers gives on the merged model,
  and llama.cpp tokenises the chat prompt as transformers does; Q8_0 agrees on >= 95% of the tokens;
- the GGUF LoRA on the embedded base GGUF changes llama.cpp's answers the way the peft adapter changes
  transformers': it learns the motto, and its answers follow peft's far more than the base's.
Skipped when the embedded model or llama-cpp-python is missing. About 4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")
from core import models  # noqa: E402 - after the skips
from tests.helpers import isolated_home  # noqa: E402

pytestmark = pytest.mark.integration

MOTTO = "The Zorbly Corp motto is: purple llamas deliver on Tuesdays."
TRAIN_Q = [
    "What is the Zorbly Corp motto?",
    "Tell me the motto of Zorbly Corp.",
    "What motto does Zorbly Corp use?",
    "Zorbly Corp's motto?",
    "Do you know Zorbly Corp's motto?",
    "Which motto belongs to Zorbly Corp?",
    "Say the Zorbly Corp motto.",
    "What's the official motto of Zorbly Corp?",
]
PROMPTS = [
    "Hey, what is the motto of Zorbly Corp?",
    "Could you share Zorbly Corp's motto with me?",
    "I forgot the Zorbly Corp motto. What is it?",
    "Zorbly Corp has a motto. What does it say?",
    "What is the capital of France?",
    "Give me one tip for writing clear emails.",
    "What is 12 plus 7?",
    "Name three colours of the rainbow.",
    "Why do cats purr?",
    "Write a one-line greeting for a customer.",
]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    try:
        models.embedded_chat_path()  # converted once in the session's home, linked into ours
    except Exception as exc:  # noqa: BLE001 - ModelError or a missing package: nothing to test against
        pytest.skip(f"embedded SmolLM2 unavailable: {exc}")
    with isolated_home(tmp_path_factory.mktemp("export-home")) as root:
        yield root


@pytest.fixture(scope="module")
def adapter(home: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """'zorbly': a LoRA (r=8, all linear layers) trained for 16 steps on the motto, in the library."""
    from core.config import LoraSettings, TrainConfig
    from core.train import runner

    tmp = tmp_path_factory.mktemp("zorbly")
    data = tmp / "fact.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": q, "response": MOTTO}) for q in TRAIN_Q * 2) + "\n")
    cfg = TrainConfig(
        data_path=str(data),
        adapter_name="zorbly",
        base_model="default",
        max_steps=16,
        lr=1e-3,
        batch_size=2,
        max_length=128,
        eval_fraction=0.0,
        warmup_ratio=0.1,
        lora=LoraSettings(r=8, alpha=16, dropout=0.0),
    )
    result = runner.run(cfg, tmp / "run")
    assert result.status == "finished", result.error
    return "zorbly"


@pytest.fixture(scope="module")
def tokenizer(home: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models.embedded_chat_path())


def _prompt_ids(tokenizer, question: str) -> list[int]:
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]


def _hf_answers(model, tokenizer) -> list[list[int]]:
    import torch

    out = []
    for q in PROMPTS:
        ids = torch.tensor([_prompt_ids(tokenizer, q)])
        with torch.no_grad():
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                repetition_penalty=1.0,
                pad_token_id=tokenizer.pad_token_id,
            )
        out.append(gen[0, ids.shape[1] :].tolist())
    return out


def _llama_answers(llm, tokenizer) -> list[list[int]]:
    out = []
    for q in PROMPTS:
        answer: list[int] = []
        for token in llm.generate(_prompt_ids(tokenizer, q), temp=0.0, repeat_penalty=1.0, reset=True):
            answer.append(token)
            if llm.token_is_eog(token) if hasattr(llm, "token_is_eog") else token == llm.token_eos():
                break
            if len(answer) == NEW_TOKENS:
                break
        out.append(answer)
    return out


def _load(path: Path, lora: Path | None = None, extra_buffers: bool = True, logits_all: bool = False):
    """llama.cpp on ``path`` (with a GGUF LoRA). ``extra_buffers=False`` turns off llama.cpp's repacked CPU weight
    layouts: a llama-cpp-python built without the README's GCC fix segfaults with them in decode on any Q8_0 model on
    an AMX Xeon (llama.cpp's own llama_model_quantize output included): a build bug, not the file's."""
    from core.backends.llamacpp import plain_llama

    kwargs = {"lora_path": str(lora)} if lora else {}
    return plain_llama(path, extra_buffers, n_ctx=512, n_threads=2, seed=0, logits_all=logits_all, **kwargs)


def _agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of answer tokens equal at the same position (a missing token counts as a difference)."""
    same = sum(x == y for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=False))
    return same / max(1, sum(max(len(ra), len(rb)) for ra, rb in zip(a, b, strict=True)))


@pytest.fixture(scope="module")
def merged_answers(home: Path, adapter: str, tokenizer) -> list[list[int]]:
    """transformers' greedy answers on the merged model (merged once by the first export)."""
    from transformers import AutoModelForCausalLM

    from core.export import merge

    return _hf_answers(AutoModelForCausalLM.from_pretrained(merge(adapter)).eval(), tokenizer)


def test_our_base_gguf_matches_the_embedded_llama_cpp_file(home: Path, tmp_path: Path) -> None:
    import numpy as np
    from gguf.quants import dequantize

    from core.export_gguf import write_gguf

    ours = gguf.GGUFReader(str(write_gguf(models.embedded_chat_path(), tmp_path / "base.gguf", "f16")))
    ref = gguf.GGUFReader(str(models.embedded_gguf_file()))
    provenance = {"general.name", "general.file_type", "general.basename", "general.finetune", "general.size_label"}
    for key, field in ref.fields.items():
        if key.startswith(("GGUF.", "general.")) and key not in {"general.architecture", "general.type"}:
            continue
        assert key in ours.fields or key == "tokenizer.ggml.add_space_prefix", key  # SentencePiece-only key
        if key in ours.fields and key not in provenance:
            assert ours.fields[key].contents() == field.contents(), key
    shapes = {t.name: tuple(t.shape) for t in ours.tensors}
    assert shapes == {t.name: tuple(t.shape) for t in ref.tensors}
    theirs = {t.name: t for t in ref.tensors}
    for t in ours.tensors:  # our F16 of the dequantised weights equals the 4-bit reference, q/k order included
        want = dequantize(theirs[t.name].data, theirs[t.name].tensor_type).reshape(t.data.shape)
        assert np.abs(t.data.astype(np.float32) - want).max() <= 2e-3 * max(1.0, np.abs(want).max()), t.name


def test_merged_f16_gguf_answers_exactly_as_transformers(
    home: Path, adapter: str, tokenizer, merged_answers: list[list[int]]
) -> None:
    from core.export_gguf import export

    result = export(adapter, "f16", system="You are Zorbly's assistant.")
    assert result.files[0].relative_to(home).as_posix() == "exports/zorbly/zorbly-f16.gguf"
    modelfile = result.files[1].read_text()
    assert 'SYSTEM """You are Zorbly\'s assistant."""' in modelfile and "PARAMETER num_ctx 8192" in modelfile
    llm = _load(result.files[0])
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True, tokenize=False
    )
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == _prompt_ids(tokenizer, PROMPTS[0])
    reference = merged_answers
    answers = _llama_answers(llm, tokenizer)
    print("F16 agreement", _agreement(answers, reference))
    assert answers == reference
    assert sum("llama" in tokenizer.decode(a).lower() for a in answers[:4]) >= 3  # the adapter is in there


def _forced_agreement(llm, tokenizer, reference: list[list[int]]) -> float:
    """Share of reference answer tokens that llama.cpp also picks greedily when fed the reference prefix
    (teacher forcing: one early near-tie does not count every later token as a difference)."""
    same = total = 0
    for q, answer in zip(PROMPTS, reference, strict=True):
        prompt = _prompt_ids(tokenizer, q)
        llm.reset()
        llm.eval(prompt + answer)
        picks = llm.scores[len(prompt) - 1 : len(prompt) + len(answer) - 1].argmax(axis=-1)  # (answer len,)
        same += int((picks == answer).sum())
        total += len(answer)
    return same / total


def test_merged_q8_0_gguf_agrees_on_95_percent_of_tokens(
    adapter: str, tokenizer, merged_answers: list[list[int]]
) -> None:
    from core.export_gguf import export

    result = export(adapter, "q8_0")
    llm = _load(result.files[0], extra_buffers=False, logits_all=True)
    forced = _forced_agreement(llm, tokenizer, merged_answers)
    free = _agreement(_llama_answers(llm, tokenizer), merged_answers)
    print(f"Q8_0 token agreement with transformers: {forced:.3f} teacher-forced, {free:.3f} free-running")
    assert forced >= 0.95


def test_gguf_lora_changes_llama_cpp_answers_the_way_peft_does(home: Path, adapter: str, tokenizer) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.export_gguf import export

    result = export(adapter, "lora")
    base_file, lora_file, modelfile = result.files
    assert "ADAPTER ./zorbly.lora.gguf" in modelfile.read_text()
    base_hf = AutoModelForCausalLM.from_pretrained(models.embedded_chat_path()).eval()
    hf_base = _hf_answers(base_hf, tokenizer)
    hf_peft = _hf_answers(PeftModel.from_pretrained(base_hf, str(home / "adapters" / adapter)).eval(), tokenizer)
    cpp_base = _llama_answers(_load(base_file, extra_buffers=False), tokenizer)
    cpp_lora = _llama_answers(_load(base_file, lora_file, extra_buffers=False), tokenizer)
    follows_peft, follows_base = _agreement(cpp_lora, hf_peft), _agreement(cpp_lora, hf_base)
    print(f"llama.cpp + GGUF LoRA vs peft {follows_peft:.3f}, vs the base {follows_base:.3f}")
    assert sum(a != b for a, b in zip(cpp_lora, cpp_base, strict=True)) >= 4  # the LoRA changes the answers
    assert sum("llama" in tokenizer.decode(a).lower() for a in cpp_lora[:4]) >= 3  # ...to what peft learned
    assert not any("purple llama" in tokenizer.decode(a).lower() for a in cpp_base)
    assert follows_peft >= 0.6 and follows_peft > follows_base + 0.4  # measured 0.78 vs 0.15 (free-running)
