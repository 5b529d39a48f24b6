"""One error model for DemoForge: every domain error derives from :class:`DemoForgeError`.

A domain error is *expected*: its message is written for the person using the app (what was wrong, how to fix
it) and the UI shows it as is. Anything else reaching the UI is a bug: ``demo.errors`` logs its traceback and
shows a short message with a reference instead. This module imports nothing heavy (no torch), so ``app.py`` and
``demo/`` can catch these before any model library is loaded.

Each class also keeps the builtin base it had before (``ValueError`` for bad input, ``RuntimeError`` for a state
that cannot be served), so callers that catch those keep working.
"""

from __future__ import annotations


class DemoForgeError(Exception):
    """Base of every expected DemoForge error; ``str(error)`` is the message for the user."""

    role_hint: str | None = None
    """Set on permission errors: the role that may do the action (shown to the visitor)."""


class ConfigError(DemoForgeError, ValueError):
    """A config value is out of range or malformed; the message says which field and what is allowed."""


class ModelError(DemoForgeError, RuntimeError):
    """A model spec cannot be resolved or loaded. The message says what, why, and how to fix it."""


class DataError(DemoForgeError, ValueError):
    """A problem with the user's data; the message says where, what was expected and how to fix it."""


class ChatError(DemoForgeError, ValueError):
    """A chat request that cannot be served as given (e.g. a single message longer than the context)."""


class ClassifyError(DemoForgeError, ValueError):
    """Bad labels, a broken adapter folder, or an unusable model; the message says what and how to fix it."""


class AdapterError(DemoForgeError, ValueError):
    """An adapter operation that cannot be done as asked; the message says why and what to do."""


class ExportError(DemoForgeError, RuntimeError):
    """An export that cannot be done; the message says why and what to do."""


class TrainError(DemoForgeError, RuntimeError):
    """Training cannot start or continue; the message says why and what to change."""


class JobError(DemoForgeError, RuntimeError):
    """A job request that cannot be done (unknown run, nothing to resume...)."""


class JobBusyError(JobError):
    """A training run is already in progress; only one runs at a time."""


class PermissionDenied(DemoForgeError, PermissionError):
    """The caller's role may not do this (an audience visitor calling a builder action)."""
