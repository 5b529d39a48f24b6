"""Scratch folders for the benchmarks, removed when the benchmark's process ends.

A bench's DemoForge home holds a converted model and trained adapters (0.5-0.6 GB each run); left in the system
temp dir, a few dozen runs filled a 2-core machine's disk.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile


def scratch_dir(prefix: str) -> str:
    """A new folder in the system temp dir, removed (with everything in it) at interpreter exit."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
