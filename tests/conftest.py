"""Session-wide test settings: offline, no analytics, and a DemoForge home of the test session's own."""

from __future__ import annotations

import os
import tempfile

# Set before any test module imports transformers or gradio.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never touch the user's real home; integration tests share one converted SmolLM2 per session.
os.environ.setdefault("DEMOFORGE_HOME", tempfile.mkdtemp(prefix="demoforge-test-home-"))
