"""The one place where exceptions become what a visitor sees.

A :class:`core.errors.DemoForgeError` is expected: its message was written for the user, so it is shown as is
and logged as one line. Anything else is a bug: its traceback goes to the server log under a short reference,
and the visitor gets a sentence with that reference (never a server path or a stack trace). The server keeps
serving either way.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from core.errors import DemoForgeError

log = logging.getLogger("demoforge")
F = TypeVar("F", bound=Callable[..., Any])


def to_gr_error(exc: BaseException, doing: str, duration: float | None = 10) -> gr.Error:
    """The gr.Error to raise for ``exc``; logs it (one line when expected, the traceback otherwise).

    Gradio's queue prints every raised gr.Error's traceback unless told not to, so an empty message or a wrong
    column wrote ~40 lines to the log; the error returned here is logged once, by this function."""
    if isinstance(exc, gr.Error):  # a handler's own words for a user mistake
        log.info("Refused while %s: %s", doing, exc.message)
        exc.print_exception = False
        return exc
    if isinstance(exc, DemoForgeError):
        log.info("Refused while %s: %s: %s", doing, type(exc).__name__, exc)
        return gr.Error(str(exc), duration=duration, print_exception=False)
    ref = secrets.token_hex(3)
    log.error("Unexpected error while %s [ref %s]", doing, ref, exc_info=exc)
    return gr.Error(
        f"Something went wrong while {doing} (reference {ref}; the details are in the server log). "
        "The app is still running: try again.",
        duration=duration,
        print_exception=False,
    )


def shows_errors(doing: str, duration: float | None = 10) -> Callable[[F], F]:
    """Decorate a handler (plain or generator) so every exception reaches the visitor through :func:`to_gr_error`."""

    def wrap(fn: F) -> F:
        import inspect

        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen(*args: Any, **kwargs: Any) -> Any:
                try:
                    yield from fn(*args, **kwargs)
                except Exception as exc:
                    raise to_gr_error(exc, doing, duration) from exc

            return gen  # type: ignore[return-value]

        @functools.wraps(fn)
        def plain(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                raise to_gr_error(exc, doing, duration) from exc

        return plain  # type: ignore[return-value]

    return wrap
