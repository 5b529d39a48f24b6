"""The adapter library: finished LoRA adapters under ``adapters/`` with their cards; rename, delete, zip."""

from __future__ import annotations

import json
import shutil
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


def adapters_dir(root: Path | None = None) -> Path:
    """``adapters/`` under the DemoForge home (``root``; None means :func:`core.store.home`)."""
    return store.subdir("adapters", root)


def new_adapter_name(name: str, root: Path | None = None) -> str:
    """The folder name a new adapter called ``name`` gets; refuses what would be lost or overwritten.

    Spaces, separators and other characters become '-' and leading dots go (compare the result with what was
    typed to tell the user); a name over :data:`core.store.MAX_NAME` characters, or one that names an existing
    adapter once cleaned, is refused: ``../id`` used to replace ``id``.

    Raises:
        AdapterError: the message says what was wrong and what to type instead.
    """
    typed = str(name).strip()
    if len(typed) > store.MAX_NAME:
        raise AdapterError(
            f"The adapter name is {len(typed)} characters long; use at most {store.MAX_NAME} "
            f"(e.g. {store.safe_name(typed)[:40]!r})."
        )
    try:
        saved = store.safe_name(typed)
    except ValueError as exc:
        raise AdapterError(str(exc)) from None
    if (adapters_dir(root) / saved).exists():
        as_saved = f" ({typed!r} is saved as {saved!r})" if saved != typed else ""
        raise AdapterError(
            f"An adapter named {saved!r} already exists{as_saved}. Choose another name, or rename or delete the "
            "existing one in the Library tab first; a new run never replaces an adapter."
        )
    return saved


def is_finished(path: Path) -> bool:
    """A folder counts as an adapter only when its weights and card are there (atomic_dir renames them in together)."""
    return path.is_dir() and not path.name.startswith(".") and (path / WEIGHTS).is_file() and (path / CARD).is_file()


def read(path: Path) -> AdapterInfo:
    """Read an adapter folder's card."""
    try:
        card = json.loads((path / CARD).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else (exc.strerror or type(exc).__name__)
        raise AdapterError(f"Adapter {path.name!r} has an unreadable card ({why}); delete it and train again.") from exc
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


def list_adapters(task: str | None = None, root: Path | None = None) -> list[AdapterInfo]:
    """Finished adapters, newest first; ``task`` ('sft' or 'classification') filters; ``root`` is the home."""
    found = [read(p) for p in adapters_dir(root).iterdir() if is_finished(p)]
    found = [a for a in found if task is None or a.task == task]
    return sorted(found, key=lambda a: (a.created, a.name), reverse=True)


def get(name: str, root: Path | None = None) -> AdapterInfo:
    """The adapter called ``name`` (under the home ``root``; None means :func:`core.store.home`).

    Raises:
        AdapterError: no finished adapter has that name.
    """
    try:
        path = adapters_dir(root) / store.safe_name(name)
    except ValueError:
        raise AdapterError(f"No adapter named {name!r}. Pick one from the list.") from None
    if not is_finished(path):
        raise AdapterError(f"No adapter named {name!r}. Pick one from the list, or train one in the Fine-tune tab.")
    return read(path)


def rename(old: str, new: str, root: Path | None = None) -> AdapterInfo:
    """Rename an adapter folder (and the name on its card); the new name is checked like a new run's."""
    info = get(old, root)
    target = adapters_dir(root) / new_adapter_name(new, root)
    info.path.rename(target)
    card = {**info.card, "name": target.name}
    store.atomic_write_json(target / CARD, card)
    readme = target / "README.md"
    if readme.is_file():  # the card's heading is the name (shown in the library and zipped with the adapter)
        text = readme.read_text(encoding="utf-8")
        if text.startswith(f"# {info.name}\n"):
            readme.write_text(f"# {target.name}\n" + text[len(f"# {info.name}\n") :], encoding="utf-8")
    return read(target)


def delete(name: str, confirm: str, root: Path | None = None) -> None:
    """Delete an adapter; ``confirm`` must repeat its name, so a slip of the mouse deletes nothing."""
    info = get(name, root)
    if confirm.strip() != info.name:
        raise AdapterError(f"To delete {info.name!r}, type its name exactly in the confirmation box.")
    # Rename first so the adapter disappears from listings at once, even if removing the files is slow.
    trash = info.path.with_name(f".deleted-{info.name}")
    shutil.rmtree(trash, ignore_errors=True)
    info.path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def zip_adapter(name: str, out_dir: Path | None = None, root: Path | None = None) -> Path:
    """Zip an adapter folder for download; returns the zip's path.

    Without ``out_dir`` the zip goes to a fresh folder under the home's ``tmp/`` (old ones are cleaned by age,
    see :func:`core.store.tmp_dir`), never the system temp dir.
    """
    info = get(name, root)
    out_dir = out_dir or store.tmp_dir("zip", root)
    target = out_dir / f"{info.name}.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(info.path.rglob("*")):
            if file.is_file():
                zf.write(file, Path(info.name) / file.relative_to(info.path))
    return target
