"""The DemoForge home: where runs, adapters and converted models live, with safe names and atomic writes.

A server resolves the home once (``Engine.home``) and passes it down as ``root``; ``root=None`` means
:func:`home`, which reads the environment on each call (right for the CLI and for the training worker, which
inherits ``DEMOFORGE_HOME`` from the server that started it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.errors import ConfigError

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME = 64
"""Longest adapter (and run) name kept; longer names are refused where a user types them."""
TMP_MAX_AGE_S = 3600.0
"""Scratch folders older than this are removed when the next one is made (downloads are copied out long before)."""
# Folders earlier versions left in the system temp dir; removed by age like the home's own tmp/.
_LEGACY_TMP_PREFIXES = ("demoforge-zip-", "demoforge-scored-", "demoforge-votes-")


SPACE_STORAGE = Path("/data")
"""Where a Hugging Face Space mounts its persistent storage, once enabled in the Space's settings."""


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def home() -> Path:
    """The DemoForge home folder, created on first use.

    Order: ``$DEMOFORGE_HOME``; ``/data/demoforge`` on a Space with persistent storage; else the user cache.
    """
    env = os.environ.get("DEMOFORGE_HOME")
    if env:
        root = Path(env)
    elif os.environ.get("SPACE_ID") and _writable_dir(SPACE_STORAGE):
        root = SPACE_STORAGE / "demoforge"
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "demoforge"
    root.mkdir(parents=True, exist_ok=True)
    return root


def storage_lost_on_restart(root: Path | None = None, storage: Path = SPACE_STORAGE) -> str | None:
    """Why the home's files (adapters, votes, runs) would be lost when this Space restarts, or None when they are
    kept: not on a Space (a laptop's disk persists), or the home is on the Space's mounted storage.

    Returns 'no_storage' (nothing writable mounted at ``storage``: persistent storage is off) or 'home_elsewhere'
    (storage is mounted, but ``DEMOFORGE_HOME`` points off it).
    """
    if not os.environ.get("SPACE_ID"):
        return None
    if not _writable_dir(storage):
        return "no_storage"
    base = Path(root) if root is not None else home()
    return None if base.resolve().is_relative_to(storage.resolve()) else "home_elsewhere"


def subdir(name: str, root: Path | None = None) -> Path:
    """A named folder under the home (``runs``, ``adapters``, ``models``, ``tmp``), created on first use.

    Args:
        name: the folder's name.
        root: the DemoForge home to use; None means :func:`home`.
    """
    path = (Path(root) if root is not None else home()) / safe_name(name)
    path.mkdir(parents=True, exist_ok=True)
    return path


def safe_name(name: str) -> str:
    """Turn a user-supplied name into one file-system component: no separators, no dot-files, no '..'.

    Raises:
        ConfigError: when nothing usable is left (the message says which characters are allowed); a ValueError.
    """
    cleaned = _SAFE.sub("-", name.strip()).strip(".-_")[:MAX_NAME].rstrip(".-_")
    if not cleaned:
        raise ConfigError(
            f"The name {name!r} has no usable characters. Use letters, digits, '.', '_' or '-' (at most {MAX_NAME})."
        )
    return cleaned


def tmp_dir(prefix: str = "scratch", root: Path | None = None, max_age_s: float = TMP_MAX_AGE_S) -> Path:
    """A fresh folder under the home's ``tmp/`` for one call's files (a zip to download, a scored CSV).

    Entries of ``tmp/`` older than ``max_age_s`` are removed first, so scratch files never pile up; Gradio copies
    a returned file into its own cache at once, so an hour is ample. Nothing goes to the system temp dir.
    """
    base = subdir("tmp", root)
    clean_old(base, max_age_s)
    clean_old(Path(tempfile.gettempdir()), max_age_s, _LEGACY_TMP_PREFIXES)
    return Path(tempfile.mkdtemp(prefix=f"{safe_name(prefix)}-", dir=base))


def clean_old(folder: Path, max_age_s: float, prefixes: tuple[str, ...] = ("",)) -> int:
    """Remove entries of ``folder`` whose names start with one of ``prefixes`` and that were last modified more
    than ``max_age_s`` seconds ago; returns how many were removed."""
    cutoff = time.time() - max_age_s
    removed = 0
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    for entry in entries:
        try:
            if not entry.name.startswith(prefixes) or entry.lstat().st_mtime > cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        except OSError:
            continue  # in use, or another process removed it first
    return removed


def relative_to_home(path: str | Path, root: Path | None = None) -> str:
    """``path`` as a visitor may see it: relative to the home (``runs/x/stderr.log``), else just its name."""
    p = Path(path)
    base = Path(root) if root is not None else home()
    try:
        return p.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return p.name


def redact_paths(text: str, root: Path | None = None) -> str:
    """``text`` (a log tail, an error) without the server's absolute paths: the home's become relative, the
    code's relative to the repository, the Python install's ``<python>/...``, the temp dir's ``<tmp>/...``."""
    base = Path(root) if root is not None else home()
    repo = Path(__file__).resolve().parents[1]
    prefixes = {str(base): "", str(base.resolve()): "", str(repo): "", str(Path.home()): "~"}
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        prefixes[prefix] = "<python>"
    prefixes[tempfile.gettempdir()] = "<tmp>"
    # Longest first, so the home inside the temp dir (or the venv inside the repo) wins over its parent.
    for prefix in sorted(prefixes, key=len, reverse=True):
        if len(prefix) <= 1:
            continue
        to = prefixes[prefix]
        # Only whole path components: "/root" must not eat the start of "/rootfs".
        pattern = re.escape(prefix.rstrip(os.sep)) + r"(/|(?![\w.-]))"
        text = re.sub(pattern, lambda m, to=to: (f"{to}/" if to else "") if m.group(1) else (to or "."), text)
    return text


@contextmanager
def atomic_dir(final: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success rename it to ``final`` in one step.

    A crash or an exception inside the block leaves no folder at ``final`` (the temp folder is removed),
    so a half-written artefact never looks finished. An existing ``final`` is replaced only on success, and
    only when ``replace`` (a finished adapter is never replaced: FileExistsError instead).
    """
    if not replace and final.exists():
        raise FileExistsError(f"{final.name!r} already exists and is not replaced.")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists() and not replace:
            raise FileExistsError(f"{final.name!r} appeared while this one was written; it is not replaced.")
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
