"""Chat engines behind one interface (:class:`ChatBackend`), and the choice between them.

``--engine auto`` serves chat with llama.cpp when llama-cpp-python is importable and the chat model is the
embedded GGUF or a .gguf file on the CPU; otherwise with transformers, saying why in the model label.
"""

from core.backends.base import ChatBackend
from core.backends.select import FallbackBackend, select_backend

__all__ = ["ChatBackend", "FallbackBackend", "select_backend"]
