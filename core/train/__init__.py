"""LoRA fine-tuning: the worker (``python -m core.train``), its method code, and the jobs that run it.

Modules: ``runner`` orchestrates one run (plan, loop, finish); ``loop`` runs its steps; the method code is in
``model`` (precision, peft model, tokenizer), ``batches`` (data, batches, losses), ``evaluate``, ``checkpoint`` and
``plan`` (learning-rate schedule, time budget); ``events`` writes what a worker reports; ``jobs`` starts, follows
and stops worker processes; ``progress`` turns a run's events into plain values; ``samples`` lists the bundled
datasets; ``service`` is the engine's door.
Only the job side is re-exported: it imports no torch, so the server can manage runs without loading a model.
"""

from core.train.jobs import JobManager, RunInfo, new_run_id

__all__ = ["JobManager", "RunInfo", "new_run_id"]
