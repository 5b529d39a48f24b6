"""The adapter library: finished LoRA adapters under ``adapters/`` with their cards; rename, delete, zip."""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import store
from core.errors import AdapterError

CARD = "adapter_card.json"
WEIGHTS = "adapter_model.safetensors"


@dataclass
class AdapterInfo:
    """One finished adapter, as its card describes it."""

    name: str
    path: Path
    task: str
    base_model: str
    labels: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    card: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for a dropdown or table: name, task, base, headline metric."""
        m = self.metrics
        if self.task == "classification" and m.get("macro_f1") is not None:
            metric = f"macro-F1 {m['macro_f1']:.2f}"
        elif m.get("eval_loss") is not None:
            metric = f"eval loss {m['eval_loss']:.3f}"
        else:
            metric = f"{m.get('steps', '?')} steps"
        return f"{self.name} · {self.task} · {self.base_model} · {metric}"


def adapters_dir() -> Path:
    """``adapters/`` under the DemoForge home."""
    return store.subdir("adapters")


def is_finished(path: Path) -> bool:
    """A folder counts as an adapter only when its weights and card are there (atomic_dir renames them in together)."""
    return path.is_dir() and not path.name.startswith(".") and (path / WEIGHTS).is_file() and (path / CARD).is_file()


def read(path: Path) -> AdapterInfo:
    """Read an adapter folder's card."""
    try:
        card = json.loads((path / CARD).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterError(f"Adapter {path.name!r} has an unreadable card ({exc}); delete it and train again.") from exc
    return AdapterInfo(
        name=path.name,
        path=path,
        task=str(card.get("task", "sft")),
        base_model=str(card.get("base_model", "default")),
        labels=[str(label) for label in card.get("labels") or []],
        metrics=dict(card.get("metrics") or {}),
        created=str(card.get("created", "")),
        card=card,
    )


def list_adapters(task: str | None = None) -> list[AdapterInfo]:
    """Finished adapters, newest first; ``task`` ('sft' or 'classification') filters."""
    found = [read(p) for p in adapters_dir().iterdir() if is_finished(p)]
    found = [a for a in found if task is None or a.task == task]
    return sorted(found, key=lambda a: (a.created, a.name), reverse=True)


def get(name: str) -> AdapterInfo:
    """The adapter called ``name``.

    Raises:
        AdapterError: no finished adapter has that name.
    """
    path = adapters_dir() / store.safe_name(name)
    if not is_finished(path):
        raise AdapterError(f"No adapter named {name!r}. Pick one from the list, or train one in the Fine-tune tab.")
    return read(path)


def rename(old: str, new: str) -> AdapterInfo:
    """Rename an adapter folder (and the name on its card)."""
    info = get(old)
    target = adapters_dir() / store.safe_name(new)
    if target.exists():
        raise AdapterError(f"An adapter named {target.name!r} already exists; choose another name.")
    info.path.rename(target)
    card = {**info.card, "name": target.name}
    store.atomic_write_json(target / CARD, card)
    readme = target / "README.md"
    if readme.is_file():  # the card's heading is the name (shown in the library and zipped with the adapter)
        text = readme.read_text(encoding="utf-8")
        if text.startswith(f"# {info.name}\n"):
            readme.write_text(f"# {target.name}\n" + text[len(f"# {info.name}\n") :], encoding="utf-8")
    return read(target)


def delete(name: str, confirm: str) -> None:
    """Delete an adapter; ``confirm`` must repeat its name, so a slip of the mouse deletes nothing."""
    info = get(name)
    if confirm.strip() != info.name:
        raise AdapterError(f"To delete {info.name!r}, type its name exactly in the confirmation box.")
    # Rename first so the adapter disappears from listings at once, even if removing the files is slow.
    trash = info.path.with_name(f".deleted-{info.name}")
    shutil.rmtree(trash, ignore_errors=True)
    info.path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def zip_adapter(name: str, out_dir: Path | None = None) -> Path:
    """Zip an adapter folder for download; returns the zip's path (in a temp folder unless ``out_dir``)."""
    info = get(name)
    out_dir = out_dir or Path(tempfile.mkdtemp(prefix="demoforge-zip-"))
    target = out_dir / f"{info.name}.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(info.path.rglob("*")):
            if file.is_file():
                zf.write(file, Path(info.name) / file.relative_to(info.path))
    return target
