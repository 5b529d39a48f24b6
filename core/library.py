"""The adapter library as the UI uses it: list, read, rename, delete, zip, merge, export, push, publish.

The engine owns one :class:`Library`; renaming or deleting also forgets the adapter on the loaded chat base
(through ``forget``), so the next chat request never reaches a stale name. Merging runs on the model thread
(``run``), like all torch work in the server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from core import adapters, store
from core.adapters import AdapterInfo

T = TypeVar("T")


class Library:
    """Finished adapters under the DemoForge home, and what can be done with them."""

    def __init__(self, forget: Callable[[str], None], run: Callable[..., Any], home: Path | None = None) -> None:
        """Args:
        forget: unloads an adapter name from the loaded chat base (``Engine.forget_adapter``).
        run: runs a function on the model thread (``Engine.on_model_thread``).
        home: the DemoForge home (``Engine.home``); None reads :func:`core.store.home` once.
        """
        self._forget, self._run = forget, run
        self.home = Path(home) if home is not None else store.home()

    def list(self, task: str | None = None) -> list[AdapterInfo]:
        """Finished adapters, newest first; ``task`` ('sft' or 'classification') filters."""
        return adapters.list_adapters(task, self.home)

    def get(self, name: str) -> AdapterInfo:
        """The adapter called ``name`` (AdapterError when there is none)."""
        return adapters.get(name, self.home)

    def card_markdown(self, name: str) -> str:
        """The adapter's README card, or its one-line summary when the card is missing."""
        info = adapters.get(name, self.home)
        readme = info.path / "README.md"
        return readme.read_text(encoding="utf-8") if readme.is_file() else info.summary()

    def rename(self, old: str, new: str) -> AdapterInfo:
        """Rename an adapter (folder, card) and forget the old name on the chat base."""
        info = adapters.rename(old, new, self.home)
        self._forget(old)
        return info

    def delete(self, name: str, confirm: str) -> None:
        """Delete an adapter (``confirm`` repeats its name) and forget it on the chat base."""
        adapters.delete(name, confirm, self.home)
        self._forget(name)

    def zip(self, name: str, out_dir: Path | None = None) -> Path:
        """A zip of the adapter folder, for download (under the home's ``tmp/`` unless ``out_dir``)."""
        return adapters.zip_adapter(name, out_dir, self.home)

    def shown_path(self, path: str | Path) -> str:
        """A path as the UI may show it: relative to the DemoForge home (``merged/x``), never the server's own."""
        return store.relative_to_home(path, self.home)

    def merge(self, name: str) -> Path:
        """Merge into a fresh copy of its base and save as safetensors (on the model thread)."""
        from core.export import merge

        return self._run(merge, name, self.home)

    def export_gguf(
        self, name: str, kind: str, system: str | None = None, on_progress: Callable[[float, str], None] | None = None
    ) -> Any:
        """Export to ``exports/<name>/``: merged GGUF ('f16', 'q8_0') or GGUF LoRA ('lora'), with an Ollama
        Modelfile (on the model thread); returns a :class:`core.export_gguf.ExportResult`."""
        from core.export_gguf import export

        kwargs = {"on_progress": on_progress} if on_progress else {}
        return self._run(export, name, kind, system=system, home=self.home, **kwargs)

    def serve_commands(self, name: str) -> str:
        """Markdown with the command lines that serve adapter ``name`` on vLLM, llama.cpp and Ollama."""
        from core.serve_recipes import serve_commands

        return serve_commands(name, self.home)

    def push(self, name: str, repo_id: str, token: str, merged: bool = False) -> str:
        """Upload the adapter (or the merged model) to the Hub; returns the repo URL."""
        from core.export import merge, push

        if merged:
            self._run(merge, name, self.home)  # torch work stays on the model thread; push uploads that folder
        return push(name, repo_id, token, merged=merged, home=self.home)

    def run_card(self, name: str) -> Path | None:
        """The adapter's run card (``run_card.html``, written when its run finished), or None when it has none."""
        from core.runcard import CARD_FILE

        path = adapters.get(name, self.home).path / CARD_FILE
        return path if path.is_file() else None

    def profile_names(self) -> list[str]:
        """Profiles a Space can be published with (shipped and saved)."""
        from core.publish import profile_names

        return profile_names()

    def publish(
        self,
        name: str,
        profile: str,
        space_id: str,
        token: str,
        private: bool = False,
        on_progress: Callable[[float, str], None] | None = None,
    ) -> Any:
        """Build a Space bundle of adapter ``name`` with ``profile`` and upload it; returns a
        :class:`core.publish.Published`. Errors name the bundle folder relative to the home."""
        from core.config import DemoProfile
        from core.publish import publish

        loaded = DemoProfile.load(profile or "default")
        return publish([name], loaded, space_id, token, private, self.shown_path, on_progress, self.home)
