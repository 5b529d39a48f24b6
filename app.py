"""DemoForge entry point (also the Hugging Face Spaces entry): flags -> AppConfig -> build_app() -> launch()."""

from __future__ import annotations

import os

# Before gradio is imported: no analytics calls from a demo machine (and none possible offline).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# OMP_WAIT_POLICY is left to GNU OpenMP's default (spin briefly, then sleep). PASSIVE, set here before, made every
# one of ggml's barriers (hundreds per token) a futex sleep: through the app the fast engine decoded 40 instead of 63
# tok/s on a quiet 2-core Xeon (plain weights; 84 instead of 126 with AMX), and no faster with two CPU hogs beside it
# (45 vs 42 tok/s). One OpenMP pool for torch and llama.cpp (core.backends.batching) is what keeps a busy machine sane.

import argparse
import logging
import sys
import time
from pathlib import Path

from core.config import AppConfig, ConfigError, DemoProfile, parse_auth
from core.errors import ModelError  # no torch here: a typo in a flag fails in a fraction of a second


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; environment variables give the defaults where noted."""
    on_space = bool(os.environ.get("SPACE_ID"))
    p = argparse.ArgumentParser(prog="app.py", description="DemoForge: show off your own AI model in minutes.")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if on_space else "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument(
        "--model",
        default=os.environ.get("DEMOFORGE_MODEL", "default"),
        help="'default' (embedded SmolLM2), a Hub id, a local folder or a .gguf file",
    )
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument(
        "--profile",
        default=os.environ.get("DEMOFORGE_PROFILE", "default"),
        help="a demo profile: a name in assets/profiles/ or a YAML path",
    )
    p.add_argument("--share", action="store_true", help="public Gradio share link (requires --auth)")
    p.add_argument(
        "--auth", default=None, help="user:password (or env DEMOFORGE_AUTH); the audience's in audience mode"
    )
    p.add_argument(
        "--builder-auth", default=None, help="builder's user:password in audience mode (or env DEMOFORGE_BUILDER_AUTH)"
    )
    p.add_argument(
        "--mode",
        default=os.environ.get("DEMOFORGE_MODE", "auto"),
        choices=["auto", "audience", "builder"],
        help="'audience': the profile's view at / and the builder at /builder; 'auto': audience with --share or on "
        "a Space, else builder",
    )
    p.add_argument("--queue-size", type=int, default=16, help="waiting requests before 'busy'")
    p.add_argument(
        "--engine",
        default=os.environ.get("DEMOFORGE_ENGINE", "auto"),
        choices=["auto", "transformers", "llamacpp"],
        help="chat engine: llamacpp (fast, GGUF on CPU), transformers, or auto",
    )
    p.add_argument(
        "--concurrency", type=int, default=None, help="chats at once (default: 8 on llama.cpp, 1 on transformers)"
    )
    p.add_argument("--max-upload-mb", type=int, default=50)
    p.add_argument(
        "--backend",
        default=os.environ.get("DEMOFORGE_BACKEND", "local"),
        choices=["local", "openai"],
        help="where chat runs: 'local' (--engine, in this process) or 'openai' (an OpenAI-compatible server: "
        "vLLM, TGI, llama.cpp's server, Ollama); classification and training stay local",
    )
    p.add_argument(
        "--base-url",
        default=os.environ.get("DEMOFORGE_BASE_URL"),
        help="--backend openai: the server's API root, e.g. http://127.0.0.1:8000/v1 (or env DEMOFORGE_BASE_URL)",
    )
    p.add_argument(
        "--api-key", default=None, help="--backend openai: the server's API key (or env DEMOFORGE_API_KEY; never shown)"
    )
    p.add_argument(
        "--served-model",
        default=os.environ.get("DEMOFORGE_SERVED_MODEL"),
        help="--backend openai: the served model to chat with (default: the first the server lists). --model stays "
        "the local base your adapters are trained on",
    )
    p.add_argument(
        "--context-length",
        type=int,
        default=2048,
        help="--backend openai: the served model's context when the server does not say (vLLM and llama-server do)",
    )
    p.add_argument(
        "--mcp",
        action="store_true",
        default=os.environ.get("DEMOFORGE_MCP", "").lower() in ("1", "true", "yes"),
        help="also serve an MCP server (streamable HTTP at <audience url>/gradio_api/mcp/) with the audience-safe "
        "tools only: chat and classify (or env DEMOFORGE_MCP=1)",
    )
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> AppConfig:
    """Build and validate the AppConfig; raises ConfigError with a message for the user."""
    return AppConfig(
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        host=args.host,
        port=args.port,
        profile=DemoProfile.load(args.profile),
        share=args.share,
        auth=parse_auth(args.auth),
        builder_auth=parse_auth(args.builder_auth, "DEMOFORGE_BUILDER_AUTH"),
        mode=args.mode,
        queue_size=args.queue_size,
        concurrency=args.concurrency or 1,
        engine=args.engine,
        max_upload_mb=args.max_upload_mb,
        backend=args.backend,
        base_url=args.base_url,
        api_key=args.api_key or os.environ.get("DEMOFORGE_API_KEY") or None,
        served_model=args.served_model,
        context_length=args.context_length,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args = parse_args(argv)
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Heavy imports after the flags are checked, so a typo fails in a fraction of a second.
    from core import zerogpu

    if zerogpu.prepare(config):  # on a ZeroGPU Space `spaces` must come before torch (core/zerogpu.py)
        print("ZeroGPU Space: model calls borrow a GPU per request; training is off.", flush=True)
    from core.engine import Engine

    # A published Space bundle carries its adapters beside app.py: copy them into the DemoForge home (issue 11).
    from core.publish import seed_home
    from demo.server import serve_forever

    if seeded := seed_home(Path(__file__).resolve().parent):
        print(f"Adapters from the bundle: {', '.join(seeded)}", flush=True)
    engine = Engine(config)
    zerogpu.attach(engine)
    start = time.perf_counter()
    try:
        remote = config.backend == "openai"
        print(f"Connecting to {config.base_url}…" if remote else f"Loading model {config.model!r}…", flush=True)
        label = engine.chat_label()
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Model ready: {label} ({time.perf_counter() - start:.1f}s)", flush=True)
    if args.concurrency is None:  # measured: llama.cpp batches chats in flight; transformers serves one at a time
        config.concurrency = engine.backend.recommended_concurrency
    # --- role split (issue 11): one server, the audience app at / and the builder app at /builder in audience mode,
    # the builder app at / otherwise; see demo/server.py.
    try:
        serve_forever(engine, config, mcp=args.mcp)
    except ConfigError as exc:  # a profile naming adapters or labels the library has not got
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
