"""Chat engines on the embedded SmolLM2, in one run: transformers vs llama.cpp (plain API) vs DemoForge's fast engine.

Single stream, batch 1, greedy, a ~65-token prompt, 128 new tokens (EOS ignored so every path decodes 128):
  transformers generate() fp32 (and bf16 where the CPU has native bf16)
  llama-cpp-python's high-level API (Llama.generate) on the same GGUF  - the in-run baseline (1.00x)
  DemoForge's fast engine (core.backends.llamacpp), on the base and with a rank-16 all-linear LoRA adapter
Adapter switching (first use = conversion to a GGUF LoRA, then cached).
Through the running app (`python app.py` in its own process, gradio_client /chat, streaming): one chat, then 8 at once.
Peak RSS of that server: base only, then after chatting with 3 adapters.

The fast engine's time to first token: a new prompt, one whose system prompt is cached, a conversation's next turn.
Optionally CTranslate2 int8 on the same model (--ctranslate2).

Run:  python tests/bench/bench_engines.py [--short] [--skip-app] [--threads N] [--ctranslate2]
      (prints a Markdown table and a JSON line; --short: one run per figure, ~half the time)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.bench.scratch import scratch_dir  # noqa: E402 - needs ROOT on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DEMOFORGE_HOME", scratch_dir("demoforge-bench-"))

NEW = 128
SYSTEM = "You are a helpful, concise assistant."
PROMPT = (
    "I run a small bakery and want to start selling bread online. Explain, step by step, how I should set up "
    "ordering, payments and delivery, and which mistakes new online shops usually make in their first year."
)
REPEATS = 3
STORY = "Write a long, detailed story about {}. Describe every scene."
NEXT = "Thanks! Which of those steps should I do first?"
TOPICS = ["a dragon", "a baker", "a lighthouse", "a robot", "a city", "a river", "a ship", "a garden"]


def _ids() -> list[int]:
    from transformers import AutoTokenizer

    from core.chat import build_prompt, normalise_messages
    from core.models import embedded_chat_path

    tok = AutoTokenizer.from_pretrained(embedded_chat_path())
    msgs = normalise_messages([{"role": "user", "content": PROMPT}], SYSTEM)
    return build_prompt(tok, msgs, 8192, NEW).input_ids


def _median(runs: list[tuple[float, float]]) -> dict:
    return {"ttft_s": statistics.median(r[0] for r in runs), "decode_tok_s": statistics.median(r[1] for r in runs)}


def bench_transformers(ids: list[int], dtype: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from core.models import embedded_chat_path

    model = AutoModelForCausalLM.from_pretrained(embedded_chat_path(), dtype=getattr(torch, dtype)).eval()
    x = torch.tensor([ids])
    kw = {"do_sample": False, "pad_token_id": 2, "eos_token_id": None}
    runs = []
    with torch.inference_mode():
        model.generate(x, max_new_tokens=4, **kw)
        for _ in range(REPEATS):
            t = time.perf_counter()
            model.generate(x, max_new_tokens=1, **kw)
            first = time.perf_counter() - t
            t = time.perf_counter()
            model.generate(x, max_new_tokens=NEW, **kw)
            runs.append((first, (NEW - 1) / (time.perf_counter() - t - first)))
    return _median(runs)


def bench_llama_plain(ids: list[int], threads: int, repacked: bool) -> dict:
    from core.backends.llamacpp import plain_llama
    from core.models import embedded_gguf_file

    llm = plain_llama(embedded_gguf_file(), repacked, n_ctx=1024, n_threads=threads, n_threads_batch=threads)
    runs = []
    for i in range(REPEATS + 1):
        t = time.perf_counter()
        first = None
        llm.reset()  # else generate() reuses the previous run's KV for the shared prompt and skips the prefill
        for n, _ in enumerate(llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True), 1):
            if first is None:
                first = time.perf_counter() - t
            if n == NEW:
                break
        if i:  # the first run warms up
            runs.append((first, (NEW - 1) / (time.perf_counter() - t - first)))
    return _median(runs)


def _fast_run(backend, ids: list[int], lora=None) -> tuple[float, float]:
    from core.backends.batching import Request
    from core.config import GenerationSettings

    req = Request(ids=ids, settings=GenerationSettings(temperature=0.0, max_new_tokens=NEW, repetition_penalty=1.0))
    req.lora, req.ignore_eos = lora, True
    backend._sched.forget_prefixes()  # a cold prompt, as the baseline's (bench_fast_ttft measures the cached cases)
    t = time.perf_counter()
    backend._sched.submit(req)
    first = None
    while True:
        kind, _ = req.out.get()
        if kind == "text" and first is None:
            first = time.perf_counter() - t
        elif kind != "text":
            break
    return first, (NEW - 1) / (time.perf_counter() - t - first)


_ENGINE = None


def _engine():
    """An engine used only for its model thread, where the app runs all torch work and the fast engine's steps
    (torch and llama.cpp share one OpenMP runtime, which is slow when each drives it from its own thread)."""
    global _ENGINE
    if _ENGINE is None:
        from core.config import AppConfig
        from core.engine import Engine

        _ENGINE = Engine(AppConfig(model="default"))
    return _ENGINE


def _on_model_thread(fn, *args):
    return _engine().on_model_thread(fn, *args)


def _fast_backend(options):
    """The fast engine wired as the app wires it: bursts of steps on the model thread."""
    from transformers import AutoTokenizer

    from core.backends.llamacpp import LlamaCppBackend
    from core.models import embedded_chat_path, embedded_gguf_file

    tok = AutoTokenizer.from_pretrained(embedded_chat_path())
    return LlamaCppBackend(
        embedded_gguf_file(),
        tok,
        "default",
        options,
        exclusive=_on_model_thread,
        others_waiting=lambda: _engine().model_thread_waiting > 0,
    )


def bench_fast(ids: list[int], threads: int) -> dict:
    from core.backends.llamacpp import LlamaCppOptions

    out = {}
    backend = _fast_backend(LlamaCppOptions(threads=threads))
    _fast_run(backend, ids)
    out["fast"] = _median([_fast_run(backend, ids) for _ in range(REPEATS)])
    _make_adapters(1)
    t = time.perf_counter()
    backend.switch_adapter("bench-0")
    out["switch_first_s"] = time.perf_counter() - t
    t = time.perf_counter()
    lora = backend._lora("bench-0")
    out["switch_cached_s"] = time.perf_counter() - t
    _fast_run(backend, ids, lora)
    out["fast_lora"] = _median([_fast_run(backend, ids, lora) for _ in range(REPEATS)])
    backend.close()
    return out


def bench_fast_ttft(ids: list[int]) -> dict:
    """Time to the first token of the fast engine (threads measured while serving, as in the app) when the prompt
    is new to it, when only the system prompt is cached (a new visitor), and on a conversation's next turn."""
    from core.backends.llamacpp import LlamaCppOptions
    from core.chat import build_prompt, normalise_messages
    from core.config import GenerationSettings

    backend = _fast_backend(LlamaCppOptions())
    tok = backend.tokenizer
    sched = backend._sched
    settings = GenerationSettings(temperature=0.0, max_new_tokens=NEW, repetition_penalty=1.0)

    def ttft(history: list[dict]) -> tuple[float, int, str]:
        before = sched.reused_tokens
        *_, last = backend.stream(history, settings, SYSTEM, min_interval_s=0)
        return last.stats.first_token_s, sched.reused_tokens - before, last.text

    _fast_run(backend, ids)  # warm up (and let the thread count settle)
    cold, shared, turn = [], [], []
    for i in range(REPEATS):
        sched.forget_prefixes()
        cold.append(ttft([{"role": "user", "content": PROMPT}]))
        sched.forget_prefixes()
        ttft([{"role": "user", "content": STORY.format(TOPICS[i])}])  # another visitor, same system prompt
        shared.append(ttft([{"role": "user", "content": PROMPT}]))
        first = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": shared[-1][2]}]
        turn.append(ttft([*first, {"role": "user", "content": NEXT}]))
    next_ids = build_prompt(
        tok,
        normalise_messages([*first, {"role": "user", "content": NEXT}], SYSTEM),
        backend.context_length,
        NEW,
    ).input_ids

    def row(runs: list[tuple[float, int, str]], prompt: int) -> dict:
        return {"ttft_s": statistics.median(r[0] for r in runs), "prompt_tokens": prompt, "reused": runs[0][1]}

    out = {
        "cold": row(cold, len(ids)),
        "system_prompt_cached": row(shared, len(ids)),
        "next_turn": row(turn, len(next_ids)),
        "threads": sched._threads,
        "thread_switches": sched.tuner.switches if sched.tuner else 0,
    }
    backend.close()
    return out


def bench_ctranslate2(ids: list[int], threads: int) -> dict:
    """CTranslate2 int8 on the same model (converted from the safetensors copy, offline): install and convert
    times, time to first token and decode tok/s. Needs `pip install ctranslate2==4.8.0` (a binary wheel)."""
    try:
        import ctranslate2
    except ImportError:
        return {"skipped": "ctranslate2 is not installed: pip install ctranslate2==4.8.0 (binary wheel, ~10 s)"}
    from transformers import AutoTokenizer

    from core.models import embedded_chat_path

    out_dir = Path(scratch_dir("ct2-"))
    t = time.perf_counter()
    ctranslate2.converters.TransformersConverter(str(embedded_chat_path())).convert(
        str(out_dir), quantization="int8", force=True
    )
    convert_s = time.perf_counter() - t
    gen = ctranslate2.Generator(str(out_dir), device="cpu", compute_type="int8", intra_threads=threads)
    tokens = AutoTokenizer.from_pretrained(embedded_chat_path()).convert_ids_to_tokens(ids)
    runs = []
    for i in range(REPEATS + 1):
        t = time.perf_counter()
        first, n = None, 0
        for _ in gen.generate_tokens(tokens, max_length=NEW, sampling_topk=1, end_token=[]):
            n += 1
            if first is None:
                first = time.perf_counter() - t
        if i:
            runs.append((first, (n - 1) / (time.perf_counter() - t - first)))
    return {**_median(runs), "convert_s": convert_s, "version": ctranslate2.__version__}


def _make_adapters(n: int) -> None:
    """``n`` rank-16 all-linear LoRA adapters on SmolLM2 (random small B weights), saved like core.train saves them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core import adapters
    from core.models import embedded_chat_path

    for i in range(n):
        folder = adapters.adapters_dir() / f"bench-{i}"
        if folder.is_dir():
            continue
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_pretrained(embedded_chat_path(), dtype=torch.float32)
        peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.005)
        peft_model.save_pretrained(folder)
        (folder / "adapter_card.json").write_text(
            json.dumps({"name": folder.name, "task": "sft", "base_model": "default", "created": f"2026-01-0{i + 1}"})
        )


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _chat(client, message: str, adapter: str = "") -> tuple[float, float, str]:
    """(seconds to the first text, seconds to the end, reply) of one streamed /chat call."""
    t = time.perf_counter()
    first, text = None, ""
    for text in client.submit(message, None, SYSTEM, 0.0, 0.9, 50, NEW, 1.0, -1, adapter, api_name="/chat"):
        if text and first is None:
            first = time.perf_counter() - t
    return first or float("nan"), time.perf_counter() - t, text


def bench_app(engine: str, concurrency: int) -> dict:
    from gradio_client import Client
    from transformers import AutoTokenizer

    from core.models import embedded_chat_path
    from tests.bench.bench_chat import _wait_for_page
    from tests.helpers import free_port

    tok = AutoTokenizer.from_pretrained(embedded_chat_path())
    n_tokens = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    port = free_port()
    # `python app.py` itself, so that what it sets before torch loads (once, OMP_WAIT_POLICY=PASSIVE: a third of
    # the speed) is measured too; a server built in a script of ours hid that.
    args = ["--port", str(port), "--concurrency", str(concurrency), "--queue-size", "64", "--engine", engine]
    proc = subprocess.Popen([sys.executable, "app.py", *args], cwd=ROOT, env=os.environ.copy())
    out: dict = {}
    try:
        _wait_for_page(f"http://127.0.0.1:{port}/", proc)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        _chat(client, "Hi")
        single = []
        for _ in range(REPEATS):
            first, total, text = _chat(client, PROMPT)
            n = n_tokens(text)
            single.append((first, (n - 1) / (total - first), n))
        out["single"] = {
            "ttft_s": statistics.median(s[0] for s in single),
            "decode_tok_s": statistics.median(s[1] for s in single),
            "tokens": single[0][2],
            "wall_tok_s": statistics.median(s[2] / (s[0] + (s[2] - 1) / s[1]) for s in single),
        }
        errors: list[str] = []

        def one(job: tuple) -> tuple[float, int]:
            visitor, topic = job
            try:
                first, _, text = _chat(visitor, STORY.format(topic))
                return first, n_tokens(text)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(repr(exc))
                return float("nan"), 0

        with ThreadPoolExecutor(len(TOPICS)) as pool:
            # Each visitor's page is open before the clock starts: the wall time is the chats', not the handshakes'.
            visitors = list(pool.map(lambda _: Client(f"http://127.0.0.1:{port}/", verbose=False), TOPICS))
            t = time.perf_counter()
            results = list(pool.map(one, zip(visitors, TOPICS)))
        wall = time.perf_counter() - t
        ttfts = sorted(r[0] for r in results)
        out["concurrent"] = {
            "clients": len(TOPICS),
            "tokens": sum(r[1] for r in results),
            "aggregate_tok_s": sum(r[1] for r in results) / wall,
            "p95_ttft_s": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))],
            "errors": errors,
        }
        out["rss_base_mb"] = _peak_rss_mb(proc.pid)  # after 8 chats at once: the base at full load
        if engine != "transformers":
            _make_adapters(3)
            for i in range(3):
                client.predict(f"bench-{i}", api_name="/switch_adapter")
                _chat(client, PROMPT, adapter=f"bench-{i}")
            out["rss_3_adapters_mb"] = _peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def main() -> None:
    global REPEATS
    p = argparse.ArgumentParser()
    p.add_argument("--skip-app", action="store_true")
    p.add_argument("--short", action="store_true", help="one run per figure and no bf16 run (~half the time)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--transformers-app", action="store_true", help="also serve the app on transformers")
    p.add_argument("--ctranslate2", action="store_true", help="also CTranslate2 int8 (pip install ctranslate2==4.8.0)")
    args = p.parse_args()
    from core.models import cpu_supports_bf16

    if args.short:
        REPEATS = 1
    ids = _ids()
    res: dict = {"prompt_tokens": len(ids), "threads": args.threads}
    from core import store
    from core.backends import weight_buffers
    from core.models import embedded_gguf_file

    # The weight layout the engine measures at its first start (AMX where the build's kernels work); the baseline
    # is llama-cpp-python's plain API on the same layout (its own default is the repacked one).
    choice = weight_buffers.choose(embedded_gguf_file(), args.threads, store.subdir("cache"))
    res["weights"] = {"repacked": choice.repacked, "reason": choice.reason}
    res["llama_plain"] = _on_model_thread(bench_llama_plain, ids, args.threads, choice.repacked)
    if choice.repacked:  # the plain layout too, for the record
        res["llama_plain_layout"] = _on_model_thread(bench_llama_plain, ids, args.threads, False)
    res.update(bench_fast(ids, args.threads))
    res["ttft"] = bench_fast_ttft(ids)
    if args.ctranslate2:
        res["ctranslate2"] = bench_ctranslate2(ids, args.threads)
    res["transformers_fp32"] = _on_model_thread(bench_transformers, ids, "float32")
    if cpu_supports_bf16() and not args.short:
        res["transformers_bf16"] = _on_model_thread(bench_transformers, ids, "bfloat16")
    if not args.skip_app:
        res["app"] = bench_app("auto", 8)
        if args.transformers_app:
            res["app_transformers"] = bench_app("transformers", 1)
    base = res["llama_plain"]["decode_tok_s"]
    print(f"\nweight layout: {res['weights']['reason']}")
    print("| path | TTFT ms | decode tok/s | vs llama-cpp-python, same layout |\n|---|---|---|---|")
    keys = ("transformers_fp32", "transformers_bf16", "llama_plain_layout", "llama_plain", "fast", "fast_lora")
    for key in (*keys, "ctranslate2"):
        if key in res and "skipped" not in res[key]:
            r = res[key]
            print(f"| {key} | {r['ttft_s'] * 1000:.0f} | {r['decode_tok_s']:.1f} | {r['decode_tok_s'] / base:.2f}x |")
    print(
        f"\nLoRA vs base: {res['fast_lora']['decode_tok_s'] / res['fast']['decode_tok_s']:.2f}x; switch first use "
        f"{res['switch_first_s'] * 1000:.0f} ms, cached {res['switch_cached_s'] * 1000:.1f} ms"
    )
    if "ctranslate2" in res:
        ct2 = res["ctranslate2"]
        print(ct2.get("skipped") or f"CTranslate2 {ct2['version']}: int8 conversion {ct2['convert_s']:.1f} s")
    tt = res["ttft"]
    print(f"fast engine TTFT (threads measured: {tt['threads']}, {tt['thread_switches']} switches):")
    for key in ("cold", "system_prompt_cached", "next_turn"):
        r = tt[key]
        print(f"  {key}: {r['ttft_s'] * 1000:.0f} ms ({r['prompt_tokens']}-token prompt, {r['reused']} reused)")
    if "app" in res:
        app = res["app"]
        single, conc = app["single"], app["concurrent"]
        print(
            f"app single stream: TTFT {single['ttft_s'] * 1000:.0f} ms, {single['decode_tok_s']:.1f} tok/s "
            f"({single['decode_tok_s'] / res['fast']['decode_tok_s']:.2f}x the engine alone)"
        )
        print(
            f"app 8 concurrent: {conc['aggregate_tok_s']:.1f} tok/s aggregate "
            f"({conc['aggregate_tok_s'] / single['wall_tok_s']:.2f}x one stream), p95 TTFT {conc['p95_ttft_s']:.2f} s, "
            f"errors {len(conc['errors'])}"
        )
        if "rss_3_adapters_mb" in app:
            print(
                f"peak RSS: base {app['rss_base_mb']:.0f} MB, + 3 adapters {app['rss_3_adapters_mb']:.0f} MB "
                f"({app['rss_3_adapters_mb'] / app['rss_base_mb']:.2f}x)"
            )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
