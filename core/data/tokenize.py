"""Tokenisation for chat SFT (loss on assistant tokens only) and classification, and sequence packing.

Kept apart from :mod:`core.data` (reading and validation) so the training loop can import it on its own.
Nothing here raises ``DataError``: rows reaching this module have been validated; a ``ValueError`` here is a bug
in the caller (e.g. an example longer than the packing length).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100
"""Label value that the HF loss functions skip."""

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML, for tokenizers that know ``<|im_start|>``/``<|im_end|>`` (or know no end-of-sequence token)."""

ROLE_TAG_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
"""Fallback for base models without ChatML tokens: each turn ends with EOS, so ``generate()`` stops by itself
(the ChatML markers would be several ordinary tokens there and never stop generation)."""


@dataclass
class TokenizedExample:
    """One causal-LM example; ``labels`` align with ``input_ids`` (the model shifts them internally)."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class EncodedText:
    """One classification example: token ids (already truncated) and the label id."""

    input_ids: list[int]
    label: int


@dataclass
class PackedRow:
    """Several examples in one row; ``position_ids`` restart at 0 at each example so attention stays inside it."""

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    seq_lens: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give ``tokenizer`` a chat template when it has none; returns True when one was set.

    ChatML when the vocabulary has ``<|im_start|>`` and ``<|im_end|>`` (or no EOS exists); otherwise
    :data:`ROLE_TAG_TEMPLATE`, whose turns end with EOS. Save the tokenizer with the adapter so chat uses the same.
    """
    if tokenizer.chat_template:
        return False
    vocab = tokenizer.get_vocab()
    has_chatml = "<|im_start|>" in vocab and "<|im_end|>" in vocab
    tokenizer.chat_template = CHATML_TEMPLATE if has_chatml or tokenizer.eos_token is None else ROLE_TAG_TEMPLATE
    return True


def tokenize_chat(tokenizer: Any, messages: Sequence[dict[str, str]]) -> TokenizedExample:
    """Render ``messages`` with the tokenizer's chat template; label only what the assistant must produce.

    Labels are -100 except each assistant message's content and the template text after it up to and including
    the first special token (the end-of-turn, e.g. ``<|im_end|>``), so the model learns to stop. Spans come from
    rendering the conversation incrementally: the text before assistant turn *i* is
    ``render(messages[:i], add_generation_prompt=True)`` and the turn ends at ``render(messages[:i + 1])``.
    Templates that are not prefix-stable fall back to finding the content in the full rendering.

    Raises:
        ValueError: the tokenizer has no chat template (call :func:`ensure_chat_template`), or an assistant
            turn cannot be located in the rendering.
    """
    if not tokenizer.chat_template:
        raise ValueError("The tokenizer has no chat template; call ensure_chat_template(tokenizer) first.")
    messages = list(messages)
    full = _render(tokenizer, messages, generation_prompt=False)
    ids, to_start, to_end = _char_index(tokenizer, full)
    special = _special_ids(tokenizer)
    labels = [IGNORE_INDEX] * len(ids)
    cursor = 0  # fallback search position: after the previous message's content
    for i, msg in enumerate(messages):
        content = msg["content"].strip()
        span = _prefix_span(tokenizer, messages, i, full) if msg["role"] == "assistant" else None
        lo = span[0] if span else cursor
        found = full.find(content, lo) if content else -1
        if found >= 0 and (span is None or found + len(content) <= span[1]):
            cursor = found + len(content)
        if msg["role"] != "assistant":
            continue
        if span is None and found < 0:
            raise ValueError(f"Cannot find assistant turn {i} in the chat template's rendering.")
        # content range: where the (possibly trimmed) content sits; if the template rewrote it, label from the
        # span start through the end-of-turn token
        cs, ce = (found, found + len(content)) if found >= 0 else (span[0], span[0])  # type: ignore[index]
        a, b = to_start(cs), to_end(ce)
        z = to_end(span[1]) if span else min(b + 1, len(ids))
        labels[a:b] = ids[a:b]
        for k in range(b, z):  # template glue up to and including the end-of-turn token
            if span is None and ids[k] not in special:
                break
            labels[k] = ids[k]
            if ids[k] in special:
                break
    if labels:
        labels[0] = IGNORE_INDEX  # never predicted from a previous example when packed
    return TokenizedExample(ids, labels)


def tokenize_text(tokenizer: Any, text: str) -> TokenizedExample:
    """Plain-text SFT: every token is trained, and EOS is appended so the model learns where a text ends."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return TokenizedExample(ids, [IGNORE_INDEX] + ids[1:])


def encode_classification(
    tokenizer: Any, texts: Sequence[str], label_ids: Sequence[int], max_length: int | None
) -> tuple[list[EncodedText], list[int]]:
    """Tokenise texts (with the tokenizer's special tokens), truncating to ``max_length``.

    Returns:
        The encoded examples and each text's full, untruncated length (for the report's percentiles).
    """
    full = tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
    out = []
    for text, ids, label in zip(texts, full, label_ids, strict=True):
        if max_length is not None and len(ids) > max_length:
            # re-tokenise rather than slice, so closing special tokens (e.g. [SEP]) are kept
            ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        out.append(EncodedText(list(ids), int(label)))
    return out, [len(ids) for ids in full]


def pack_examples(examples: Sequence[TokenizedExample], max_length: int) -> list[PackedRow]:
    """First-fit-decreasing bin packing of examples into rows of at most ``max_length`` tokens.

    Each row restarts ``position_ids`` at 0 per example; with ``attention_mask=None`` (and no KV cache)
    transformers builds a block-diagonal causal mask from them, so examples never attend to each other.
    The first label of every example is forced to -100: the shifted loss would otherwise predict it from the
    previous example's last token.

    Raises:
        ValueError: an example is longer than ``max_length`` (drop those before packing).
    """
    too_long = [i for i, e in enumerate(examples) if len(e) > max_length]
    if too_long:
        raise ValueError(
            f"{len(too_long)} example(s) longer than max_length={max_length} (first: index "
            f"{too_long[0]}, {len(examples[too_long[0]])} tokens); drop them before packing."
        )
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i))  # index tie-break: deterministic
    rows: list[PackedRow] = []
    free: list[int] = []  # free[j] = room left in rows[j]
    for i in order:
        ex = examples[i]
        n = len(ex)
        if n == 0:
            continue
        j = next((j for j, room in enumerate(free) if room >= n), None)
        if j is None:
            rows.append(PackedRow())
            free.append(max_length)
            j = len(rows) - 1
        row = rows[j]
        row.input_ids += ex.input_ids
        row.labels += [IGNORE_INDEX] + ex.labels[1:]
        row.position_ids += range(n)
        row.seq_lens.append(n)
        free[j] -= n
    return rows


# ---------------------------------------------------------------- helpers


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _prefix_span(tokenizer: Any, messages: list[dict[str, str]], i: int, full: str) -> tuple[int, int] | None:
    """Character span of assistant turn ``i`` (after its header, through its closing text), if prefix-stable."""
    try:
        before = _render(tokenizer, messages[:i], generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1], generation_prompt=False)
    except Exception:  # noqa: BLE001 - some templates reject partial conversations; use the fallback
        return None
    if full.startswith(through) and through.startswith(before) and len(through) > len(before):
        return len(before), len(through)
    return None


def _char_index(tokenizer: Any, text: str) -> tuple[list[int], Callable[[int], int], Callable[[int], int]]:
    """Token ids of ``text`` and two maps from a character position to a token index.

    ``to_start(c)``: first token that ends after ``c`` (a token straddling ``c`` is included);
    ``to_end(c)``: number of tokens that start before ``c``. Slow tokenizers have no offsets, so they
    tokenise the prefix instead (exact for the boundaries templates produce, e.g. after a newline).
    """
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        starts = [s for s, _ in enc["offset_mapping"]]
        ends = [e for _, e in enc["offset_mapping"]]
        return list(enc["input_ids"]), lambda c: bisect.bisect_right(ends, c), lambda c: bisect.bisect_left(starts, c)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def prefix_len(c: int) -> int:
        return len(tokenizer(text[:c], add_special_tokens=False)["input_ids"])

    return ids, prefix_len, prefix_len


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False))
    return ids
