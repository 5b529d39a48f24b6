"""Files the tabs hand to the browser (scored CSVs), written under the DemoForge home's ``tmp/`` and cleaned up.

A stop-gap until the engine offers its own scratch folders: the home comes from ``core.store.home()`` here, in one
place, so swapping it for the engine's is a one-line change.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

from core import store

SCRATCH_MAX_AGE_S = 15 * 60
"""Age after which a scratch folder is removed. Gradio copies a returned file into its own cache as it answers,
so our copy is only needed for the length of one call; the margin covers slow answers."""


def home() -> Path:
    """The DemoForge home (paths shown to users are made relative to it)."""
    return store.home()


def scratch_dir(prefix: str, max_age_s: float = SCRATCH_MAX_AGE_S) -> Path:
    """A fresh folder ``<home>/tmp/<prefix>XXXX`` for one call; folders of the same prefix older than
    ``max_age_s`` are removed first, so they never pile up."""
    root = home() / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    clean_old(root, prefix, max_age_s)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def clean_old(root: Path, prefix: str, max_age_s: float) -> int:
    """Remove ``prefix*`` folders under ``root`` last modified more than ``max_age_s`` ago; returns how many."""
    cutoff = time.time() - max_age_s
    removed = 0
    for folder in root.glob(f"{prefix}*"):
        with contextlib.suppress(FileNotFoundError):  # another request may be cleaning the same folder
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
    return removed
