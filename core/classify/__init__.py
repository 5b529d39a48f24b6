"""Text classification: zero-shot and fine-tuned classifiers, explanations, batch scoring, and the service the
Classify tab talks to through the engine."""

from core.classify.classifiers import BaseClassifier, FineTunedClassifier, Prediction
from core.classify.zero_shot import ZeroShotEmbeddingClassifier
from core.errors import ClassifyError

__all__ = ["BaseClassifier", "ClassifyError", "FineTunedClassifier", "Prediction", "ZeroShotEmbeddingClassifier"]
