"""Dataclass configs: built by the UI from widget values and by the CLI from YAML, validated in __post_init__."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from core.errors import ConfigError

DType = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Mode = Literal["auto", "audience", "builder"]

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise ConfigError(f"{name}={value!r} is out of range: use a value between {low} and {high}.")


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


AUDIENCE_TABS = ("chat", "classify")
"""Tabs a profile may show an audience (the arena has its own switch; builder tabs are never audience tabs)."""
_HEX_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass
class DemoProfile:
    """The presenter's control panel: what an audience sees and may do, and how their data is treated."""

    title: str = "DemoForge"
    """Page title, heading and the login page's message."""
    description: str = "Chat with a small instruct model running on this machine."
    """Markdown shown under the title."""
    logo: str | None = None
    """An image shown beside the title: a path (relative to the profile file) or an https URL."""
    accent_color: str | None = None
    """Colour of primary buttons and the header rule, as #rrggbb."""
    system_prompt: str = "You are a helpful, concise assistant."
    """System prompt of every audience reply (the builder's Chat tab starts with it and may edit it)."""
    examples: list[str] = field(default_factory=list)
    """Example prompts shown under the chat box."""
    max_new_tokens: int = 256
    """Longest audience answer, in tokens (Chat and both arena answers)."""
    temperature: float = 0.7
    """Sampling temperature of audience answers; 0 is greedy (the same answer every time)."""
    default_adapter: str | None = None
    """Chat adapter an audience visitor lands on; None is the base model. Must be one of audience_adapters."""
    audience_adapters: list[str] = field(default_factory=list)
    """Chat adapters the audience may pick in Chat and meet in the arena; empty means the base model only."""
    tabs: list[str] = field(default_factory=lambda: ["chat"])
    """Audience tabs shown, from 'chat' and 'classify' (Fine-tune and Adapters are never shown to an audience)."""
    classify_labels: list[str] = field(default_factory=list)
    """Zero-shot labels of the audience's Classify tab (ignored when classify_adapter is set)."""
    classify_adapter: str | None = None
    """A classification adapter for the audience's Classify tab; its own labels are used."""
    classify_method: str = "embedding"
    """Zero-shot method for classify_labels: 'embedding' (MiniLM) or 'chat' (the chat model's likelihood)."""
    arena: bool = True
    """Show the blind A/B arena (needs at least one audience adapter, so there are two models to compare)."""
    data_notice: str = ""
    """Shown to every visitor: what happens to their data. Empty writes one from the retention settings."""
    store_prompts: bool = False
    """Whether an arena vote keeps the prompt text; False keeps only which model won (conversations are never
    stored either way)."""
    retention_days: int | None = 30
    """Arena votes older than this many days are deleted (checked at start and on every vote); None keeps them."""

    def __post_init__(self) -> None:
        if not isinstance(self.title, str) or not self.title.strip():
            raise ConfigError("profile title must not be empty.")
        for name in ("examples", "audience_adapters", "tabs", "classify_labels"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(e, str) and e.strip() for e in value):
                raise ConfigError(f"profile {name} must be a list of non-empty strings.")
        if self.logo is not None and not str(self.logo).strip():
            self.logo = None
        if self.accent_color is not None and not _HEX_COLOUR.match(str(self.accent_color)):
            raise ConfigError(
                f"profile accent_color={self.accent_color!r} must look like #1f6feb (# and 6 hex digits)."
            )
        if self.default_adapter is not None and self.default_adapter not in self.audience_adapters:
            raise ConfigError(
                f"profile default_adapter={self.default_adapter!r} is not in audience_adapters "
                f"{self.audience_adapters}: add it there, or leave default_adapter empty for the base model."
            )
        _check_range("profile max_new_tokens", self.max_new_tokens, 1, 4096)
        _check_range("profile temperature", self.temperature, 0.0, 2.0)
        bad_tabs = [t for t in self.tabs if t not in AUDIENCE_TABS]
        if bad_tabs:
            raise ConfigError(
                f"profile tabs {bad_tabs} are not audience tabs: use any of {list(AUDIENCE_TABS)} "
                "(turn the arena on with arena: true; Fine-tune and Adapters are for the builder only)."
            )
        if self.classify_method not in ("embedding", "chat"):
            raise ConfigError(f"profile classify_method={self.classify_method!r}: use 'embedding' or 'chat'.")
        if "classify" in self.tabs and not self.classify_adapter and len(self.classify_labels) < 2:
            raise ConfigError(
                "profile tabs include 'classify': name at least two classify_labels, or a classify_adapter."
            )
        if not isinstance(self.arena, bool) or not isinstance(self.store_prompts, bool):
            raise ConfigError("profile arena and store_prompts must be true or false.")
        if self.retention_days is not None and (
            not isinstance(self.retention_days, int) or isinstance(self.retention_days, bool) or self.retention_days < 1
        ):
            raise ConfigError(
                f"profile retention_days={self.retention_days!r} must be a whole number of days >= 1 "
                "(or empty to keep votes)."
            )

    @property
    def notice(self) -> str:
        """The data notice a visitor reads: the profile's own, or one written from the retention settings."""
        if self.data_notice.strip():
            return self.data_notice.strip()
        kept = "the prompt and which answer won" if self.store_prompts else "only which answer won (not the prompt)"
        days = f"for {self.retention_days} days" if self.retention_days else "until the presenter deletes them"
        return f"Conversations are not stored. An arena vote keeps {kept}, {days}, with no name or address."

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML-ready)."""
        from dataclasses import asdict

        return asdict(self)

    def save(self, name: str) -> Path:
        """Write the profile as ``profiles/<safe name>.yaml`` in the DemoForge home; returns the path."""
        from core import store

        path = store.subdir("profiles") / f"{store.safe_name(name)}.yaml"
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        store.atomic_write_text(path, text)
        return path

    @classmethod
    def load(cls, name_or_path: str | Path) -> DemoProfile:
        """Load a profile from a YAML path, or by name from the home's ``profiles/`` (saved from the UI) or
        ``assets/profiles/<name>.yaml``."""
        from core import store

        path = Path(name_or_path)
        if not path.suffix:
            saved = store.home() / "profiles" / f"{path.name}.yaml"
            path = saved if saved.is_file() else ASSETS / "profiles" / f"{path.name}.yaml"
        if not path.is_file():
            available = sorted({p.stem for p in (ASSETS / "profiles").glob("*.yaml")} | set(_saved_profiles()))
            raise ConfigError(f"Profile {str(name_or_path)!r} not found. Give a YAML path or one of: {available}.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc}).") from exc
        data = dict(_known_keys(cls, data, path))
        logo = data.get("logo")
        if logo and not str(logo).startswith(("http://", "https://")):
            logo_path = (path.parent / str(logo)).resolve()
            if not logo_path.is_file():
                raise ConfigError(f"{path}: logo {logo!r} not found (looked at {logo_path}).")
            data["logo"] = str(logo_path)
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc


def _saved_profiles() -> list[str]:
    from core import store

    folder = store.home() / "profiles"
    return [p.stem for p in folder.glob("*.yaml")] if folder.is_dir() else []


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


def _known_keys(cls: type, data: dict[str, Any], source: Path) -> dict[str, Any]:
    """Reject unknown YAML keys with a message naming them, instead of silently ignoring typos."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values at the top level.")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown keys {unknown}; allowed: {sorted(known)}.")
    return data


# --- Training (LoRA fine-tuning) -------------------------------------------------------------------------------------

TrainTask = Literal["sft", "classification"]
Precision = Literal["auto", "fp32", "bf16"]
Scheduler = Literal["cosine", "linear"]


TASK_DEFAULTS: dict[str, dict[str, float | int]] = {
    "sft": {"epochs": 10, "lr": 1e-3, "max_length": 256, "batch_size": 2},
    "classification": {"epochs": 5, "lr": 1e-3, "max_length": 128, "batch_size": 16},
}
"""Training defaults per task, in one place for the CLI, the Fine-tune tab and the benchmarks: tuned for a visible
change within a few minutes on 2 CPU cores (many small optimizer steps; epochs is an upper bound that a time
budget cuts)."""


@dataclass
class LoraSettings:
    """The LoRA adapter's shape (peft ``LoraConfig``)."""

    r: int = 16
    """Rank of the low-rank update; higher learns more and costs more (typical 4-64)."""
    alpha: int = 32
    """Scaling numerator: the update is scaled by alpha / r (commonly 2 x r)."""
    dropout: float = 0.05
    """Dropout on the LoRA input during training (0 turns it off)."""
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
    max_length: int = 256
    """Longest tokenised example; for sft also the length of a packed row."""
    epochs: float = 3.0
    """Passes over the training data (ignored when max_steps is set)."""
    max_steps: int | None = None
    """Exact number of optimizer steps; overrides epochs."""
    time_budget_minutes: float | None = None
    """Stop after at most this many minutes: total steps are planned from a measured warm-up step."""
    lr: float = 2e-4
    """Peak learning rate (AdamW) after warm-up."""
    batch_size: int = 8
    """Micro-batch per process: packed rows of up to max_length tokens for sft, examples for classification."""
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
    lora: LoraSettings = field(default_factory=LoraSettings)
    """The adapter's shape."""

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**_known_keys(LoraSettings, self.lora, Path("lora")))
        if self.task not in ("sft", "classification"):
            raise ConfigError(f"task={self.task!r}: use 'sft' (chat fine-tuning) or 'classification'.")
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
