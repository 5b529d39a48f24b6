"""Chat speed of the embedded default, in one run: plain generate() vs core.chat vs the running app; cold start.

Batch 1, greedy, a ~60-token prompt, 128 new tokens (EOS ignored so every path decodes exactly 128).
  (a) plain transformers generate() in fp32           - the baseline
  (b) DemoForge's core.chat.stream_reply, auto precision
  (c) the same through the running app with gradio_client (/chat endpoint, separate server process)
Also: cold start of `python app.py` until the page is served, first (GGUF conversion) and cached.

Run:  python tests/bench/bench_chat.py            (prints a Markdown table and a JSON line)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.bench.scratch import scratch_dir  # noqa: E402 - needs ROOT on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

NEW_TOKENS = 128
SYSTEM = "You are a helpful, concise assistant."
PROMPT = (
    "I run a small bakery and want to start selling bread online. Explain, step by step, how I should set up "
    "ordering, payments and delivery, and which mistakes new online shops usually make in their first year."
)
REPEATS = 3


def _plain_generate() -> dict:
    """(a) AutoModelForCausalLM fp32 + generate(), timed without any DemoForge code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.models import embedded_chat_path

    path = embedded_chat_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    text = tok.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    kw = {"do_sample": False, "pad_token_id": tok.eos_token_id, "eos_token_id": None}
    ttft, decode = [], []
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=8, **kw)  # warm-up
        for _ in range(REPEATS):
            t = time.perf_counter()
            model.generate(ids, max_new_tokens=1, **kw)
            first = time.perf_counter() - t
            t = time.perf_counter()
            out = model.generate(ids, max_new_tokens=NEW_TOKENS, **kw)
            total = time.perf_counter() - t
            assert out.shape[1] - ids.shape[1] == NEW_TOKENS
            ttft.append(first)
            decode.append((NEW_TOKENS - 1) / (total - first))
    return {
        "prompt_tokens": int(ids.shape[1]),
        "dtype": "float32",
        "ttft_s": statistics.median(ttft),
        "decode_tok_s": statistics.median(decode),
    }


def _core_chat() -> dict:
    """(b) the engine's chat path (core.chat.stream_reply on the model thread) at the auto-chosen precision."""
    from core.config import AppConfig, GenerationSettings
    from core.engine import Engine

    engine = Engine(AppConfig())
    lm = engine.chat_model()
    lm.model.generation_config.eos_token_id = None  # decode exactly NEW_TOKENS, like (a)
    settings = GenerationSettings(temperature=0.0, max_new_tokens=NEW_TOKENS, repetition_penalty=1.0)
    history = [{"role": "user", "content": PROMPT}]
    list(engine.chat_stream(history, GenerationSettings(temperature=0.0, max_new_tokens=8), SYSTEM))  # warm-up
    ttft, decode = [], []
    for _ in range(REPEATS):
        *_, last = engine.chat_stream(history, settings, SYSTEM)
        assert last.stats.new_tokens == NEW_TOKENS, last.stats
        ttft.append(last.stats.first_token_s)
        decode.append(last.stats.decode_tokens_per_s)
    return {
        "prompt_tokens": last.stats.prompt_tokens,
        "dtype": lm.dtype,
        "ttft_s": statistics.median(ttft),
        "decode_tok_s": statistics.median(decode),
    }


def _part(name: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--part", name], cwd=ROOT, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"part {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def _serve(port: int) -> None:
    """Child process for (c): the real app on the default model, EOS ignored so replies are NEW_TOKENS long."""
    from core.config import AppConfig
    from core.engine import Engine
    from demo.server import serve_forever

    config = AppConfig(port=port)
    engine = Engine(config)
    engine.chat_model().model.generation_config.eos_token_id = None
    serve_forever(engine, config)  # as app.py serves it


def _wait_for_page(url: str, proc: subprocess.Popen, timeout: float = 300) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200 and b"gradio" in resp.read().lower():
                    return time.perf_counter() - start
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def _through_app() -> dict:
    """(c) the /chat endpoint of a running app, timed from the client side."""
    from gradio_client import Client
    from transformers import AutoTokenizer

    from core.models import embedded_chat_path
    from tests.helpers import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for_page(url, proc)
        tok = AutoTokenizer.from_pretrained(embedded_chat_path())
        client = Client(url, verbose=False)
        args = (PROMPT, None, SYSTEM, 0.0, 0.9, 50, NEW_TOKENS, 1.0, -1)
        client.predict(*args[:6], 8, 1.0, -1, api_name="/chat")  # warm-up
        ttft, decode = [], []
        for _ in range(REPEATS):
            start = time.perf_counter()
            first = last = None
            text = ""
            for text in client.submit(*args, api_name="/chat"):
                now = time.perf_counter()
                if text and first is None:
                    first = now
                last = now
            n = len(tok(text, add_special_tokens=False)["input_ids"])
            first_n = 1  # the first chunk holds at least one token; count the rest over the streaming interval
            ttft.append(first - start)
            decode.append((n - first_n) / max(last - first, 1e-9))
        return {"ttft_s": statistics.median(ttft), "decode_tok_s": statistics.median(decode), "tokens": n}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _cold_start() -> dict:
    """Seconds from `python app.py` to a served page: first start (GGUF conversion) and a cached start."""
    from tests.helpers import free_port

    home = scratch_dir("demoforge-bench-home-")
    env = {**os.environ, "DEMOFORGE_HOME": home}
    out = {}
    for run in ("first", "cached"):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            out[f"{run}_s"] = _wait_for_page(f"http://127.0.0.1:{port}/", proc)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=["a", "b"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve)
        return
    if args.part:
        print("RESULT " + json.dumps(_plain_generate() if args.part == "a" else _core_chat()))
        return
    import torch

    # (a) and (b) each in a fresh process: torch's OpenMP pools are per thread, and a process whose main thread
    # has computed already would handicap a later path that computes on another thread (see core/engine.py).
    a, b = _part("a"), _part("b")
    c = _through_app()
    cold = _cold_start()
    result = {
        "threads": torch.get_num_threads(),
        "new_tokens": NEW_TOKENS,
        "a_plain_generate_fp32": a,
        "b_core_chat": b,
        "c_app_gradio_client": c,
        "cold_start": cold,
        "b_over_a_decode": b["decode_tok_s"] / a["decode_tok_s"],
        "c_over_b_decode": c["decode_tok_s"] / b["decode_tok_s"],
        "b_over_a_ttft": b["ttft_s"] / a["ttft_s"],
        "c_over_b_ttft": c["ttft_s"] / b["ttft_s"],
    }
    print(
        f"| path | precision | decode tok/s | time to first token | ratio |\n|---|---|---|---|---|\n"
        f"| (a) plain generate() | {a['dtype']} | {a['decode_tok_s']:.1f} | {a['ttft_s'] * 1000:.0f} ms | "
        "baseline |\n"
        f"| (b) core.chat | {b['dtype']} | {b['decode_tok_s']:.1f} | {b['ttft_s'] * 1000:.0f} ms | "
        f"(b)/(a) = {result['b_over_a_decode']:.2f} |\n"
        f"| (c) app via gradio_client | {b['dtype']} | {c['decode_tok_s']:.1f} | {c['ttft_s'] * 1000:.0f} ms | "
        f"(c)/(b) = {result['c_over_b_decode']:.2f} |\n\n"
        f"Prompt {a['prompt_tokens']} tokens, {NEW_TOKENS} new tokens, greedy, batch 1, "
        f"{result['threads']} threads. Cold start of `python app.py` to a served page: first "
        f"{cold['first_s']:.1f} s (GGUF conversion), cached {cold['cached_s']:.1f} s."
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
