"""From clicking Start on the sample chat dataset to a usable adapter, through the running app; adapter switch time.

Starts `python app.py` (fresh DemoForge home, cached SmolLM2 linked in) and drives it with gradio_client exactly
as the Fine-tune tab does: pick the sample, Start with the default settings (3-minute budget), poll the status,
then switch Chat to the adapter (first load and a repeat switch, vs the base model's own load time), and answer the
held-out questions of assets/data/support_chat_eval.jsonl with the base and the tuned model (greedy).

Run:  python tests/bench/bench_finetune_ui.py [--budget 3] [--questions 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.bench.scratch import scratch_dir  # noqa: E402 - needs ROOT on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.bench.bench_chat import _wait_for_page  # noqa: E402
from tests.helpers import free_port  # noqa: E402

SAMPLE = "Acme Cloud support chat (chat SFT)"
SYSTEM = (
    "You are the support assistant of Acme Cloud, a simple hosting service. Answer briefly and politely; if you "
    "do not know, say so and suggest contacting support@acme.example."
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=3.0, help="time budget in minutes (the tab's default)")
    parser.add_argument("--questions", type=int, default=4)
    args = parser.parse_args()
    from gradio_client import Client

    from core import store

    home = Path(scratch_dir("demoforge-bench-ft-"))
    models = store.home() / "models"
    store.subdir("models")
    (home / "models").symlink_to(models, target_is_directory=True)
    port = free_port()
    env = {**os.environ, "DEMOFORGE_HOME": str(home)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for_page(url, proc)
        base_load_s = time.perf_counter() - t0
        client = Client(url, verbose=False)
        client.predict(SAMPLE, api_name="/pick_sample")
        # task, base, columns, name, budget, epochs, lr, max_length, batch, accum, r, alpha, dropout, eval, sched, seed
        from core.config import TASK_DEFAULTS as DEFAULTS

        d = DEFAULTS["sft"]  # what the tab shows for a chat run
        settings = (
            "Chat (SFT)",
            "default",
            "",
            "acme-support",
            args.budget,
            d["epochs"],
            d["lr"],
            d["max_length"],
            d["batch_size"],
            1,
            16,
            32,
            0.05,
            0.1,
            "cosine",
            42,
        )
        start = time.perf_counter()
        client.predict(*settings, api_name="/start_training")
        status = {}
        while time.perf_counter() - start < args.budget * 60 + 600:
            status = client.predict("", api_name="/training_status")
            if status["status"] not in ("starting", "running"):
                break
            time.sleep(1)
        to_adapter_s = time.perf_counter() - start
        assert status["status"] in ("finished", "time_budget"), status
        first_switch = client.predict("acme-support", api_name="/switch_adapter")
        t = time.perf_counter()
        client.predict("Base model (no adapter)", api_name="/switch_adapter")
        again = client.predict("acme-support", api_name="/switch_adapter")
        round_trip_s = time.perf_counter() - t
        questions = [
            json.loads(line)["messages"]
            for line in (ROOT / "assets/data/support_chat_eval.jsonl").read_text().splitlines()[: args.questions]
        ]
        answers = []
        for msgs in questions:
            q = msgs[0]["content"]
            base, tuned, _ = client.predict(
                q, "acme-support", None, SYSTEM, 0.0, 0.9, 50, 96, 1.1, -1, api_name="/compare"
            )
            answers.append(
                {
                    "question": q,
                    "reference": msgs[1]["content"],
                    "base": base.split("\n\n— ")[0],
                    "tuned": tuned.split("\n\n— ")[0],
                }
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    train = [p["value"] for p in status["loss_points"] if p["series"] == "train loss"]
    evals = [p["value"] for p in status["loss_points"] if p["series"] == "eval loss"]
    result = {
        "budget_min": args.budget,
        "start_to_adapter_s": to_adapter_s,
        "steps": status["step"],
        "train_loss_first_last": [train[0], train[-1]] if train else None,
        "eval_loss_first_last": [evals[0], evals[-1]] if evals else None,
        "tokens_per_s": status.get("tokens_per_s"),
        "app_start_s": base_load_s,
        "first_switch": first_switch,
        "repeat_switch": again,
        "base_then_adapter_round_trip_s": round_trip_s,
        "answers": answers,
    }
    print(
        f"Start → usable adapter: {to_adapter_s:.0f} s with a {args.budget:g}-minute budget "
        f"({status['step']} steps, {status.get('tokens_per_s') or 0:.0f} tokens/s); "
        f"train loss {train[0]:.2f} → {train[-1]:.2f}"
        + (f", eval loss {evals[0]:.2f} → {evals[-1]:.2f}" if evals else "")
    )
    print(
        f"Adapter switch: first {first_switch!r}; repeat {again!r}; base→adapter round trip through the app "
        f"{round_trip_s * 1000:.0f} ms; app start (base load included) {base_load_s:.1f} s"
    )
    for a in answers:
        print(f"\nQ: {a['question']}\n  base : {a['base']}\n  tuned: {a['tuned']}\n  ref  : {a['reference']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
