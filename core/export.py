"""Merge an adapter into its base and save it as safetensors; push an adapter or a merged model to the Hub."""

from __future__ import annotations

import logging
from pathlib import Path

from core import adapters, store
from core.errors import ExportError

log = logging.getLogger(__name__)


def merged_dir(name: str, home: Path | None = None) -> Path:
    """``merged/<name>/`` in the DemoForge home ``home`` (the environment's home when None)."""
    return store.subdir("merged", home) / store.safe_name(name)


def fresh_merge(info: adapters.AdapterInfo, home: Path | None = None) -> Path | None:
    """``merged/<name>/`` if a merge of this adapter's current weights already wrote it, else None (a folder
    older than the adapter is from a deleted adapter of the same name)."""
    weights = merged_dir(info.name, home) / "model.safetensors"
    adapter_weights = info.path / "adapter_model.safetensors"
    if weights.is_file() and weights.stat().st_mtime >= adapter_weights.stat().st_mtime:
        return weights.parent
    return None


def merge(name: str, home: Path | None = None) -> Path:
    """Merge adapter ``name`` into a fresh copy of its base and save it to ``merged/<name>/`` (safetensors).

    A fresh base is loaded, so the model the app is serving is never modified. The folder appears atomically.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from core.models import resolve_base
    from core.pooling import MEAN_POOLING_HOWTO

    info = adapters.get(name, home)
    base_path = resolve_base(info.base_model, info.task, info.card.get("base_model_path"))
    if info.task == "classification":
        labels = info.labels
        base = AutoModelForSequenceClassification.from_pretrained(
            base_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            dtype=torch.float32,
            trust_remote_code=False,
            use_safetensors=True,
        )
    else:
        base = AutoModelForCausalLM.from_pretrained(
            base_path, dtype=torch.float32, trust_remote_code=False, use_safetensors=True
        )
    model = PeftModel.from_pretrained(base, str(info.path)).merge_and_unload()
    mean_pooled = info.task == "classification" and info.card.get("pooling") == "mean"
    if mean_pooled:  # the weights merge as they are; the marker and the README say how the head reads them
        model.config.demoforge_pooling = "mean"
    # core.train saves the tokenizer (with any chat template it set) beside the adapter; fall back to the base's.
    has_tokenizer = (info.path / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(info.path if has_tokenizer else base_path)
    target = merged_dir(info.name, home)
    with store.atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(
            f"# {info.name} (merged)\n\n{info.base_model} with the LoRA adapter `{info.name}` merged in by "
            "DemoForge. Load it with `AutoModelForCausalLM.from_pretrained(folder)` (or the classification "
            "class for a classifier).\n" + (f"\n{MEAN_POOLING_HOWTO}" if mean_pooled else ""),
            encoding="utf-8",
        )
    return target


def push(
    name: str, repo_id: str, token: str, merged: bool = False, private: bool = True, home: Path | None = None
) -> str:
    """Upload the adapter (or its merged model) to the Hub repo ``repo_id``; returns the repo URL.

    A merged upload reuses ``merged/<name>/`` when a merge already wrote it (the library merges on the model
    thread first), so the weights are not merged twice.

    Raises:
        ExportError: no token, a malformed repo id, or the Hub cannot be reached (with what to do instead).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not token or not token.strip():
        raise ExportError("A Hugging Face token with write access is needed: paste one from hf.co/settings/tokens.")
    if repo_id.count("/") != 1 or not all(part.strip() for part in repo_id.split("/")):
        raise ExportError(f"Repo id {repo_id!r} must look like 'your-name/model-name'.")
    info = adapters.get(name, home)
    folder = info.path
    if merged:
        folder = fresh_merge(info, home) or merge(info.name, home)
    api = HfApi(token=token.strip())
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=f"Upload {name} from DemoForge")
    except HfHubHTTPError as exc:
        raise ExportError(
            f"The Hub refused the upload: {exc}. Check the token's write access and the repo id."
        ) from exc
    except Exception as exc:
        raise ExportError(
            f"Could not reach the Hugging Face Hub ({type(exc).__name__}). This machine may be offline: download "
            "the adapter as a zip instead and upload it from a connected machine."
        ) from exc
    return f"https://huggingface.co/{repo_id}"
