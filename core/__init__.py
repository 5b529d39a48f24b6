"""DemoForge engine: models, chat, classification, data, training. Never imports gradio."""

__version__ = "0.1.0"
