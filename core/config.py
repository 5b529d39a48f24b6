"""Dataclass configs: built by the UI from widget values and by the CLI from YAML, validated in __post_init__."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

DType = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda", "mps"]

ASSETS = Path(__file__).resolve().parent.parent / "assets"


class ConfigError(ValueError):
    """A config value is out of range or malformed; the message says which field and what is allowed."""


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


@dataclass
class DemoProfile:
    """What a visitor sees: branding, the default system prompt and the example prompts."""

    title: str = "DemoForge"
    """Page title and heading."""
    description: str = "Chat with a small instruct model running on this machine."
    """Markdown shown under the title."""
    system_prompt: str = "You are a helpful, concise assistant."
    """Default system prompt of the Chat tab (the user can edit it)."""
    examples: list[str] = field(default_factory=list)
    """Example prompts shown under the chat box."""

    def __post_init__(self) -> None:
        if not self.title.strip():
            raise ConfigError("profile title must not be empty.")
        if not all(isinstance(e, str) and e.strip() for e in self.examples):
            raise ConfigError("profile examples must be a list of non-empty strings.")

    @classmethod
    def load(cls, name_or_path: str | Path) -> DemoProfile:
        """Load a profile from a YAML path, or by name from ``assets/profiles/<name>.yaml``."""
        path = Path(name_or_path)
        if not path.suffix:
            path = ASSETS / "profiles" / f"{path.name}.yaml"
        if not path.is_file():
            available = sorted(p.stem for p in (ASSETS / "profiles").glob("*.yaml"))
            raise ConfigError(f"Profile {str(name_or_path)!r} not found. Give a YAML path or one of: {available}.")
        return cls(**_known_keys(cls, yaml.safe_load(path.read_text(encoding="utf-8")) or {}, path))


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
    """(user, password) required to open the app."""
    queue_size: int = 16
    """Requests waiting beyond this are refused with a clear 'busy' message."""
    concurrency: int = 1
    """Model calls that run at once (1 on CPU; raise on a GPU)."""
    max_upload_mb: int = 50
    """Largest accepted upload."""

    def __post_init__(self) -> None:
        _check_range("port", self.port, 1, 65535)
        _check_range("queue_size", self.queue_size, 1, 10_000)
        _check_range("concurrency", self.concurrency, 1, 64)
        _check_range("max_upload_mb", self.max_upload_mb, 1, 10_000)
        if self.share and self.auth is None:
            raise ConfigError(
                "--share makes the app public: set --auth user:password (or DEMOFORGE_AUTH) so strangers "
                "cannot use your model and machine."
            )


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """Parse 'user:password' (from a flag or ``DEMOFORGE_AUTH``); None when unset."""
    value = value if value is not None else os.environ.get("DEMOFORGE_AUTH")
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigError("auth must look like user:password, with both parts non-empty.")
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

