"""The one queue every model-running listener joins (chat, compare, arena, classify, merge, run cards).

Gradio limits concurrency per ``concurrency_id``: sharing one id puts every model call behind one limit, so a
classification never competes with a chat reply for the 2 cores beyond what the engine can batch.
"""

from __future__ import annotations

MODEL_QUEUE = "model"
"""concurrency_id shared by every listener that runs a model."""
