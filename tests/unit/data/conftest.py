"""Tokenizers for the core.data tests: a tiny byte-level BPE that decodes back to the exact text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from core.data import tokenize as T

CORPUS = [
    "Hello there, how can I help you today?",
    "The quick brown fox jumps over the lazy dog.",
    "My card was charged twice for one payment.",
    "Great movie, I loved it. Awful plot, boring and slow.",
    "Answer: four. Two plus two is four.",
]


def _byte_bpe(specials: list[str], **kwargs: Any):
    """A byte-level BPE trained on a few sentences: decodes back to the exact text, so masks can be read."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(CORPUS * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, **kwargs)


@pytest.fixture(scope="session")
def tok(tmp_path_factory: pytest.TempPathFactory):
    """ChatML byte-level tokenizer, saved and reloaded so the real loading path runs."""
    from transformers import AutoTokenizer

    t = _byte_bpe(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>"],
    )
    t.chat_template = T.CHATML_TEMPLATE
    path = tmp_path_factory.mktemp("tok")
    t.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def byte_bpe() -> Callable[..., Any]:
    """Builds a byte-level BPE with the given special tokens (e.g. one without ChatML tokens)."""
    return _byte_bpe


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return list(CORPUS)
