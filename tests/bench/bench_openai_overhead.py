"""The overhead of DemoForge in front of an OpenAI-compatible server: tokens/s through DemoForge vs straight from it.

One ``python -m llama_cpp.server`` on the embedded GGUF (tests/integration/test_openai_backend.LlamaServer), in one run:
  direct     the ``openai`` client streaming from the server (the baseline, 1.00x)
  demoforge  gradio_client /chat streaming from a DemoForge app (``--backend openai``) in front of the same server
Greedy, 128 new tokens at most, the same prompt; the two paths alternate (direct, demoforge, direct, ...) so a change
in the machine's load hits both. Both paths get the same greedy text, so the token count of the direct run (one
token a streamed chunk) is used for both. Target: demoforge >= 0.9x direct.

Run:  python tests/bench/bench_openai_overhead.py [--repeats 3]   (prints a Markdown table and a JSON line)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.bench.scratch import scratch_dir  # noqa: E402 - needs ROOT on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DEMOFORGE_HOME", scratch_dir("demoforge-bench-"))

NEW = 128
PROMPT = "Write a long, detailed story about a lighthouse keeper. Describe every scene."


def direct(url: str, model: str) -> dict:
    """One streamed reply straight from the server: (tokens, first-token seconds, total seconds, text)."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    start = time.perf_counter()
    first, tokens, text = None, 0, ""
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], stream=True, temperature=0.0, max_tokens=NEW
    )
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta and choice.delta.content:
                tokens += 1
                text += choice.delta.content
                first = first if first is not None else time.perf_counter() - start
    return {"tokens": tokens, "first_s": first, "total_s": time.perf_counter() - start, "text": text}


def through_demoforge(client: object) -> dict:
    """One streamed reply through DemoForge's /chat, asked as the direct request is (no system prompt, greedy)."""
    start = time.perf_counter()
    first, text = None, ""
    job = client.submit(
        message=PROMPT,
        history=[],
        system_prompt="",
        temperature=0.0,
        max_new_tokens=NEW,
        repetition_penalty=1.0,
        api_name="/chat",
    )
    for update in job:
        if update and first is None:
            first = time.perf_counter() - start
        text = update or text
    return {"first_s": first, "total_s": time.perf_counter() - start, "text": text}


def rate(tokens: int, run: dict) -> float:
    """Decode tokens/s after the first token (what a reader sees streaming)."""
    return (tokens - 1) / max(run["total_s"] - run["first_s"], 1e-9)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    from gradio_client import Client

    from core.config import AppConfig
    from core.engine import Engine
    from tests.helpers import serve
    from tests.integration.test_openai_backend import ALIAS, LlamaServer

    load = os.getloadavg()
    server = LlamaServer().start()
    rows: dict[str, list[float]] = {"direct": [], "demoforge": []}
    e2e: dict[str, list[float]] = {"direct": [], "demoforge": []}
    same_text, tokens = True, 0
    try:
        config = AppConfig(backend="openai", base_url=server.url, mode="builder")
        with serve(Engine(config), config) as app_url:
            client = Client(app_url, verbose=False)
            direct(server.url, ALIAS)  # warm-up: the server's first prompt, DemoForge's first connection
            through_demoforge(client)
            for _ in range(args.repeats):
                d = direct(server.url, ALIAS)
                f = through_demoforge(client)
                same_text &= f["text"] == d["text"]
                tokens = d["tokens"]
                rows["direct"].append(rate(d["tokens"], d))
                rows["demoforge"].append(rate(d["tokens"], f))
                e2e["direct"].append(d["tokens"] / d["total_s"])
                e2e["demoforge"].append(d["tokens"] / f["total_s"])
    finally:
        server.kill()
    med = {k: statistics.median(v) for k, v in rows.items()}
    med_e2e = {k: statistics.median(v) for k, v in e2e.items()}
    result = {
        "decode_tok_s": med,
        "end_to_end_tok_s": med_e2e,
        "ratio_decode": med["demoforge"] / med["direct"],
        "ratio_end_to_end": med_e2e["demoforge"] / med_e2e["direct"],
        "same_text": same_text,
        "tokens": tokens,
        "repeats": args.repeats,
        "load_avg_before": load,
        "load_avg_after": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    print("| path | decode tok/s | end-to-end tok/s | vs direct |")
    print("|---|---|---|---|")
    for key in ("direct", "demoforge"):
        ratio = med[key] / med["direct"]
        print(f"| {key} | {med[key]:.1f} | {med_e2e[key]:.1f} | {ratio:.2f}x |")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
