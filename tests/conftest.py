"""Session-wide test settings: offline, no analytics, and a DemoForge home of the test session's own."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Set before any test module imports transformers or gradio.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never touch the user's real home; integration tests share one converted SmolLM2 per session. A home made
# here is removed when the session ends: left behind, each run kept ~70-600 MB (408 of them filled a 2-core CI
# machine's disk in two days, and the next run failed on "No space left").
if "DEMOFORGE_HOME" not in os.environ:
    os.environ["DEMOFORGE_HOME"] = tempfile.mkdtemp(prefix="demoforge-test-home-")
    atexit.register(shutil.rmtree, os.environ["DEMOFORGE_HOME"], ignore_errors=True)

from core.data.tokenize import CHATML_TEMPLATE  # noqa: I001 - after the environment above


# --- tiny models shared by unit and UI tests ------------------------------------------------------

TOY_WORDS = (
    [f"w{i}" for i in range(20)]
    + [f"r{i}" for i in range(20)]
    + [
        "user",
        "assistant",
        "system",
        "good",
        "great",
        "fine",
        "bad",
        "awful",
        "poor",
        "the",
        "movie",
        "was",
        "a",
        "film",
        "story",
        "really",
        "very",
        "and",
        "plot",
    ]
)
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<|im_start|>", "<|im_end|>"]


def build_tiny_tokenizer():
    """A word-level tokenizer over the toy vocabulary, with [CLS]/[SEP] added around texts and a ChatML template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + TOY_WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders ``llama`` (tiny LlamaForCausalLM) and ``bert`` (tiny BERT encoder), each with the tiny tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny_models")
    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=len(tok),
            max_position_embeddings=256,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=None,
            tie_word_embeddings=True,
            initializer_range=0.5,  # larger tied embeddings let a frozen head express confident logits
        )
    )
    bert = BertModel(
        BertConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=len(tok),
            max_position_embeddings=128,
            pad_token_id=tok.pad_token_id,
        )
    )
    paths = {"llama": root / "llama", "bert": root / "bert"}
    for name, model in (("llama", llama), ("bert", bert)):
        model.save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
    return paths


@pytest.fixture
def demoforge_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh DEMOFORGE_HOME per test (also inherited by worker subprocesses)."""
    home = tmp_path / "home"
    monkeypatch.setenv("DEMOFORGE_HOME", str(home))
    return home
