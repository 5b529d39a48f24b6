"""Dataclass configs: built by the UI from widget values and by the CLI from YAML, validated in __post_init__."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from core.checks import ASSETS  # noqa: F401 - re-exported: samples and tests use core.config.ASSETS
from core.checks import check_range as _check_range
from core.checks import known_keys as _known_keys
from core.errors import ConfigError
from core.profiles import AUDIENCE_TABS, DemoProfile  # noqa: F401 - AUDIENCE_TABS re-exported for the UI

DType = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Mode = Literal["auto", "audience", "builder"]


@dataclass
class GenerationSettings:
    """Sampling settings for one reply."""

    temperature: float = 0.7
    """0 means greedy decoding; higher is more random (at most 2)."""
    top_p: float = 0.9
    """Nucleus sampling: keep the smallest set of tokens whose probability adds up to this."""
    top_k: int = 50
    """Keep only the k most likely tokens (0 turns the filter off)."""
    max_new_tokens: int = 256
    """Upper bound on the reply's length in tokens."""
    repetition_penalty: float = 1.1
    """>1 discourages repeating tokens already in the context (1 turns it off)."""
    seed: int | None = None
    """Fixes the sampling randomness for a reproducible reply; None draws a fresh seed."""

    def __post_init__(self) -> None:
        _check_range("temperature", self.temperature, 0.0, 2.0)
        _check_range("top_p", self.top_p, 0.01, 1.0)
        _check_range("top_k", self.top_k, 0, 1000)
        _check_range("max_new_tokens", self.max_new_tokens, 1, 8192)
        _check_range("repetition_penalty", self.repetition_penalty, 0.5, 2.0)
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"seed={self.seed} must be a non-negative integer (or empty for a random seed).")

    @property
    def greedy(self) -> bool:
        """Temperature 0 means deterministic argmax decoding."""
        return self.temperature == 0.0


@dataclass
class AppConfig:
    """Everything ``app.py`` needs to build and launch the app."""

    model: str = "default"
    """Chat model spec: 'default' (embedded SmolLM2), a Hub id, a local folder or a .gguf file."""
    dtype: DType = "auto"
    """Model precision; 'auto' picks bf16 on CUDA and on CPUs with native bf16, else fp32."""
    device: Device = "auto"
    """Where the model runs; 'auto' picks CUDA when present."""
    host: str = "127.0.0.1"
    """Interface to listen on (0.0.0.0 to serve the network)."""
    port: int = 7860
    """TCP port."""
    profile: DemoProfile = field(default_factory=DemoProfile)
    """Branding, system prompt and examples."""
    share: bool = False
    """Create a public Gradio share link (requires auth)."""
    auth: tuple[str, str] | None = None
    """(user, password) required to open the app (the audience's password in audience mode)."""
    builder_auth: tuple[str, str] | None = None
    """(user, password) of the builder in audience mode (``DEMOFORGE_BUILDER_AUTH``); without it the builder app
    is not served at all."""
    mode: Mode = "auto"
    """'builder': everything at /; 'audience': the profile's view at / and the builder at /builder;
    'auto': audience with --share or on a Space, else builder."""
    queue_size: int = 16
    """Requests waiting beyond this are refused with a clear 'busy' message."""
    concurrency: int = 1
    """Model calls that run at once (1 on CPU; raise on a GPU)."""
    max_upload_mb: int = 50
    """Largest accepted upload, in MiB (2**20 bytes); training workers and file scoring read with the same limit."""
    engine: Literal["auto", "transformers", "llamacpp"] = "auto"
    """Chat engine: 'llamacpp' (fast, CPU, GGUF models), 'transformers' (the reference), or 'auto' (llama.cpp
    where it is installed and the model is a GGUF, else transformers; the model label says which and why)."""
    backend: Literal["local", "openai"] = "local"
    """Where chat runs: 'local' (``engine``, in this process) or 'openai' (a remote OpenAI-compatible server:
    vLLM, TGI, llama.cpp's server, Ollama). Classification and training stay local either way."""
    base_url: str | None = None
    """backend 'openai': the server's API root, e.g. http://127.0.0.1:8000/v1."""
    api_key: str | None = field(default=None, repr=False)
    """backend 'openai': the server's key (``--api-key`` or ``DEMOFORGE_API_KEY``); never logged or shown."""
    served_model: str | None = None
    """backend 'openai': the served model to chat with; None: the first the server lists (the builder can switch)."""
    context_length: int = 2048
    """backend 'openai': the served model's context window when the server does not state it in /v1/models
    (vLLM and llama.cpp's llama-server do); old turns are trimmed to fit it."""

    def __post_init__(self) -> None:
        _check_range("port", self.port, 1, 65535)
        _check_range("queue_size", self.queue_size, 1, 10_000)
        _check_range("concurrency", self.concurrency, 1, 64)
        _check_range("max_upload_mb", self.max_upload_mb, 1, 10_000)
        if self.mode not in ("auto", "audience", "builder"):
            raise ConfigError(f"mode={self.mode!r}: use 'auto', 'audience' or 'builder'.")
        if self.builder_auth is not None and self.builder_auth == self.auth:
            raise ConfigError(
                "DEMOFORGE_BUILDER_AUTH must differ from the audience's DEMOFORGE_AUTH: anyone with the audience "
                "password could otherwise sign in as builder."
            )
        if self.engine not in ("auto", "transformers", "llamacpp"):
            raise ConfigError(f"engine={self.engine!r}: use 'auto', 'transformers' or 'llamacpp'.")
        if self.backend not in ("local", "openai"):
            raise ConfigError(f"backend={self.backend!r}: use 'local' or 'openai'.")
        _check_range("context_length", self.context_length, 64, 10_000_000)
        if self.backend == "openai" and not (self.base_url or "").startswith(("http://", "https://")):
            raise ConfigError(
                f"--backend openai needs --base-url, the server's API root (got {self.base_url!r}; e.g. "
                "http://127.0.0.1:8000/v1 for vLLM, http://127.0.0.1:11434/v1 for Ollama)."
            )
        if self.share and self.auth is None:
            raise ConfigError(
                "--share makes the app public: set --auth user:password (or DEMOFORGE_AUTH) so strangers "
                "cannot use your model and machine."
            )

    @property
    def audience_default(self) -> bool:
        """Whether visitors at / get the audience view: asked for, or --share / a Space with mode 'auto'."""
        if self.mode != "auto":
            return self.mode == "audience"
        return self.share or bool(os.environ.get("SPACE_ID"))


def parse_auth(value: str | None, env: str = "DEMOFORGE_AUTH") -> tuple[str, str] | None:
    """Parse 'user:password' (from a flag or the environment variable ``env``); None when unset."""
    value = value if value is not None else os.environ.get(env)
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigError(f"{env} / auth must look like user:password, with both parts non-empty.")
    return user, password


# --- Training (LoRA fine-tuning) -------------------------------------------------------------------------------------

TrainTask = Literal["sft", "classification"]
Precision = Literal["auto", "fp32", "bf16"]
Scheduler = Literal["cosine", "linear"]
PoolingChoice = Literal["auto", "cls", "mean"]


TASK_DEFAULTS: dict[str, dict[str, float | int]] = {
    "sft": {"epochs": 10, "lr": 1e-3, "max_length": 256, "batch_size": 2},
    "classification": {"epochs": 5, "lr": 1e-3, "max_length": 128, "batch_size": 16},
}
"""Training defaults per task, in one place for the CLI, the Fine-tune tab and the benchmarks: tuned for a visible
change within a few minutes on 2 CPU cores (many small optimizer steps; epochs is an upper bound that a time
budget cuts)."""

FULL_FINETUNE_LR = 1e-4
"""lr for ``full_finetune`` when none is given: every pretrained weight moves, so LoRA's 1e-3 is far too high (the
usual BERT fine-tuning range is 2e-5..1e-4; the top of it, for short time budgets)."""


@dataclass
class LoraSettings:
    """The LoRA adapter's shape (peft ``LoraConfig``)."""

    r: int = 16
    """Rank of the low-rank update; higher learns more and costs more (typical 4-64)."""
    alpha: int = 32
    """Scaling numerator: the update is scaled by alpha / r (commonly 2 x r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input during training (0 turns it off, as in peft's own default). Off by default because
    on CPU it is the single most expensive part of a LoRA step: drawing a fresh mask over every adapted layer's
    input made SmolLM2 SFT 1.7x slower (203 vs 349 tokens/s at 0.05, bench_train_sft.py's data); a few-minute run
    gains little from its regularisation."""
    target_modules: str | list[str] = "all-linear"
    """Which layers get adapters: 'all-linear' (every linear layer except the output head) or a list of names."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora.r={self.r!r} must be a positive integer (try 8 or 16).")
        _check_range("lora.r", self.r, 1, 1024)
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha={self.alpha!r} must be positive (commonly 2 x r).")
        _check_range("lora.dropout", self.dropout, 0.0, 0.9)
        if isinstance(self.target_modules, str):
            if not self.target_modules.strip():
                raise ConfigError("lora.target_modules must be 'all-linear' or a non-empty list of module names.")
        elif not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise ConfigError("lora.target_modules must be 'all-linear' or a non-empty list of module names.")


@dataclass
class TrainConfig:
    """One LoRA fine-tuning run. The Fine-tune tab builds it from widgets; ``python -m core.train`` from YAML."""

    data_path: str
    """The training file: CSV, TSV, JSON or JSONL."""
    adapter_name: str
    """Name of the saved adapter; it lands in ``adapters/<safe name>/`` under the DemoForge home."""
    task: TrainTask = "sft"
    """'sft': chat fine-tuning of a causal LM on assistant replies; 'classification': text -> label."""
    base_model: str = "default"
    """'default' (embedded SmolLM2 for sft, MiniLM for classification), 'minilm', a local folder or a Hub id."""
    columns: dict[str, str] = field(default_factory=dict)
    """Column mapping, e.g. {'prompt': 'question', 'response': 'answer'} or {'text': 'body', 'label': 'tag'};
    empty means detect from the usual names."""
    eval_path: str | None = None
    """Optional separate evaluation file; when set, eval_fraction is ignored."""
    max_data_mb: int | None = None
    """Largest data file the worker reads, in MiB (None: 50). The server sets its ``--max-upload-mb`` here, so a
    file the upload report accepted is accepted by the worker too."""
    eval_fraction: float = 0.1
    """Share of the training rows held out for evaluation when no eval file is given (0 turns eval off)."""
    run_dir: str | None = None
    """Folder for events, logs and checkpoints; None makes ``runs/<timestamp>-<name>/`` under the home."""
    resume_from: str | None = None
    """A run folder with a checkpoint to continue from (same as ``--resume``)."""
    max_length: int | None = None
    """Longest tokenised example; for sft also the length of a packed row. None: the task's default
    (:data:`TASK_DEFAULTS`)."""
    epochs: float | None = None
    """Passes over the training data (ignored when max_steps is set). None: the task's default."""
    max_steps: int | None = None
    """Exact number of optimizer steps; overrides epochs."""
    time_budget_minutes: float | None = None
    """Stop after at most this many minutes: total steps are planned from a measured warm-up step."""
    lr: float | None = None
    """Peak learning rate (AdamW) after warm-up. None: the task's default."""
    batch_size: int | None = None
    """Micro-batch per process: packed rows of up to max_length tokens for sft, examples for classification.
    None: the task's default."""
    batch_tokens: int | None = None
    """sft only: micro-batch size in tokens instead of rows (rounded down to whole rows of max_length)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step (effective batch = batch x grad_accum x processes)."""
    warmup_ratio: float = 0.05
    """Share of the total steps spent ramping the learning rate up from 0."""
    scheduler: Scheduler = "cosine"
    """Learning-rate decay after warm-up."""
    weight_decay: float = 0.0
    """AdamW weight decay on the LoRA weights."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 turns clipping off)."""
    seed: int = 42
    """Seed for the data split, shuffling, LoRA init and dropout."""
    eval_every: int | None = None
    """Evaluate every N optimizer steps; None means about 5 evaluations per run (and always one at the end)."""
    checkpoint_every: int | None = None
    """Save a resumable checkpoint every N optimizer steps; None saves only when stopped."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% slower."""
    precision: Precision = "auto"
    """'auto': bf16 autocast on CUDA and on CPUs with native bf16, else fp32. Master weights stay fp32."""
    qlora: bool = False
    """Load the base in 4-bit (bitsandbytes); needs a CUDA GPU."""
    full_finetune: bool = False
    """classification only: train every weight of the encoder (peft ``modules_to_save``, saved in the adapter folder:
    ~90 MB for MiniLM) instead of a LoRA update. Measured with the bench (batch 16, held-out rows): Banking77 after
    150 steps 0.40 vs LoRA's 0.20 accuracy; SST-2 sentences after 150 steps 0.82 vs 0.82, after 600 steps 0.862 vs
    0.845; at ~0.6-0.75x LoRA's steps/s. Without lr given it uses :data:`FULL_FINETUNE_LR`."""
    pooling: PoolingChoice = "auto"
    """classification only: what the head reads. 'mean': the mean of the token vectors, what a sentence-transformers
    encoder was trained for; 'cls': the model's own pooler ([CLS] + dense + tanh for BERT). 'auto': 'mean' for a
    sentence-transformers folder that declares mean pooling (the embedded MiniLM) with LoRA, else 'cls'.
    Measured on SST-2 sentences after 1,000 LoRA steps: 0.907 mean vs 0.896 cls (:mod:`core.pooling`)."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """The adapter's shape."""

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**_known_keys(LoraSettings, self.lora, Path("lora")))
        if self.task not in ("sft", "classification"):
            raise ConfigError(f"task={self.task!r}: use 'sft' (chat fine-tuning) or 'classification'.")
        if self.full_finetune and self.task != "classification":
            raise ConfigError("full_finetune applies to classification only; sft trains a LoRA adapter.")
        if self.full_finetune and self.qlora:
            raise ConfigError("full_finetune and qlora exclude each other: a 4-bit base cannot be trained in full.")
        if self.pooling not in ("auto", "cls", "mean"):
            raise ConfigError(f"pooling={self.pooling!r}: use 'auto', 'mean' (average the tokens) or 'cls'.")
        if self.pooling != "auto" and self.task != "classification":
            raise ConfigError("pooling applies to classification only; leave it at 'auto' for sft.")
        if self.pooling == "mean" and self.full_finetune:
            raise ConfigError(
                "full_finetune keeps the encoder's own pooler (it holds the run's LoRA target): use pooling 'auto' "
                "or 'cls' with full_finetune, or LoRA for mean pooling."
            )
        if self.full_finetune and self.lr is None:
            self.lr = FULL_FINETUNE_LR  # every weight moves: LoRA's 1e-3 would wreck the pretrained encoder
        for name, value in TASK_DEFAULTS[self.task].items():
            if getattr(self, name) is None:  # not given: the task's default, so the CLI, tab and bench agree
                setattr(self, name, value)
        if not str(self.data_path).strip():
            raise ConfigError("data_path must name a CSV, TSV, JSON or JSONL file.")
        if not str(self.adapter_name).strip():
            raise ConfigError("adapter_name must not be empty.")
        if len(str(self.adapter_name).strip()) > 64:  # store.MAX_NAME: longer names made runs unmanageable
            raise ConfigError(f"adapter_name is {len(str(self.adapter_name).strip())} characters long; use at most 64.")
        if self.max_data_mb is not None and self.max_data_mb < 1:
            raise ConfigError(f"max_data_mb={self.max_data_mb!r} must be at least 1 (MiB).")
        if not str(self.base_model).strip():
            raise ConfigError("base_model must be 'default', 'minilm', a local folder or a Hub id.")
        if not isinstance(self.columns, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.columns.items()
        ):
            raise ConfigError("columns must map field names to column names, e.g. {'text': 'body', 'label': 'tag'}.")
        if not (0.0 <= self.eval_fraction < 0.5):
            raise ConfigError(
                f"eval_fraction={self.eval_fraction!r} must be in [0, 0.5): hold out less than half the data "
                "(0 turns evaluation off)."
            )
        _check_range("max_length", self.max_length, 16, 32768)
        if self.max_steps is None:
            if not (self.epochs > 0):
                raise ConfigError(f"epochs={self.epochs!r} must be positive (or set max_steps).")
            _check_range("epochs", self.epochs, 0.0, 1000.0)
        elif self.max_steps < 1:
            raise ConfigError(f"max_steps={self.max_steps!r} must be at least 1 (or leave it empty to use epochs).")
        if self.time_budget_minutes is not None and not (self.time_budget_minutes > 0):
            raise ConfigError(f"time_budget_minutes={self.time_budget_minutes!r} must be positive (or empty).")
        if not (self.lr > 0):
            raise ConfigError(f"lr={self.lr!r} must be positive (LoRA typically uses 1e-4 to 5e-4).")
        _check_range("lr", self.lr, 0.0, 1.0)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size!r} must be at least 1.")
        if self.batch_tokens is not None:
            if self.task != "sft":
                raise ConfigError("batch_tokens applies to sft only; use batch_size for classification.")
            if self.batch_tokens < self.max_length:
                raise ConfigError(
                    f"batch_tokens={self.batch_tokens} is smaller than one packed row (max_length={self.max_length})."
                )
        if self.grad_accum < 1:
            raise ConfigError(f"grad_accum={self.grad_accum!r} must be at least 1.")
        _check_range("warmup_ratio", self.warmup_ratio, 0.0, 0.5)
        if self.scheduler not in ("cosine", "linear"):
            raise ConfigError(f"scheduler={self.scheduler!r}: use 'cosine' or 'linear'.")
        _check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        if self.max_grad_norm < 0:
            raise ConfigError(f"max_grad_norm={self.max_grad_norm!r} must be >= 0 (0 turns clipping off).")
        if self.seed < 0:
            raise ConfigError(f"seed={self.seed!r} must be a non-negative integer.")
        for name in ("eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value!r} must be at least 1 (or empty).")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision={self.precision!r}: use 'auto', 'fp32' or 'bf16'.")

    @property
    def rows_per_batch(self) -> int:
        """Micro-batch size in rows (sft with batch_tokens: whole packed rows of max_length)."""
        if self.task == "sft" and self.batch_tokens is not None:
            return max(1, self.batch_tokens // self.max_length)
        return self.batch_size

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON-ready), nested LoRA settings included."""
        from dataclasses import asdict

        return asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The config as YAML text; also written to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path = "config") -> TrainConfig:
        """Build from a mapping, rejecting unknown keys (typos) with a message that names them."""
        data = dict(_known_keys(cls, data, Path(str(source))))
        if isinstance(data.get("lora"), dict):
            data["lora"] = LoraSettings(**_known_keys(LoraSettings, data["lora"], Path(f"{source}: lora")))
        try:
            return cls(**data)
        except TypeError as exc:  # a required key is missing
            raise ConfigError(f"{source}: {exc}") from exc

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Load and validate a YAML file (see ``assets/train_example.yaml``)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Training config {str(path)!r} not found.")
        return cls.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, path)
