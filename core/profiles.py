"""Demo profiles: the presenter's control panel (branding, prompts, what an audience may see and do, data notice).

Loaded from ``assets/profiles/<name>.yaml``, from ``profiles/<name>.yaml`` in the DemoForge home (saved from the
builder's UI), or from a YAML path; validated with messages that say which field and what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.checks import ASSETS
from core.checks import check_range as _check_range
from core.checks import known_keys as _known_keys
from core.errors import ConfigError

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
    def arena_shown(self) -> bool:
        """Whether visitors get the arena: switched on, with an audience adapter to set against the base model."""
        return self.arena and len(self.audience_adapters) >= 1

    @property
    def notice(self) -> str:
        """The data notice a visitor reads: the profile's own, or one written from the retention settings (which
        speaks of arena votes only where there is an arena)."""
        if self.data_notice.strip():
            return self.data_notice.strip()
        if not self.arena_shown:
            return "Conversations are not stored."
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
