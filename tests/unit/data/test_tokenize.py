"""core.data.tokenize: assistant-only masking, chat templates, first-fit-decreasing packing that never leaks
attention across examples; on a tiny byte-level tokenizer (tests/unit/data/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from core.data import tokenize as T

MSGS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def labelled_runs(t: Any, ex: T.TokenizedExample) -> list[str]:
    """Decoded runs of consecutive trained tokens."""
    runs, cur = [], []
    for i, lab in zip(ex.input_ids, ex.labels, strict=True):
        assert lab in (T.IGNORE_INDEX, i)
        if lab != T.IGNORE_INDEX:
            cur.append(i)
        elif cur:
            runs.append(t.decode(cur))
            cur = []
    return runs + ([t.decode(cur)] if cur else [])


# ---------------------------------------------------------------- tokenisation and masking


def test_assistant_masking_multi_turn(tok: Any) -> None:
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "How can I help?"},
        {"role": "assistant", "content": "Hello there, today."},
        {"role": "user", "content": "Two plus two?"},
        {"role": "assistant", "content": "Answer: four."},
    ]
    ex = T.tokenize_chat(tok, msgs)
    assert tok.decode(ex.input_ids) == tok.apply_chat_template(msgs, tokenize=False)
    assert labelled_runs(tok, ex) == ["Hello there, today.<|im_end|>", "Answer: four.<|im_end|>"]


def test_masking_with_default_system_prompt_template(tok: Any) -> None:
    """SmolLM2-style template: injects a system prompt, so a leading assistant turn is not prefix-stable."""
    smol = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou help.<|im_end|>\n' }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    tok2 = tok.__class__.from_pretrained(tok.name_or_path)
    tok2.chat_template = smol
    msgs = [
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "help"},
        {"role": "assistant", "content": "The fox."},
    ]
    assert labelled_runs(tok2, T.tokenize_chat(tok2, msgs)) == ["Hello there.<|im_end|>", "The fox.<|im_end|>"]


def test_ensure_chat_template(tok: Any, byte_bpe: Any) -> None:
    bare = tok.__class__.from_pretrained(tok.name_or_path)
    bare.chat_template = None
    with pytest.raises(ValueError, match="ensure_chat_template"):
        T.tokenize_chat(bare, MSGS)
    assert T.ensure_chat_template(bare) is True and bare.chat_template == T.CHATML_TEMPLATE
    assert T.ensure_chat_template(bare) is False
    # no ChatML tokens: role tags, turns closed by EOS so generate() stops
    gpt = byte_bpe(["<|endoftext|>"], eos_token="<|endoftext|>")
    assert T.ensure_chat_template(gpt) and gpt.chat_template == T.ROLE_TAG_TEMPLATE
    assert labelled_runs(gpt, T.tokenize_chat(gpt, MSGS)) == ["hello<|endoftext|>"]


# ---------------------------------------------------------------- packing


def _ex(n: int, start: int = 10) -> T.TokenizedExample:
    ids = list(range(start, start + n))
    return T.TokenizedExample(ids, list(ids))


def test_pack_first_fit_decreasing() -> None:
    exs = [_ex(n, 10 * i) for i, n in enumerate([3, 7, 5, 2, 6, 4, 1])]  # 28 tokens
    rows = T.pack_examples(exs, 10)
    assert [r.seq_lens for r in rows] == [[7, 3], [6, 4], [5, 2, 1]]
    for r in rows:
        assert len(r) <= 10 and sum(r.seq_lens) == len(r)
        starts = [sum(r.seq_lens[:k]) for k in range(len(r.seq_lens))]
        assert r.position_ids == [p for n in r.seq_lens for p in range(n)]
        assert all(r.labels[s] == -100 for s in starts)  # never predicted from the previous example
        assert all(r.labels[i] == r.input_ids[i] for i in range(len(r)) if i not in starts)
    assert T.pack_examples(exs, 10) == rows
    with pytest.raises(ValueError, match="longer than max_length=6"):
        T.pack_examples(exs, 6)


def test_collate_sft_pads_packed_rows_with_own_block() -> None:
    from core.train.batches import as_train_row, collate_sft

    rows = T.pack_examples([_ex(4), _ex(3), _ex(2)], 5)
    b = collate_sft([as_train_row(r) for r in rows], 0)
    assert b["input_ids"].shape == b["labels"].shape == b["position_ids"].shape == (2, 5)
    assert b["position_ids"][1].tolist() == [0, 1, 2, 0, 1] and b["labels"][0, 4].item() == -100
    assert b["input_ids"][0, 4].item() == 0 and "attention_mask" not in b


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_examples_never_attend_to_each_other(tok: Any, impl: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.train.batches import as_train_row, collate_sft

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=len(tok),
            attn_implementation=impl,
        )
    ).eval()
    exs = [
        T.tokenize_chat(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
        for q, a in [("Hello there", "The quick fox."), ("Two plus two?", "four"), ("card", "charged twice")]
    ]
    (row,) = T.pack_examples(exs, 200)
    batch = collate_sft([as_train_row(row)], 0)  # the collator training uses
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        ids = [ex.input_ids for ex in sorted(exs, key=len, reverse=True)]  # FFD order = packed order
        assert [len(i) for i in ids] == row.seq_lens
        start = 0
        for seq in ids:
            solo = model(input_ids=torch.tensor([seq])).logits[0]
            torch.testing.assert_close(packed[start : start + len(seq)], solo, atol=1e-5, rtol=0)
            start += len(seq)
        # the check can fail: without restarting positions the later examples see the earlier ones
        flat = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
        assert not torch.allclose(flat[-len(ids[-1]) :], solo, atol=1e-3)
        # transformers 5.24 pitfall: a KV cache (use_cache defaults to True) disables packed-mask detection
        cached = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        assert not torch.allclose(cached[-len(ids[-1]) :], solo, atol=1e-3)
