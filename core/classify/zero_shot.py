"""Zero-shot classification by sentence embeddings: a sentence-transformers style encoder (MiniLM by default),
label vectors from prompt ensembles and vocabulary expansion, softmax over cosines with a calibrated temperature.

Measured in ``tests/bench/bench_classify.py`` (dev slices chose the settings; held-out rows report them): with bare
label names, 1,000 held-out SST-2 sentences 0.692 accuracy (one template, no expansion: 0.665; with one-line
descriptions: 0.721) and Banking77 0.619 (0.615). Centring on a reference set, content-free calibration, chunking
long texts, token-level matching and removing top principal components were tried on the dev slices and gained
nothing; MiniLM's mean-pooled embeddings carry topic far more than polarity, so sentiment stays hard zero-shot: a
*supervised* logistic regression on the same vectors, trained on 500 labelled SST-2 dev sentences, reaches only
0.751 on the held-out ones (the bench's linear-probe ceiling).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.classify.classifiers import (
    DEFAULT_BATCH_SIZE,
    BaseClassifier,
    DType,
    Progress,
    _run_batched,
    parse_labels,
    pick_inference_dtype,
)
from core.errors import ClassifyError
from core.models import ModelError, embedded_encoder_path, pick_device

DEFAULT_TEMPERATURE = 0.05
"""Softmax temperature over cosines for :class:`ZeroShotEmbeddingClassifier`. ``tests/bench/bench_classify.py``
fits it on a hand-written 40-sentence, 4-topic set (its ``calibration`` part; no shared data). Re-fitted after the
template ensemble and label expansion changed the label vectors: the NLL-optimal T is still 0.045 (bf16; grid
0.01..0.3), with NLL 0.1946 at 0.05 vs 0.1913 at the optimum. We keep the round, slightly softer 0.05: it is less
over-confident on domains unlike the calibration set. MiniLM cosines of the right label sit ~0.1-0.3 above the
wrong ones, so a 0.1 gap becomes e^2 = 7.4x odds."""
DEFAULT_TEMPLATE = "This text is about {label}."
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "{label}",
    DEFAULT_TEMPLATE,
    "This is {label}.",
    "It is {label}.",
    "A text about {label}.",
)
"""Prompts a label name is embedded in; their unit embeddings are averaged (a prompt ensemble). One template
reads a label as a topic ('about {label}'), others as a property ('It is {label}.'), so the average is less tied
to one reading. Chosen on dev slices (SST-2 sentences, Banking77, never the held-out rows): see the bench."""
EXPANSION_WORDS = 50
"""Vocabulary words added to each label's vector (0 turns expansion off); see :meth:`SentenceEncoder.vocabulary`."""
EXPANSION_WEIGHT = 0.35
"""Weight of the expansion words' mean against the label prompts' mean (both unit vectors)."""
VOCABULARY_SIZE = 3000
"""How many of the tokenizer's whole-word entries (in vocabulary order: roughly by frequency for WordPiece) are
embedded once per encoder as candidates for label expansion (~3,000 one-word texts: 7 s measured on 2 cores
oversubscribed ~5x; an estimated 1.5-2 s on idle ones)."""


def label_prompt(name: str, description: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The text a label is embedded as: its description, else the template filled with the name.

    Underscores and dashes in names become spaces (``card_arrival`` -> ``card arrival``) so the encoder reads words.
    """
    if description:
        return description
    return template.format(label=name.replace("_", " ").replace("-", " ").strip())


def label_prompts(name: str, description: str, templates: Sequence[str] = DEFAULT_TEMPLATES) -> list[str]:
    """Every prompt a label is embedded as: its description alone when it has one (the user's own words),
    else the name in each template."""
    if description:
        return [description]
    return [label_prompt(name, "", t) for t in templates]


# --- encoder ----------------------------------------------------------------------------------------------------------


class SentenceEncoder:
    """A sentence-transformers style encoder: BERT -> mean over real tokens -> L2 normalise.

    all-MiniLM-L6-v2's ``modules.json`` is Transformer -> Pooling (``pooling_mode_mean_tokens``) -> Normalize,
    with ``max_seq_length`` 256 in ``sentence_bert_config.json`` (BERT's positions would allow 512, but the
    model was trained on shorter inputs); both are read from the folder when present.
    """

    def __init__(
        self, model: Any, tokenizer: Any, max_length: int, name: str, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> None:
        self.model, self.tokenizer, self.max_length, self.name = model, tokenizer, max_length, name
        self.batch_size = batch_size
        self._vocabulary: tuple[int, list[str], torch.Tensor] | None = None  # (size asked, words, vectors)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "auto", dtype: DType = "auto") -> SentenceEncoder:
        """Load an encoder folder (default: the embedded all-MiniLM-L6-v2), safetensors only, no remote code."""
        from transformers import AutoModel, AutoTokenizer

        folder = Path(path) if path is not None else embedded_encoder_path()
        if not any(folder.glob("*.safetensors")):
            raise ModelError(f"{folder} has no *.safetensors weights; DemoForge loads safetensors only.")
        pooling = folder / "1_Pooling" / "config.json"
        if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", True):
            raise ModelError(f"{folder} uses a pooling other than mean tokens; only mean pooling is implemented.")
        dev = pick_device(device)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        model = AutoModel.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
        model = model.to(dev, pick_inference_dtype(dtype, dev)).eval()
        return cls(model, tokenizer, _max_length(folder, model, tokenizer), folder.name if path else "all-MiniLM-L6-v2")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def embed(
        self, texts: Sequence[str], progress: Progress | None = None, batch_size: int | None = None
    ) -> torch.Tensor:
        """(n, hidden) fp32 unit vectors, in input order; texts over ``max_length`` tokens are truncated."""
        return _run_batched(self, list(texts), self._embed_batch, progress, batch_size or self.batch_size)

    def vocabulary(self, size: int = VOCABULARY_SIZE) -> tuple[list[str], torch.Tensor]:
        """The tokenizer's first ``size`` whole words (letters only, 3+ characters, in vocabulary order) and their
        (n, hidden) unit embeddings as one-word texts; computed once per encoder, for label expansion."""
        if self._vocabulary is None or self._vocabulary[0] < size:
            seen: set[str] = set()
            words: list[str] = []
            for token, _ in sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
                word = token.lstrip("\u0120\u2581")  # byte-level BPE / SentencePiece space marks
                if word.isalpha() and len(word) > 2 and word.lower() not in seen:
                    seen.add(word.lower())
                    words.append(word)
                if len(words) >= size:
                    break
            # one-word texts are 3 tokens long: big batches cost no padding and run ~1.4x faster than 32
            vectors = self.embed(words, batch_size=256) if words else torch.empty(0, 0)
            self._vocabulary = (size, words, vectors)
        _, words, vectors = self._vocabulary
        return words[:size], vectors[:size]

    def _embed_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.model(**batch).last_hidden_state.float()  # (batch, seq, hidden); pool in fp32
        mask = batch["attention_mask"].unsqueeze(-1).float()  # (batch, seq, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)


def _max_length(folder: Path, model: Any, tokenizer: Any) -> int:
    limits = [int(getattr(model.config, "max_position_embeddings", 0) or 0) or 512]
    st = folder / "sentence_bert_config.json"
    if st.is_file():
        limits.append(int(json.loads(st.read_text()).get("max_seq_length") or limits[0]))
    if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        limits.append(int(tokenizer.model_max_length))
    return min(limits)


# --- classifier -------------------------------------------------------------------------------------------------------


class ZeroShotEmbeddingClassifier(BaseClassifier):
    """Zero-shot by cosine similarity between the text and each label's vector.

    A label's vector is the mean of its prompts' unit embeddings (its description, else its name in each of
    ``templates``), plus, with ``expand`` > 0, the mean embedding of the ``expand`` vocabulary words that sit
    closest to this label rather than to any other (by the margin cos(word, label) - max cos(word, other label)):
    label expansion, which gives a bare name such as 'positive' its near-synonyms ('favorable', 'praise', ...),
    from the encoder itself, for labels of any domain.

    probability = softmax(cosine / temperature) over the labels.
    """

    def __init__(
        self,
        labels: str | Sequence[str] | Sequence[tuple[str, str]],
        encoder: SentenceEncoder | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        template: str | Sequence[str] = DEFAULT_TEMPLATES,
        expand: int = EXPANSION_WORDS,
        expand_weight: float = EXPANSION_WEIGHT,
    ) -> None:
        """Args:
        labels: user-typed labels, see :func:`parse_labels`.
        encoder: a loaded :class:`SentenceEncoder` (load once, reuse across label sets); default: MiniLM.
        temperature: softmax temperature over cosines (> 0); see :data:`DEFAULT_TEMPERATURE`.
        template: one template or several (averaged) for labels without a description; each must contain
            ``{label}``. See :data:`DEFAULT_TEMPLATES`.
        expand: vocabulary words added per label (0: none); see :data:`EXPANSION_WORDS`.
        expand_weight: weight of the expansion words against the prompts (>= 0).
        """
        if not temperature > 0:
            raise ClassifyError(f"temperature must be > 0, got {temperature}.")
        templates = [template] if isinstance(template, str) else list(template)
        bad = [t for t in templates if "{label}" not in t]
        if not templates or bad:
            raise ClassifyError(f"Every template must contain '{{label}}', got {bad or templates!r}.")
        if expand < 0 or expand_weight < 0:
            raise ClassifyError(f"expand ({expand}) and expand_weight ({expand_weight}) must be >= 0.")
        self.label_specs = parse_labels(labels)
        self.labels = [name for name, _ in self.label_specs]
        self.encoder = encoder or SentenceEncoder.load()
        self.temperature = temperature
        self.prompts = [label_prompts(n, d, templates) for n, d in self.label_specs]
        self.expansions: dict[str, list[str]] = {}
        """Label -> the vocabulary words added to its vector (empty without expansion)."""
        self.label_vectors = self._label_vectors(expand, expand_weight)  # (n_labels, hidden)
        self.batch_size = self.encoder.batch_size
        self.method = f"zero-shot · cosine to label descriptions ({self.encoder.name}, T={temperature:g})"

    def _label_vectors(self, expand: int, weight: float) -> torch.Tensor:
        flat = [p for prompts in self.prompts for p in prompts]
        vecs = self.encoder.embed(flat)  # (all prompts, hidden), one batched pass
        bounds = [0]
        for prompts in self.prompts:
            bounds.append(bounds[-1] + len(prompts))
        labels = torch.stack([F.normalize(vecs[a:b].mean(0), dim=-1) for a, b in zip(bounds, bounds[1:])])
        if not (expand and weight):
            return labels
        words, vocab = self.encoder.vocabulary()
        if len(words) < expand:  # a tiny vocabulary has nothing to expand with
            return labels
        sims = vocab @ labels.T  # (words, labels)
        out = []
        for j, name in enumerate(self.labels):
            others = torch.cat([sims[:, :j], sims[:, j + 1 :]], dim=1).max(dim=1).values
            top = (sims[:, j] - others).topk(expand).indices  # words nearer this label than any other
            self.expansions[name] = [words[i] for i in top.tolist()]
            out.append(F.normalize(labels[j] + weight * F.normalize(vocab[top].mean(0), dim=-1), dim=-1))
        return torch.stack(out)

    def cosines(
        self, texts: Sequence[str], progress: Progress | None = None, batch_size: int | None = None
    ) -> torch.Tensor:
        """(n, n_labels) cosine similarities (for calibration and inspection)."""
        return self.encoder.embed(texts, progress, batch_size or self.batch_size) @ self.label_vectors.T

    def _scores(self, texts: list[str], progress: Progress | None, batch_size: int) -> torch.Tensor:
        return torch.softmax(self.cosines(texts, progress, batch_size) / self.temperature, dim=-1)


def fit_temperature(
    cosines: torch.Tensor, gold: Sequence[int], grid: Sequence[float] = tuple(i / 100 for i in range(1, 21))
) -> tuple[float, float]:
    """The grid temperature with the lowest mean NLL of ``gold`` under softmax(cosines / T); returns (T, NLL)."""
    target = torch.tensor(list(gold))
    scored = [(float(F.cross_entropy(cosines / t, target)), t) for t in grid]
    nll, best = min(scored)
    return best, nll
