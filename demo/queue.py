"""The one queue every model-running listener joins (chat, compare, arena, classify, merge, run cards).

Gradio limits concurrency per ``concurrency_id``: sharing one id puts every model call behind one limit, so a
classification never competes with a chat reply for the 2 cores beyond what the engine can batch.
"""

from __future__ import annotations

import gradio as gr

MODEL_QUEUE = "model"
"""concurrency_id shared by every listener that runs a model."""


def open_queue(app: gr.Blocks, queue_size: int, concurrency: int) -> None:
    """Turn on the app's bounded queue: beyond ``queue_size`` waiting requests Gradio answers "queue is full" at once
    instead of letting visitors wait forever, and each visitor sees their position and an estimate.

    ``api_open=False``: Gradio leaves its direct POST route (``/run/<name>``) open outside Spaces, and a call there runs
    a queued event at once, past the queue and its concurrency limits; a visitor's script could then put any number
    of replies on the 2 cores beside everyone's queued ones. Shut, every queued event goes through the queue, from
    the page, gradio_client and the MCP server alike; unqueued events (Stop, Undo) still use ``/run/predict``.
    """
    app.queue(max_size=queue_size, default_concurrency_limit=concurrency, api_open=False)
