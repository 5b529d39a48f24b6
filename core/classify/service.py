"""The classifiers behind the Classify tab, loaded once and cached: zero-shot (embeddings or chat model) and
fine-tuned adapters, with explanations, batch scoring and the rows for a fine-tuning run made from corrections.

Every method returns plain values (:class:`~core.classify.Prediction`, :class:`~core.explain.Explanation`,
:class:`~core.scoring.BatchResult`); the Gradio layer renders them.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from core import adapters, store
from core import data as data_io
from core.classify.advice import Comparison, comparison_advice
from core.classify.classifiers import (
    BaseClassifier,
    ClassifyError,
    FineTunedClassifier,
    Prediction,
    is_blank,
    parse_labels,
)
from core.classify.explain import Explanation, explain_text
from core.classify.scoring import BatchResult, Metrics
from core.classify.zero_shot import SentenceEncoder, ZeroShotEmbeddingClassifier
from core.models import LoadedModel

MethodKey = Literal["embedding", "chat", "adapter"]
METHODS: dict[str, str] = {
    "embedding": "Zero-shot (MiniLM embeddings)",
    "chat": "Zero-shot (chat model likelihood)",
    "adapter": "Fine-tuned adapter",
}
"""Method key -> the name the UI shows; either form is accepted wherever a method is asked for."""
MAX_ZERO_SHOT = 64
"""Zero-shot classifiers kept per kind (one per label set: the label embeddings are the cached part)."""
MAX_ADAPTERS = 4
"""Fine-tuned classifiers kept loaded (each holds its own merged copy of its base: ~45 MB for MiniLM in bf16)."""


class ClassifyService:
    """Loads and caches classifiers; thread-safe (loads happen once under a lock, inference is read-only).

    Args:
        chat_model: returns the app's loaded chat model (the engine's ``chat_model``); called only when the
            chat-likelihood method is used.
        device, dtype: where and how the MiniLM encoder and fine-tuned classifiers run (see ``core.classify``).
    """

    def __init__(
        self,
        chat_model: Callable[[], LoadedModel],
        device: str = "auto",
        dtype: str = "auto",
        max_bytes: int = data_io.DEFAULT_MAX_BYTES,
    ) -> None:
        self._chat_model = chat_model
        self.max_bytes = max_bytes  # the server's --max-upload-mb: files the upload accepts are scored too
        self._device, self._dtype = device, dtype
        self._encoder: SentenceEncoder | None = None
        self._lock = threading.RLock()
        self._zero: OrderedDict[tuple, BaseClassifier] = OrderedDict()
        self._tuned: OrderedDict[tuple, FineTunedClassifier] = OrderedDict()

    # --- what is available ------------------------------------------------------------------------------------------

    @staticmethod
    def methods() -> dict[str, str]:
        """Method key -> display name."""
        return dict(METHODS)

    @staticmethod
    def method_key(method: str | None) -> MethodKey:
        """A method key from a key or a display name (case-insensitive); empty means 'embedding'.

        Raises:
            ClassifyError: an unknown method.
        """
        m = (method or "embedding").strip().lower()
        for key, shown in METHODS.items():
            if m in (key, shown.lower()):
                return key  # type: ignore[return-value]
        raise ClassifyError(f"Unknown method {method!r}; use one of: {', '.join(METHODS.values())}.")

    @staticmethod
    def adapters() -> list[adapters.AdapterInfo]:
        """Finished classification adapters, newest first."""
        return adapters.list_adapters("classification")

    # --- loading ----------------------------------------------------------------------------------------------------

    def encoder(self) -> SentenceEncoder:
        """The embedded MiniLM encoder, loaded on first use (concurrent first calls wait for one load)."""
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    self._encoder = SentenceEncoder.load(device=self._device, dtype=self._dtype)  # type: ignore[arg-type]
        return self._encoder

    def classifier(
        self, labels_spec: str | Sequence[str] | None, method: str | None = "embedding", adapter: str | None = None
    ) -> BaseClassifier:
        """The classifier for a method: zero-shot over ``labels_spec``, or the fine-tuned ``adapter`` (its own labels).

        Raises:
            ClassifyError: bad labels, an unknown method, no adapter named, or a broken adapter.
            core.adapters.AdapterError: no adapter of that name.
        """
        key = self.method_key(method)
        if key == "adapter":
            return self._adapter_classifier(adapter)
        labels = tuple(parse_labels(labels_spec if labels_spec is not None else ""))
        if key == "embedding":
            return self._cached(
                self._zero,
                ("embedding", labels),
                MAX_ZERO_SHOT,
                lambda: ZeroShotEmbeddingClassifier(list(labels), self.encoder()),
            )
        chat = self._chat_model()
        from core.classify.chat_likelihood import ZeroShotChatClassifier

        # Keyed by the model object too: a server restarted on another chat model gets fresh answer tokens.
        return self._cached(
            self._zero,
            ("chat", id(chat.model), labels),
            MAX_ZERO_SHOT,
            lambda: ZeroShotChatClassifier(list(labels), chat),
        )

    def _adapter_classifier(self, name: str | None) -> FineTunedClassifier:
        if not name or not str(name).strip():
            raise ClassifyError(
                "Pick a fine-tuned classification adapter (train one in the Fine-tune tab), or choose "
                "a zero-shot method."
            )
        info = adapters.get(str(name).strip())
        if info.task != "classification":
            raise ClassifyError(
                f"Adapter {info.name!r} is a {info.task} (chat) adapter; use it in the Chat tab, or "
                "pick a classification adapter."
            )
        # The weights' mtime is part of the key: retraining under the same name replaces the folder atomically,
        # and the next call loads the new adapter instead of serving the old one.
        weights = info.path / adapters.WEIGHTS
        key = (info.name, weights.stat().st_mtime_ns)
        return self._cached(
            self._tuned,
            key,
            MAX_ADAPTERS,  # type: ignore[return-value]
            lambda: FineTunedClassifier.load(info.path, device=self._device, dtype=self._dtype),
        )

    def _cached(self, cache: OrderedDict, key: tuple, limit: int, make: Callable[[], BaseClassifier]) -> BaseClassifier:
        with self._lock:  # one build per key even when two requests ask at once
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
            clf = make()
            cache[key] = clf
            while len(cache) > limit:
                cache.popitem(last=False)
            return clf

    # --- single text ------------------------------------------------------------------------------------------------

    def classify(
        self,
        text: str,
        labels_spec: str | Sequence[str] | None,
        method: str | None = "embedding",
        adapter: str | None = None,
    ) -> Prediction:
        """Classify one text (a blank text gets uniform probabilities and ``blank=True``)."""
        clf = self.classifier(labels_spec, method, adapter)
        return clf.predict([text or ""])[0]

    def classify_timed(
        self,
        text: str,
        labels_spec: str | Sequence[str] | None,
        method: str | None = "embedding",
        adapter: str | None = None,
    ) -> tuple[Prediction, str, float]:
        """:meth:`classify` plus the classifier's method line and the inference seconds (loading excluded)."""
        clf = self.classifier(labels_spec, method, adapter)
        start = time.perf_counter()
        pred = clf.predict([text or ""])[0]
        return pred, clf.method, time.perf_counter() - start

    def explain(
        self,
        text: str,
        labels_spec: str | Sequence[str] | None,
        method: str | None = "embedding",
        adapter: str | None = None,
        target_label: str | None = None,
    ) -> Explanation:
        """Word attributions (occlusion) for the predicted label, or ``target_label``; see :mod:`core.explain`."""
        clf = self.classifier(labels_spec, method, adapter)
        return explain_text(clf, text or "", target_label or None)

    # --- files ------------------------------------------------------------------------------------------------------

    @staticmethod
    def file_columns(
        path: str | Path, max_bytes: int = data_io.DEFAULT_MAX_BYTES
    ) -> tuple[list[str], str | None, str | None]:
        """(columns, guessed text column, guessed label column) of a CSV/TSV/JSON/JSONL file.

        The text guess is a known alias (text, sentence, ...), else the column with the longest cells; the label
        guess is a known alias (label, intent, ...) or None.

        Raises:
            core.data.DataError: unreadable file (not UTF-8, bad JSON, too big, ...).
        """
        table = data_io.read_table(path, max_bytes=max_bytes)
        return (list(table.columns), *_guess_columns(table))

    def score_file(
        self,
        path: str | Path,
        text_column: str | None,
        label_column: str | None,
        labels_spec: str | Sequence[str] | None,
        method: str | None = "embedding",
        adapter: str | None = None,
        progress: Callable[[float], None] | None = None,
        max_bytes: int | None = None,
    ) -> BatchResult:
        """Score every row of a file; one output row per input row, in order; metrics when a label column is given.

        Raises:
            core.data.DataError: unreadable file; ClassifyError: a column that does not exist, bad labels.
        """
        # The file first: a refused upload must not wait for a model to load.
        table = data_io.read_table(path, max_bytes=self.max_bytes if max_bytes is None else max_bytes)
        clf = self.classifier(labels_spec, method, adapter)
        if not table.rows:
            raise ClassifyError(f"{Path(path).name} has a header but no rows to score.")
        text_column = (text_column or "").strip() or None
        label_column = (label_column or "").strip() or None
        if text_column is None:
            text_column = _guess_columns(table)[0]
        for role, col in (("text", text_column), ("label", label_column)):
            if col is not None and col not in table.columns:
                raise ClassifyError(
                    f"The {role} column {col!r} is not in {Path(path).name}; its columns are: "
                    f"{', '.join(table.columns)}."
                )
        from core.classify.scoring import score_table

        return score_table(clf, table.rows, str(text_column), label_column, progress)

    @staticmethod
    def write_csv(result: BatchResult, path: str | Path) -> Path:
        """Write a scored table as UTF-8 CSV that is safe to open in a spreadsheet (formula cells escaped)."""
        from core.classify.scoring import write_csv

        return write_csv(result, path)

    def compare(
        self,
        path: str | Path,
        text_column: str | None,
        label_column: str,
        labels_spec: str | None,
        adapter: str,
        progress: Callable[[float], None] | None = None,
        max_bytes: int | None = None,
    ) -> list[tuple[str, Metrics]]:
        """Score the same labelled file with zero-shot (embeddings) and with ``adapter``; (method line, metrics) each.

        Raises:
            ClassifyError: no label column (nothing to compare against), or what :meth:`score_file` raises.
        """
        if not (label_column or "").strip():
            raise ClassifyError("Comparing needs the true labels: pick the file's label column.")
        out: list[tuple[str, Metrics]] = []
        for i, (method, name) in enumerate((("embedding", None), ("adapter", adapter))):

            def part(f: float, i: int = i) -> None:
                if progress:
                    progress((i + f) / 2)

            result = self.score_file(path, text_column, label_column, labels_spec, method, name, part, max_bytes)
            assert result.metrics is not None  # a label column was given
            out.append((self.classifier(labels_spec, method, name).method, result.metrics))
        return out

    def compare_report(
        self,
        path: str | Path,
        text_column: str | None,
        label_column: str,
        labels_spec: str | None,
        adapter: str,
        progress: Callable[[float], None] | None = None,
        max_bytes: int | None = None,
    ) -> Comparison:
        """:meth:`compare` plus advice for the UI: which method to keep, and why (e.g. too few rows per class).

        Raises:
            ClassifyError: what :meth:`compare` raises.
        """
        results = self.compare(path, text_column, label_column, labels_spec, adapter, progress, max_bytes)
        card = self._adapter_classifier(adapter).card
        advice, zero_better = comparison_advice(results[0][1], results[1][1], card)
        return Comparison(results, advice, zero_better)

    # --- the ladder: corrections -> training data ---------------------------------------------------------------------

    @staticmethod
    def save_corrections(texts: Sequence[str | None], labels: Sequence[str | None], name: str) -> tuple[Path, int]:
        """Write (text, label) rows to ``uploads/<safe name>.csv`` under the home (atomically); returns (path, rows).

        Rows with an empty text or label are left out.

        Raises:
            ClassifyError: different lengths, fewer than 2 usable rows, or fewer than 2 distinct labels.
        """
        if len(texts) != len(labels):
            raise ClassifyError(f"{len(texts)} texts but {len(labels)} corrected labels.")
        rows = [(str(t), str(lb).strip()) for t, lb in zip(texts, labels) if not is_blank(t) and not is_blank(lb)]
        distinct = sorted({lb for _, lb in rows})
        if len(rows) < 2 or len(distinct) < 2:
            raise ClassifyError(
                f"Fine-tuning needs at least 2 rows with a text and a corrected label, and at "
                f"least 2 different labels (got {len(rows)} row(s), labels: "
                f"{', '.join(distinct) or 'none'})."
            )
        buf = io.StringIO(newline="")
        writer = csv.writer(buf)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path = store.subdir("uploads") / f"{store.safe_name(f'corrections-{name}-{stamp}')}.csv"
        store.atomic_write_text(path, buf.getvalue())
        return path, len(rows)


def _guess_columns(table: data_io.RawTable) -> tuple[str | None, str | None]:
    """(text column, label column): known aliases first; else the text is the column with the longest cells."""
    by_lower = {c.lower(): c for c in table.columns}
    text = next((by_lower[a] for a in data_io.ALIASES["text"] if a in by_lower), None)
    label = next((by_lower[a] for a in data_io.ALIASES["label"] if a in by_lower and by_lower[a] != text), None)
    if text is None and table.columns:
        sample = table.rows[:200]
        text = max(
            (c for c in table.columns if c != label),
            key=lambda c: sum(len(str(r.get(c) or "")) for r in sample),
            default=None,
        )
    return text, label
