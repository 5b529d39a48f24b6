"""The adapter library: every finished adapter with its card; use, rename, delete, download (the adapter or its
run card), merge, export to GGUF / Ollama, serve on another backend, push, publish to a Space.

Every action goes through ``engine.library``. Actions draw no progress overlay on their outputs
(``show_progress="hidden"``): a refusal is a toast and a status line, so a failed delete never leaves red badges
over the table after a later success. A rename or delete returns what changed (:class:`LibraryChange`), and
``demo.build_app`` chains the refresh of every adapter picker after it (never before: see ``wire_pickers``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from core.engine import Engine
from core.errors import AdapterError
from demo.errors import shows_errors
from demo.queue import MODEL_QUEUE

COLUMNS = ["name", "task", "base model", "metrics", "created"]
EXPORT_CHOICES = [
    ("GGUF F16 (merged into the base)", "f16"),
    ("GGUF Q8_0 (merged, half the size)", "q8_0"),
    ("GGUF LoRA (base GGUF + adapter)", "lora"),
]


@dataclass(frozen=True)
class LibraryChange:
    """What the last rename or delete did, for the pickers of the other tabs."""

    old: str
    new: str | None = None
    """The new name; None when the adapter was deleted."""


@dataclass
class LibraryTab:
    """The Adapters tab's components."""

    table: gr.Dataframe
    pick: gr.Dropdown
    refresh: gr.Button
    card: gr.Markdown
    use_chat: gr.Button
    use_classify: gr.Button
    download: gr.Button
    merge: gr.Button
    zip: gr.File
    new_name: gr.Textbox
    rename: gr.Button
    confirm: gr.Textbox
    delete: gr.Button
    repo: gr.Textbox
    token: gr.Textbox
    merged: gr.Checkbox
    push: gr.Button
    export_kind: gr.Radio
    export: gr.Button
    exported: gr.File
    serve: gr.Button
    serve_help: gr.Markdown
    status: gr.Markdown
    card_download: gr.Button
    space_id: gr.Textbox
    space_token: gr.Textbox
    space_profile: gr.Dropdown
    space_private: gr.Checkbox
    publish: gr.Button
    change: gr.State
    """The last :class:`LibraryChange` of this page (None before any)."""
    changed: tuple[Any, ...] = ()
    """The rename and delete events, for ``demo.build_app`` to chain the pickers' refresh after them."""


# --- handlers ---------------------------------------------------------------------------------------------------------


def library_frame(engine: Engine) -> pd.DataFrame:
    """The library as a table, newest first."""
    rows = []
    for a in engine.library.list():
        m = a.metrics
        shown = ", ".join(f"{k} {m[k]:.3f}" for k in ("eval_loss", "accuracy", "macro_f1") if m.get(k) is not None)
        rows.append([a.name, a.task, a.base_model, shown or f"{m.get('steps', '?')} steps", a.created])
    return pd.DataFrame(rows, columns=COLUMNS)


def library_update(engine: Engine, selected: str | None = None) -> tuple[pd.DataFrame, Any]:
    """Fresh table and picker (keeping ``selected`` when it still exists)."""
    choices = [a.name for a in engine.library.list()]
    value = selected if selected in choices else (choices[0] if choices else None)
    return library_frame(engine), gr.update(choices=choices, value=value)


@shows_errors("reading the adapter card")
def show_card(engine: Engine, name: str | None) -> str:
    """The picked adapter's card (Markdown)."""
    if not name:
        return "No adapter selected. Train one in the Fine-tune tab."
    return engine.library.card_markdown(name)


@shows_errors("renaming the adapter")
def rename_adapter(engine: Engine, name: str | None, new: str) -> tuple[pd.DataFrame, Any, str, LibraryChange]:
    """/rename_adapter: rename ``name`` to ``new``; returns table, picker, status (and the change)."""
    info = engine.library.rename(name or "", new or "")
    frame, pick = library_update(engine, info.name)
    return frame, pick, f"Renamed **{name}** to **{info.name}**.", LibraryChange(name or "", info.name)


@shows_errors("deleting the adapter")
def delete_adapter(engine: Engine, name: str | None, typed: str) -> tuple[pd.DataFrame, Any, str, str, LibraryChange]:
    """/delete_adapter: delete ``name`` when ``typed`` repeats it; returns table, picker, status, confirm box."""
    engine.library.delete(name or "", typed or "")
    frame, pick = library_update(engine)
    return frame, pick, f"Deleted **{name}**.", "", LibraryChange(name or "")


@shows_errors("zipping the adapter")
def download_adapter(engine: Engine, name: str | None) -> str:
    """/download_adapter: a zip of the adapter folder."""
    return str(engine.library.zip(name or ""))


@shows_errors("making the run card")
def download_run_card(engine: Engine, name: str | None) -> str:
    """/download_run_card: the adapter's run card (HTML), the one its run wrote or one made now."""
    if not name:
        raise AdapterError("No adapter selected: pick one in the list first.")
    return str(engine.run_card(name))


@shows_errors("merging the adapter")
def merge_adapter(engine: Engine, name: str | None) -> str:
    """/merge_adapter: merge into a copy of its base, saved as safetensors."""
    path = engine.library.merge(name or "")
    return (
        f"Merged **{name}** into its base: `{path.name}` (safetensors; load it with `from_pretrained`, and see its "
        "README.md: a classifier's head may read the mean of the token vectors, not `model(**enc).logits`)."
    )


@shows_errors("exporting the adapter")
def export_adapter(
    engine: Engine,
    name: str | None,
    kind: str | None,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio finds the tracker by this default
) -> tuple[list[str], str]:
    """/export_gguf: GGUF (F16, Q8_0 or LoRA) and an Ollama Modelfile into ``exports/<name>/``; returns the files
    to download and a status naming them relative to the DemoForge home."""
    result = engine.library.export_gguf(
        name or "",
        kind or "f16",
        engine.config.profile.system_prompt,
        on_progress=lambda fraction, desc: progress(fraction, desc=desc),
    )
    shown = ", ".join(f"`{engine.library.shown_path(p)}`" for p in result.files)
    return [str(p) for p in result.files], (
        f"Exported **{name}** as {kind} GGUF into `{engine.library.shown_path(result.folder)}`: {shown}. "
        "See *Serve on backend* for the commands."
    )


@shows_errors("writing the serve commands")
def serve_adapter(engine: Engine, name: str | None) -> str:
    """/serve_commands: the command lines that serve the adapter on vLLM, llama.cpp's server and Ollama."""
    return engine.library.serve_commands(name or "")


@shows_errors("pushing to the Hub")
def push_adapter(engine: Engine, name: str | None, repo_id: str, token: str, merged: bool) -> str:
    """/push_adapter: upload the adapter (or the merged model) to the Hub."""
    url = engine.library.push(name or "", (repo_id or "").strip(), token or "", merged=bool(merged))
    return f"Pushed to [{url}]({url})."


@shows_errors("publishing to a Space")
def publish_space(
    engine: Engine,
    name: str | None,
    profile: str | None,
    space_id: str,
    token: str,
    private: bool,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio finds the tracker by this default
) -> str:
    """/publish_space: build a Space bundle of the adapter with the profile, then create the Space and upload it.

    The token goes to the Hub and nowhere else: not into the bundle, the status or the log. With no token or no
    network, the error names the bundle folder that was written (relative to the DemoForge home).
    """
    if not name:
        raise AdapterError("No adapter selected: pick the adapter to publish in the list first.")
    done = engine.library.publish(
        name,
        profile or "default",
        space_id or "",
        token or "",
        private=bool(private),
        on_progress=lambda fraction, desc: progress(fraction, desc=desc),
    )
    bundle = done.bundle
    return (
        f"Published **{name}** to [{done.url}]({done.url}): a {bundle.size_bytes / 1e6:.0f} MB bundle from "
        f"`{engine.library.shown_path(bundle.path)}`. The Space builds and starts in a few minutes; visitors see "
        "the audience view (set the Space secret DEMOFORGE_BUILDER_AUTH to open /builder)."
    )


def profile_update(engine: Engine, selected: str | None) -> Any:
    """Fresh profile choices for Publish (one saved a moment ago appears), keeping ``selected``."""
    names = engine.library.profile_names()
    return gr.update(choices=names, value=selected if selected in names else (names[0] if names else None))


# --- layout and wiring ------------------------------------------------------------------------------------------------


def build_library_tab(engine: Engine) -> LibraryTab:
    """Build the adapter library inside the current Blocks context and wire its own events."""
    frame, _ = library_update(engine)
    table = gr.Dataframe(value=frame, headers=COLUMNS, interactive=False, label="Adapters", elem_id="df-lib-table")
    with gr.Row():
        names = list(frame["name"])
        pick = gr.Dropdown(choices=names, label="Adapter", scale=3, allow_custom_value=True, elem_id="df-lib-pick")
        refresh = gr.Button("Refresh", scale=1, elem_id="df-lib-refresh")
    card = gr.Markdown("", elem_id="df-lib-card")
    with gr.Row():
        use_chat = gr.Button("Use in Chat", variant="primary", elem_id="df-lib-use-chat")
        use_classify = gr.Button("Use in Classify", variant="primary", elem_id="df-lib-use-classify")
        download = gr.Button("Download as zip", elem_id="df-lib-download")
        card_download = gr.Button("Download run card", elem_id="df-lib-card-download")
        merge_btn = gr.Button("Merge into base (safetensors)", elem_id="df-lib-merge")
    zip_file = gr.File(label="Download", interactive=False, elem_id="df-lib-zip")
    with gr.Accordion("Rename or delete", open=False):
        with gr.Row():
            new_name = gr.Textbox(label="New name", scale=3, elem_id="df-lib-new-name")
            rename_btn = gr.Button("Rename", scale=1, elem_id="df-lib-rename")
        with gr.Row():
            confirm = gr.Textbox(label="Type the adapter's name to confirm deletion", scale=3, elem_id="df-lib-confirm")
            delete_btn = gr.Button("Delete", variant="stop", scale=1, elem_id="df-lib-delete")
    with gr.Accordion("Push to the Hugging Face Hub", open=False):
        with gr.Row():
            repo = gr.Textbox(label="Repo id", placeholder="your-name/model-name", scale=2)
            token = gr.Textbox(label="HF token (write)", type="password", scale=2)
            merged = gr.Checkbox(label="Push the merged model instead of the adapter", value=False)
        push_btn = gr.Button("Push", elem_id="df-lib-push")
    with gr.Accordion("Publish to a Hugging Face Space", open=False):
        gr.Markdown(
            "Builds a Space bundle (app, pinned requirements, embedded models, this adapter and the profile, "
            "audience view on) into `bundles/` in the DemoForge home, then creates the Space and uploads it. "
            "The token is used for this upload only: it is never stored or logged."
        )
        with gr.Row():
            space_id = gr.Textbox(label="Space id", placeholder="your-name/space-name", scale=2, elem_id="df-pub-id")
            space_token = gr.Textbox(label="HF token (write)", type="password", scale=2, elem_id="df-pub-token")
        with gr.Row():
            profiles = engine.library.profile_names()
            space_profile = gr.Dropdown(
                profiles, value=profiles[0] if profiles else None, label="Profile", scale=2, elem_id="df-pub-profile"
            )
            space_private = gr.Checkbox(label="Private Space", value=False, scale=1, elem_id="df-pub-private")
        publish_btn = gr.Button("Publish", variant="primary", elem_id="df-pub-go")
    with gr.Accordion("Export for llama.cpp and Ollama (GGUF + Modelfile)", open=False):
        with gr.Row():
            export_kind = gr.Radio(EXPORT_CHOICES, value="f16", label="Export as", scale=3, elem_id="df-lib-gguf-kind")
            export_btn = gr.Button("Export", scale=1, elem_id="df-lib-export")
        exported = gr.File(label="Exported files", file_count="multiple", interactive=False, elem_id="df-lib-exported")
    with gr.Accordion("Serve on backend (vLLM, llama.cpp, Ollama)", open=False):
        serve_btn = gr.Button("Show the commands", elem_id="df-lib-serve")
        serve_help = gr.Markdown("", elem_id="df-lib-serve-help")
    status = gr.Markdown("", elem_id="df-lib-status")
    tab = LibraryTab(
        table, pick, refresh, card, use_chat, use_classify, download, merge_btn, zip_file, new_name, rename_btn,
        confirm, delete_btn, repo, token, merged, push_btn, export_kind, export_btn, exported, serve_btn, serve_help,
        status, card_download, space_id, space_token, space_profile, space_private, publish_btn, gr.State(None),
    )  # fmt: skip
    tab.changed = wire_library(engine, tab)
    return tab


def wire_library(engine: Engine, tab: LibraryTab) -> tuple[Any, Any]:
    """The library's own events and endpoints; returns the rename and delete events (the cross-tab refresh is
    chained after them in ``demo.build_app``)."""
    quiet: dict[str, Any] = {"show_progress": "hidden"}
    private: dict[str, Any] = {"api_visibility": "private", **quiet}
    e = functools.partial
    tab.refresh.click(e(library_update, engine), [tab.pick], [tab.table, tab.pick], queue=False, **private).then(
        e(show_card, engine), [tab.pick], [tab.card], **private
    ).then(e(profile_update, engine), [tab.space_profile], [tab.space_profile], **private)
    tab.pick.change(e(show_card, engine), [tab.pick], [tab.card], queue=False, **private)
    listed = [tab.table, tab.pick, tab.status]
    renamed = tab.rename.click(
        e(rename_adapter, engine), [tab.pick, tab.new_name], [*listed, tab.change], api_name="rename_adapter", **quiet
    )
    deleted = tab.delete.click(
        e(delete_adapter, engine),
        [tab.pick, tab.confirm],
        [*listed, tab.confirm, tab.change],
        api_name="delete_adapter",
        **quiet,
    )
    tab.download.click(e(download_adapter, engine), [tab.pick], [tab.zip], api_name="download_adapter", **quiet)
    tab.card_download.click(
        e(download_run_card, engine),
        [tab.pick],
        [tab.zip],
        api_name="download_run_card",
        concurrency_id=MODEL_QUEUE,  # a card made now answers with the model
        show_progress="minimal",
    )
    tab.merge.click(
        e(merge_adapter, engine),
        [tab.pick],
        [tab.status],
        api_name="merge_adapter",
        concurrency_id=MODEL_QUEUE,
        show_progress="minimal",
    )
    tab.export.click(
        e(export_adapter, engine),
        [tab.pick, tab.export_kind],
        [tab.exported, tab.status],
        api_name="export_gguf",
        concurrency_id="model",
        show_progress="full",
    )
    tab.serve.click(e(serve_adapter, engine), [tab.pick], [tab.serve_help], api_name="serve_commands", **quiet)
    tab.push.click(
        e(push_adapter, engine), [tab.pick, tab.repo, tab.token, tab.merged], [tab.status], api_name="push_adapter"
    )
    tab.publish.click(
        e(publish_space, engine),
        [tab.pick, tab.space_profile, tab.space_id, tab.space_token, tab.space_private],
        [tab.status],
        api_name="publish_space",
        show_progress="full",
    )
    return renamed, deleted
