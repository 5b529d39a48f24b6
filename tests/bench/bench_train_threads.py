"""Training beside other work: the measured thread count against a fixed one, on a quiet and a busy machine.

Each case runs ``python -m core.train`` (SmolLM2 LoRA on the bundled support chat sample, fixed steps, no eval)
and reads the seconds per step from the run's events (the first steps are skipped: they include warm-up). "busy"
starts one process spinning on a core beside the run, as the app's chat decoding or another Space tenant would.
Ratios are taken within one run of this script.

Run:  python tests/bench/bench_train_threads.py [--steps 14]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _case(steps: int, threads: str, busy: bool, home: Path) -> tuple[float, float]:
    """(median seconds per step after the first 4 steps, the run's training seconds in all)."""
    cfg = {
        "task": "sft",
        "data_path": str(ROOT / "assets" / "data" / "support_chat.jsonl"),
        "adapter_name": f"bench-threads-{threads}-{int(busy)}",
        "max_steps": steps,
        "eval_fraction": 0.0,
    }
    work = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    (work / "cfg.yaml").write_text(json.dumps(cfg), encoding="utf-8")  # JSON is YAML
    env = {**os.environ, "DEMOFORGE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("DEMOFORGE_TRAIN_THREADS", None)
    if threads != "auto":
        env["DEMOFORGE_TRAIN_THREADS"] = threads
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        subprocess.run(
            [sys.executable, "-m", "core.train", str(work / "cfg.yaml")],
            cwd=ROOT,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    events = [json.loads(line) for line in next((home / "runs").glob(f"*{cfg['adapter_name']}*/events.jsonl")).open()]
    times = [e["elapsed_s"] for e in events if e["type"] == "step"]
    end = next(e for e in events if e["type"] == "end")
    return statistics.median(b - a for a, b in zip(times[4:], times[5:])), end["metrics"]["train_seconds"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=14)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from core import store

    # A fresh home each time (adapter names are never replaced), with the usual home's converted models.
    home = Path(tempfile.mkdtemp(prefix="bench-threads-home-"))
    if (store.home() / "models").is_dir():
        (home / "models").symlink_to(store.home() / "models")
    res = {}
    for busy in (False, True):
        for threads in ("2", "auto"):
            step, total = res[(threads, busy)] = _case(args.steps, threads, busy, home)
            where = "busy" if busy else "quiet"
            print(f"{where} machine, threads {threads}: {step:.2f} s/step, {total:.1f} s of training", flush=True)
    for busy in (False, True):
        step = res[("2", busy)][0] / res[("auto", busy)][0]
        total = res[("2", busy)][1] / res[("auto", busy)][1]
        print(
            f"{'busy' if busy else 'quiet'}: the measured count trains {step:.2f}x as fast as 2 fixed threads per "
            f"step (after the first 4), {total:.2f}x over the whole run"
        )


if __name__ == "__main__":
    main()
