"""Small helpers shared by the config dataclasses (no heavy imports): ranges, unknown YAML keys, the assets folder."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from core.errors import ConfigError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
"""The repository's ``assets/`` folder: profiles, sample datasets, style sheet."""


def check_range(name: str, value: float, low: float, high: float) -> None:
    """Raise ConfigError naming the field and the allowed range when ``value`` is outside it."""
    if not (low <= value <= high):
        raise ConfigError(f"{name}={value!r} is out of range: use a value between {low} and {high}.")


def known_keys(cls: type, data: dict[str, Any], source: Path) -> dict[str, Any]:
    """Reject unknown YAML keys with a message naming them, instead of silently ignoring typos."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values at the top level.")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown keys {unknown}; allowed: {sorted(known)}.")
    return data
