"""The adapter library: every finished adapter with its card; use, rename, delete, download, merge, push."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from core import adapters
from core.adapters import AdapterError
from core.engine import Engine
from core.export import ExportError, merge, push
from demo.errors import user_error

COLUMNS = ["name", "task", "base model", "metrics", "created"]


def library_frame() -> pd.DataFrame:
    """The library as a table, newest first."""
    rows = []
    for a in adapters.list_adapters():
        m = a.metrics
        shown = ", ".join(f"{k} {m[k]:.3f}" for k in ("eval_loss", "accuracy", "macro_f1") if m.get(k) is not None)
        rows.append([a.name, a.task, a.base_model, shown or f"{m.get('steps', '?')} steps", a.created])
    return pd.DataFrame(rows, columns=COLUMNS)


def names() -> list[str]:
    return [a.name for a in adapters.list_adapters()]


def library_update(selected: str | None = None) -> tuple[pd.DataFrame, dict]:
    """Fresh table and dropdown (keeping ``selected`` when it still exists)."""
    choices = names()
    value = selected if selected in choices else (choices[0] if choices else None)
    return library_frame(), gr.update(choices=choices, value=value)


def build_library_tab(engine: Engine) -> dict[str, gr.components.Component]:
    """Build the adapter library inside the current Blocks context; returns its components."""
    table = gr.Dataframe(
        value=library_frame(), headers=COLUMNS, interactive=False, label="Adapters", elem_id="df-lib-table"
    )
    with gr.Row():
        pick = gr.Dropdown(choices=names(), label="Adapter", scale=3, allow_custom_value=True, elem_id="df-lib-pick")
        refresh = gr.Button("⟳ Refresh", scale=1, elem_id="df-lib-refresh")
    card = gr.Markdown("", elem_id="df-lib-card")
    with gr.Row():
        use_chat = gr.Button("Use in Chat", variant="primary", elem_id="df-lib-use-chat")
        use_classify = gr.Button("Use in Classify", variant="primary", elem_id="df-lib-use-classify")
        download = gr.Button("Download as zip", elem_id="df-lib-download")
        merge_btn = gr.Button("Merge into base (safetensors)", elem_id="df-lib-merge")
    zip_file = gr.File(label="Download", interactive=False, elem_id="df-lib-zip")
    with gr.Accordion("Rename or delete", open=False):
        with gr.Row():
            new_name = gr.Textbox(label="New name", scale=3)
            rename_btn = gr.Button("Rename", scale=1, elem_id="df-lib-rename")
        with gr.Row():
            confirm = gr.Textbox(label="Type the adapter's name to confirm deletion", scale=3)
            delete_btn = gr.Button("Delete", variant="stop", scale=1, elem_id="df-lib-delete")
    with gr.Accordion("Push to the Hugging Face Hub", open=False):
        with gr.Row():
            repo = gr.Textbox(label="Repo id", placeholder="your-name/model-name", scale=2)
            token = gr.Textbox(label="HF token (write)", type="password", scale=2)
            merged = gr.Checkbox(label="Push the merged model instead of the adapter", value=False)
        push_btn = gr.Button("Push", elem_id="df-lib-push")
    status = gr.Markdown("", elem_id="df-lib-status")

    def show_card(name: str | None) -> str:
        if not name:
            return "No adapter selected. Train one in the Fine-tune tab."
        try:
            info = adapters.get(name)
        except AdapterError as exc:
            return str(exc)
        readme = info.path / "README.md"
        return readme.read_text(encoding="utf-8") if readme.is_file() else info.summary()

    def do_rename(name: str | None, new: str):
        try:
            info = adapters.rename(name or "", new)
            engine.forget_adapter(name or "")
        except (AdapterError, ValueError) as exc:
            raise gr.Error(str(exc), duration=8) from exc
        frame, pick_update = library_update(info.name)
        return frame, pick_update, f"Renamed **{name}** to **{info.name}**."

    def do_delete(name: str | None, typed: str):
        try:
            adapters.delete(name or "", typed)
            engine.forget_adapter(name or "")
        except (AdapterError, ValueError) as exc:
            raise gr.Error(str(exc), duration=8) from exc
        frame, pick_update = library_update()
        return frame, pick_update, f"Deleted **{name}**.", ""

    def do_zip(name: str | None) -> str:
        try:
            return str(adapters.zip_adapter(name or ""))
        except (AdapterError, ValueError) as exc:
            raise gr.Error(str(exc), duration=8) from exc

    def do_merge(name: str | None) -> str:
        try:
            path = merge(name or "")
        except (AdapterError, ExportError, ValueError) as exc:
            raise gr.Error(str(exc), duration=8) from exc
        except Exception as exc:
            raise user_error(exc, "merging the adapter") from exc
        return f"Merged **{name}** into its base: `{path}` (safetensors; load it with `from_pretrained`)."

    def do_push(name: str | None, repo_id: str, hf_token: str, whole: bool) -> str:
        try:
            url = push(name or "", repo_id.strip(), hf_token, merged=whole)
        except (AdapterError, ExportError, ValueError) as exc:
            raise gr.Error(str(exc), duration=10) from exc
        return f"Pushed to [{url}]({url})."

    private = {"api_visibility": "private"}
    refresh.click(library_update, [pick], [table, pick], queue=False, **private).then(
        show_card, [pick], [card], **private
    )
    pick.change(show_card, [pick], [card], queue=False, **private)
    rename_btn.click(do_rename, [pick, new_name], [table, pick, status], api_name="rename_adapter")
    delete_btn.click(do_delete, [pick, confirm], [table, pick, status, confirm], api_name="delete_adapter")
    download.click(do_zip, [pick], [zip_file], api_name="download_adapter")
    merge_btn.click(do_merge, [pick], [status], api_name="merge_adapter", concurrency_id="model")
    push_btn.click(do_push, [pick, repo, token, merged], [status], api_name="push_adapter")
    return {
        "table": table,
        "pick": pick,
        "refresh": refresh,
        "card": card,
        "use_chat": use_chat,
        "use_classify": use_classify,
        "download": download,
        "zip": zip_file,
        "merge": merge_btn,
        "rename": rename_btn,
        "new_name": new_name,
        "delete": delete_btn,
        "confirm": confirm,
        "push": push_btn,
        "status": status,
    }
