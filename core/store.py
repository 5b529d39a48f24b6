"""The DemoForge home: where runs, adapters and converted models live, with safe names and atomic writes."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.errors import ConfigError

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 64


def home() -> Path:
    """The DemoForge home folder, created on first use.

    Order: ``$DEMOFORGE_HOME``; ``/data/demoforge`` on a Space with persistent storage; else the user cache.
    """
    env = os.environ.get("DEMOFORGE_HOME")
    if env:
        root = Path(env)
    elif os.environ.get("SPACE_ID") and Path("/data").is_dir() and os.access("/data", os.W_OK):
        root = Path("/data/demoforge")
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "demoforge"
    root.mkdir(parents=True, exist_ok=True)
    return root


def subdir(name: str) -> Path:
    """A named folder under the home (``runs``, ``adapters``, ``models``), created on first use."""
    path = home() / safe_name(name)
    path.mkdir(parents=True, exist_ok=True)
    return path


def safe_name(name: str) -> str:
    """Turn a user-supplied name into one file-system component: no separators, no dot-files, no '..'.

    Raises:
        ConfigError: when nothing usable is left (the message says which characters are allowed); a ValueError.
    """
    cleaned = _SAFE.sub("-", name.strip()).strip(".-_")[:_MAX_NAME]
    if not cleaned:
        raise ConfigError(
            f"The name {name!r} has no usable characters. Use letters, digits, '.', '_' or '-' (at most {_MAX_NAME})."
        )
    return cleaned


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success rename it to ``final`` in one step.

    A crash or an exception inside the block leaves no folder at ``final`` (the temp folder is removed),
    so a half-written artefact never looks finished. An existing ``final`` is replaced only on success.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".old-{final.name}-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file and rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    """JSON version of :func:`atomic_write_text` (UTF-8, indented)."""
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
