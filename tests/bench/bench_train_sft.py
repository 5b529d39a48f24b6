"""LoRA SFT on SmolLM2-135M: DemoForge's loop vs transformers Trainer + peft (padding to the longest), same run.

Same data (../shared/data/alpaca_200.json when present, else assets/data/support_chat.jsonl), same tokenisation
(chat template, loss on assistant tokens only), same LoRA (r=16, alpha=32, all linear layers), max length 256,
same number of optimizer steps, 2 CPU threads. Each side runs in its own process, so peak RSS is its own.
Reported: real (non-pad) tokens/s, share of padding, final training loss (mean of the last 3 steps), peak RSS.

Run:  python tests/bench/bench_train_sft.py [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.bench.scratch import scratch_dir  # noqa: E402 - needs ROOT on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED = ROOT.parent / "shared" / "data" / "alpaca_200.json"
MAX_LENGTH = 256


def _data() -> Path:
    return SHARED if SHARED.is_file() else ROOT / "assets" / "data" / "support_chat.jsonl"


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB


def run_ours(steps: int, home: str) -> dict:
    from core.config import TrainConfig
    from core.train.runner import run

    os.environ["DEMOFORGE_HOME"] = home
    cfg = TrainConfig(
        data_path=str(_data()),
        adapter_name="bench-ours",
        task="sft",
        max_length=MAX_LENGTH,
        max_steps=steps,
        batch_size=8,
        lr=2e-4,
        eval_fraction=0.0,
        seed=0,
    )
    run_dir = Path(home) / "runs" / "bench"
    result = run(cfg, run_dir)
    assert result.status == "finished", result.error
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["type"] == "step"]
    return {
        "real_tokens_per_s": result.metrics["tokens_per_s"],
        "padding_share": 0.0,
        "final_loss": sum(losses[-3:]) / len(losses[-3:]),
        "losses": losses,
        "peak_rss_gb": _peak_rss_gb(),
    }


def run_trainer(steps: int, batch: int, home: str) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from core.config import LoraSettings
    from core.data import load_data
    from core.models import embedded_chat_path

    path = embedded_chat_path()
    tok = AutoTokenizer.from_pretrained(path)
    loaded = load_data(str(_data()), "sft", tokenizer=tok, max_length=MAX_LENGTH)
    rows = [
        {"input_ids": t.input_ids, "labels": t.labels, "attention_mask": [1] * len(t.input_ids)}
        for t in loaded.tokenized
    ]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=LoraSettings().dropout,  # the same LoRA as ours, dropout included
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    counts = {"real": 0, "padded": 0}
    collate = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)

    def counting(features):
        out = collate(features)
        counts["real"] += int(out["attention_mask"].sum())
        counts["padded"] += int(out["attention_mask"].numel())
        return out

    args = TrainingArguments(
        output_dir=str(Path(home) / "trainer"),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=counting)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "real_tokens_per_s": counts["real"] / seconds,
        "padding_share": 1 - counts["real"] / counts["padded"],
        "final_loss": sum(losses[-3:]) / len(losses[-3:]),
        "losses": losses,
        "peak_rss_gb": _peak_rss_gb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument(
        "--trainer-batch",
        type=int,
        default=16,
        help="examples per Trainer step (our step is 8 packed rows of 256 tokens, ~the same data)",
    )
    parser.add_argument("--which", choices=["ours", "trainer"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.which:
        home = scratch_dir("demoforge-bench-train-")
        models = Path(os.environ.get("DEMOFORGE_HOME", "")) / "models"
        if models.is_dir():
            (Path(home) / "models").symlink_to(models, target_is_directory=True)
        out = run_ours(args.steps, home) if args.which == "ours" else run_trainer(args.steps, args.trainer_batch, home)
        print("RESULT " + json.dumps(out))
        return
    results = {}
    for which in ("trainer", "ours"):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--which",
                which,
                "--steps",
                str(args.steps),
                "--trainer-batch",
                str(args.trainer_batch),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{which} failed:\n{proc.stderr[-3000:]}")
        results[which] = json.loads(line[len("RESULT ") :])
    t, o = results["trainer"], results["ours"]
    print(f"Data: {_data().name}, {args.steps} optimizer steps each, max length {MAX_LENGTH}, LoRA r=16 all-linear.\n")
    print("| | real tokens/s | padding | final loss (last 3 steps) | peak RSS |\n|---|---|---|---|---|")
    print(
        f"| Trainer + peft, pad to longest, fp32 | {t['real_tokens_per_s']:.0f} | {t['padding_share']:.0%} | "
        f"{t['final_loss']:.3f} | {t['peak_rss_gb']:.1f} GB |"
    )
    print(
        f"| DemoForge (packing, assistant-only logits, auto precision) | {o['real_tokens_per_s']:.0f} | 0% | "
        f"{o['final_loss']:.3f} | {o['peak_rss_gb']:.1f} GB |"
    )
    print(
        f"\nRatios: throughput {o['real_tokens_per_s'] / t['real_tokens_per_s']:.2f}x, "
        f"peak RSS {o['peak_rss_gb'] / t['peak_rss_gb']:.2f}x"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
