"""Turn unexpected exceptions into a short message for the user; the details go to the server log."""

from __future__ import annotations

import logging

import gradio as gr

log = logging.getLogger("demoforge")


def user_error(exc: BaseException, doing: str) -> gr.Error:
    """Log ``exc`` with its traceback and return a short gr.Error to raise; the server keeps serving."""
    log.error("Error while %s", doing, exc_info=exc)
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return gr.Error(f"Something went wrong while {doing} ({detail}). The app is still running; try again.")
