"""Classify engine benchmark on the embedded all-MiniLM-L6-v2, every comparison measured in the same run.

  (a) throughput, batch 32, 1,000 random SST-2 sentences (seed 0): ``transformers.pipeline("text-classification")``
      on an AutoModelForSequenceClassification built from the MiniLM folder (random head, seed 0) - the baseline -
      vs DemoForge's batched path (core.classify.SequenceClassifier: length-sorted batches, pad per batch,
      inference_mode, bf16 weights where the CPU has native bf16), and the same path forced to fp32. The two are
      timed in interleaved halves so background load hits both alike; ratios are what to compare.
  (b) zero-shot accuracy / macro-F1 of ZeroShotEmbeddingClassifier on held-out rows (splits below), with labels
      typed as a user would (bare names: 'negative, positive'; Banking77's 77 intent names), the default method
      (prompt ensemble + vocabulary expansion) against the previous one (one template, no expansion) in the same
      run; SST-2 also with one-line descriptions. Ensemble and expansion settings were chosen on the dev slices.
      With it, a supervised ceiling for SST-2: logistic regression on the same frozen sentence vectors, trained on
      the 500 labelled dev rows (see bench_linear_probe).
  (c) explanation latency (occlusion, MiniLM) for a 50-word text, median of 3.
  (d) temperature calibration: the NLL-optimal softmax temperature on a hand-written 4-topic set (below),
      which is where core.classify.DEFAULT_TEMPERATURE comes from.
  (e) fine-tuned accuracy: core.train.run (the Fine-tune tab's loop, TASK_DEFAULTS for lr/epochs/length/batch) on
      the train split, the dev split as its eval file (best checkpoint), scored on the held-out split; zero-shot vs
      fine-tuned and their ratio. --ft-minutes sets the time budget; --ft-steps N trains exactly N steps instead (for
      a shared CPU where a time budget measures the neighbours), reporting steps/s so the budget can be
      extrapolated. The head starts at the label names' prototypes (core.train.model.init_head_from_label_names) and a
      run that cannot see every row trains on the longest rows first (core.train.batches.epoch_batches). The head reads
      the mean of the token vectors (core.pooling, ``pooling: auto`` on MiniLM); --pooling cls compares BERT's [CLS]
      pooler.
Splits (seed 0, random.Random): SST-2 held-out = 1,000 *full sentences* (distinct rows of >= 12 words, shuffled;
the first 1,000), dev = the next 500; train = every other row, minus any row whose text is a word span of a
held-out or dev sentence (SST-2 lists sub-phrases of its sentences as rows: ~12k such rows removed).
Banking77: all rows shuffled; held-out = first 1,000, dev = next 500, train = the rest (~7,500).
Data comes from --data-dir, else ../shared/data next to the repository; parts that need it are skipped with a
message when it is absent.

Run:  python tests/bench/bench_classify.py [--data-dir DIR] [--rows 1000] [--parts ...] [--threads N]
      (prints a Markdown table + one JSON line). On an oversubscribed machine (other processes busy on the same
      cores) torch's 2 OpenMP threads stall at every barrier - ~0.8 s per MiniLM forward whatever its size,
      measured here - which hides every per-token saving; compare with --threads 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.bench.scratch import scratch_dir  # noqa: E402 - needs ROOT on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SEED = 0
SST2_NAMES = {"0": "negative", "1": "positive"}
SST2_LABELS = [
    ("negative", "a negative, critical opinion: the movie is bad, boring or disappointing"),
    ("positive", "a positive, praising opinion: the movie is good, enjoyable or moving"),
]
EXPLAIN_TEXT = (
    "I ordered a new debit card two weeks ago and it still has not arrived in the mail. The tracking page says "
    "nothing useful and the support line keeps me waiting for an hour. Can you tell me when my card will finally be "
    "delivered to my home address, please?"
)
# Hand-written calibration set for the temperature (not the integration-test sentences, not shared data).
CALIBRATION_LABELS = "sports, cooking, finance, weather"
CALIBRATION = [
    ("The striker scored twice in the second half.", 0),
    ("She won gold in the 400 metres.", 0),
    ("The coach was sacked after five straight defeats.", 0),
    ("Tickets for the tennis final sold out.", 0),
    ("He swam the channel in record time.", 0),
    ("The umpire called the runner out at second base.", 0),
    ("Whisk the eggs with a pinch of salt.", 1),
    ("Roast the vegetables until they are golden.", 1),
    ("This soup needs more garlic and a splash of cream.", 1),
    ("Let the dough rest for thirty minutes.", 1),
    ("Simmer the sauce and season to taste.", 1),
    ("My grandmother's lasagna recipe uses three cheeses.", 1),
    ("The central bank raised interest rates again.", 2),
    ("Her portfolio lost ten percent this quarter.", 2),
    ("The company's shares jumped after the merger news.", 2),
    ("Inflation is eating into household savings.", 2),
    ("He refinanced his mortgage at a lower rate.", 2),
    ("Bond yields climbed to a two-year high.", 2),
    ("A cold front will bring snow to the mountains.", 3),
    ("Expect sunshine and a high of 28 degrees.", 3),
    ("Strong winds and thunderstorms are forecast tonight.", 3),
    ("The humidity will make it feel hotter.", 3),
    ("Fog will clear by late morning.", 3),
    ("A heatwave is expected to last all week.", 3),
    # indirect or mixed-topic sentences: a perfectly separable set would always pick the smallest temperature
    ("Our team finally made the playoffs after ten years.", 0),
    ("He trains every morning for the marathon.", 0),
    ("The crowd went wild in the final minute.", 0),
    ("The match was postponed because of the storm.", 0),
    ("I burned the onions again.", 1),
    ("Dinner tonight is a family recipe from Naples.", 1),
    ("Don't forget to preheat the oven.", 1),
    ("The kitchen smells of fresh basil.", 1),
    ("We can't afford a new car this year.", 2),
    ("My salary barely covers the rent.", 2),
    ("The startup raised its Series A.", 2),
    ("The chef's restaurant went bankrupt last year.", 2),
    ("Bring an umbrella just in case.", 3),
    ("The roads are icy this morning.", 3),
    ("It has been a dry summer for the farmers.", 3),
    ("The sky turned dark grey after lunch.", 3),
]


def _data_dir(arg: str | None) -> Path | None:
    """--data-dir, else ``../shared/data`` beside the repository; None when absent (the parts needing it skip)."""
    cand = Path(arg) if arg else ROOT.parent / "shared" / "data"
    return cand if (cand / "sst2_train.tsv").is_file() and (cand / "banking77_train.tsv").is_file() else None


def _read(path: Path) -> list[dict]:
    from core.data import read_table

    return read_table(path, max_bytes=200 * 1024 * 1024).rows


def _spans(text: str) -> set[str]:
    words = text.lower().split()
    return {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1)}


def sst2_splits(data_dir: Path, test: int = 1000, dev: int = 500, min_words: int = 12) -> dict[str, list[dict]]:
    """{'test', 'dev', 'train'}: full sentences held out, their sub-phrases removed from train (module docstring)."""
    rows = [
        {"text": str(r["text"]).strip(), "label": SST2_NAMES[str(r["label"]).strip()]}
        for r in _read(data_dir / "sst2_train.tsv")
    ]
    sentences = sorted({r["text"] for r in rows if len(r["text"].split()) >= min_words})
    random.Random(SEED).shuffle(sentences)
    by_text = {r["text"]: r for r in rows}
    held = sentences[: test + dev]
    banned = set().union(*(_spans(t) for t in held))
    train = [r for r in rows if " ".join(r["text"].lower().split()) not in banned]
    random.Random(SEED).shuffle(train)
    return {"test": [by_text[t] for t in held[:test]], "dev": [by_text[t] for t in held[test:]], "train": train}


def banking77_splits(data_dir: Path, test: int = 1000, dev: int = 500) -> dict[str, list[dict]]:
    """{'test', 'dev', 'train'}: all rows shuffled with seed 0, then cut."""
    rows = [
        {"text": str(r["text"]).strip(), "label": str(r["label"]).strip()}
        for r in _read(data_dir / "banking77_train.tsv")
    ]
    random.Random(SEED).shuffle(rows)
    return {"test": rows[:test], "dev": rows[test : test + dev], "train": rows[test + dev :]}


def held_out(path: Path, rows: int) -> list[dict]:
    """The first ``rows`` rows after shuffling all indices with random.Random(SEED); read via core.data."""
    from core.data import read_table

    table = read_table(path, max_bytes=200 * 1024 * 1024)
    order = list(range(len(table.rows)))
    random.Random(SEED).shuffle(order)
    return [table.rows[i] for i in order[:rows]]


def bench_throughput(texts: list[str]) -> dict:
    """(a) pipeline baseline vs our batched path (auto dtype, and fp32) on the same random-head MiniLM."""
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from core.classify.classifiers import SequenceClassifier, pick_inference_dtype
    from core.models import embedded_encoder_path

    path = embedded_encoder_path()
    torch.manual_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    tok = AutoTokenizer.from_pretrained(path)
    pipe = pipeline("text-classification", model=model, tokenizer=tok, device="cpu")
    ours_dtype = pick_inference_dtype("auto", "cpu")
    ours = SequenceClassifier(copy.deepcopy(model).to(ours_dtype), tok, ["a", "b"], max_length=256)
    ours32 = SequenceClassifier(copy.deepcopy(model), tok, ["a", "b"], max_length=256)
    runs = {
        "pipeline": lambda xs: pipe(xs, batch_size=32, truncation=True, max_length=256),
        "ours": ours.predict_proba,
        "ours_fp32": ours32.predict_proba,
    }
    for fn in runs.values():
        fn(texts[:64])  # warm-up
    seconds = dict.fromkeys(runs, 0.0)
    half = len(texts) // 2
    for part in (texts[:half], texts[half:]):  # interleaved, so background load hits every path alike
        for name, fn in runs.items():
            t = time.perf_counter()
            fn(part)
            seconds[name] += time.perf_counter() - t
    # same predictions: the pipeline's top label vs ours in fp32 (bf16 may flip near-ties of a random head)
    p_ours = ours32.predict_proba(texts[:200]).argmax(-1).tolist()
    p_pipe = [int(r["label"].split("_")[-1]) for r in pipe(texts[:200], batch_size=32, truncation=True)]
    agree = sum(a == b for a, b in zip(p_ours, p_pipe)) / len(p_pipe)
    tps = {k: len(texts) / v for k, v in seconds.items()}
    return {
        "texts": len(texts),
        "batch_size": 32,
        "ours_dtype": str(ours_dtype).removeprefix("torch."),
        "texts_per_s": {k: round(v, 1) for k, v in tps.items()},
        "ratio_ours_vs_pipeline": round(tps["ours"] / tps["pipeline"], 2),
        "ratio_ours_fp32_vs_pipeline": round(tps["ours_fp32"] / tps["pipeline"], 2),
        "fp32_top_label_agreement_with_pipeline": round(agree, 3),
    }


def bench_zero_shot(name: str, rows: list[dict], labels: list, encoder: object, **kwargs: object) -> dict:
    """(b) zero-shot accuracy and macro-F1 through core.scoring.score_table; ``kwargs`` go to the classifier."""
    from core.classify.scoring import score_table
    from core.classify.zero_shot import ZeroShotEmbeddingClassifier

    clf = ZeroShotEmbeddingClassifier(labels, encoder, **kwargs)  # type: ignore[arg-type]
    t = time.perf_counter()
    result = score_table(clf, rows, "text", "label")
    seconds = time.perf_counter() - t
    m = result.metrics
    assert m is not None and len(result.rows) == len(rows)
    return {
        "dataset": name,
        "rows": m.n,
        "labels": len(labels),
        "accuracy": round(m.accuracy, 4),
        "macro_f1": round(m.macro_f1, 4),
        "chance_accuracy": round(1 / len(labels), 4),
        "texts_per_s": round(len(rows) / seconds, 1),
    }


def bench_zero_shot_all(splits: dict[str, dict[str, list[dict]]], encoder: object) -> list[dict]:
    """(b) on each held-out split: the default method and the previous one (one template, no expansion)."""
    previous = {"template": "This text is about {label}.", "expand": 0}
    out = []
    for name, split in splits.items():
        names = sorted({r["label"] for r in split["train"] + split["test"]})
        for variant, kwargs in (("default", {}), ("previous", previous)):
            out.append({"variant": variant, **bench_zero_shot(name, split["test"], names, encoder, **kwargs)})
        if name == "sst2":
            out.append({"variant": "descriptions", **bench_zero_shot(name, split["test"], SST2_LABELS, encoder)})
    return out


def bench_explain(encoder: object) -> dict:
    """(c) occlusion latency for a 50-word text (median of 3, after one warm-up)."""
    from core.classify.classifiers import ZeroShotEmbeddingClassifier
    from core.classify.explain import explain_text

    words = EXPLAIN_TEXT.split()
    assert len(words) == 50, len(words)
    clf = ZeroShotEmbeddingClassifier(
        "card arrival: my new card has not arrived, exchange rate, lost card, refund request", encoder
    )  # type: ignore[arg-type]
    explain_text(clf, EXPLAIN_TEXT)
    times, out = [], None
    for _ in range(3):
        t = time.perf_counter()
        out = explain_text(clf, EXPLAIN_TEXT)
        times.append(time.perf_counter() - t)
    assert out is not None
    top = sorted(out.spans, key=lambda s: -s[1])[:3]
    return {
        "words": 50,
        "median_s": round(statistics.median(times), 3),
        "max_s": round(max(times), 3),
        "label": out.label,
        "top_words": [w.strip() for w, _ in top],
    }


def bench_calibration(encoder: object) -> dict:
    """(d) the NLL-optimal temperature on the hand-written set, and the NLL at the default."""
    import torch
    import torch.nn.functional as F

    from core.classify.classifiers import DEFAULT_TEMPERATURE, ZeroShotEmbeddingClassifier, fit_temperature

    clf = ZeroShotEmbeddingClassifier(CALIBRATION_LABELS, encoder)  # type: ignore[arg-type]
    cos = clf.cosines([t for t, _ in CALIBRATION])
    gold = [g for _, g in CALIBRATION]
    best_t, best_nll = fit_temperature(cos, gold, grid=[i / 200 for i in range(2, 61)])
    default_nll = float(F.cross_entropy(cos / DEFAULT_TEMPERATURE, torch.tensor(gold)))
    acc = float((cos.argmax(-1) == torch.tensor(gold)).float().mean())
    return {
        "texts": len(gold),
        "accuracy": round(acc, 3),
        "best_temperature": best_t,
        "best_nll": round(best_nll, 4),
        "default_temperature": DEFAULT_TEMPERATURE,
        "default_nll": round(default_nll, 4),
    }


def bench_finetuned_accuracy(
    splits: dict[str, dict[str, list[dict]]],
    minutes: dict[str, float],
    steps: int | None,
    zero: list[dict],
    full_finetune: bool = False,
    pooling: str = "auto",
) -> list[dict]:
    """(e) fine-tune MiniLM with the task defaults (LoRA, or every weight) on each train split, score the held-out
    split."""
    import csv

    from core.classify.classifiers import FineTunedClassifier
    from core.classify.scoring import score_table
    from core.config import TrainConfig
    from core.train.runner import run

    results = []
    home = Path(scratch_dir("demoforge-bench-cls-"))
    os.environ["DEMOFORGE_HOME"] = str(home)
    for name, split in splits.items():
        files = {}
        for part in ("train", "dev"):
            files[part] = home / f"{name}_{part}.csv"
            with open(files[part], "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(["text", "label"])
                writer.writerows([r["text"], r["label"]] for r in split[part])
        cfg = TrainConfig(
            data_path=str(files["train"]),
            eval_path=str(files["dev"]),
            adapter_name=f"bench-{name}",
            task="classification",
            base_model="minilm",
            time_budget_minutes=None if steps else minutes[name],
            max_steps=steps,
            full_finetune=full_finetune,
            pooling=pooling,
            seed=SEED,
        )
        t = time.perf_counter()
        result = run(cfg, home / "runs" / name)
        seconds = time.perf_counter() - t
        assert result.adapter_dir, result.error
        clf = FineTunedClassifier.load(result.adapter_dir, device="cpu")
        m = score_table(clf, split["test"], "text", "label").metrics
        assert m is not None
        zs = next(z for z in zero if z["dataset"] == name and z["variant"] == "default") if zero else None
        done = result.metrics.get("steps")
        results.append(
            {
                "dataset": name,
                "method": "full" if full_finetune else "LoRA",
                "pooling": (clf.card or {}).get("pooling"),  # what the run used, from the adapter's card
                "train_rows": len(split["train"]),
                "held_out_rows": m.n,
                "budget_min": None if steps else minutes[name],
                "steps": done,
                "lr": cfg.lr,
                "batch_size": cfg.batch_size,
                "wall_seconds": round(seconds, 1),
                "train_seconds": result.metrics.get("train_seconds"),
                "status": result.status,
                "accuracy": round(m.accuracy, 4),
                "macro_f1": round(m.macro_f1, 4),
                "zero_shot_accuracy": zs["accuracy"] if zs else None,
                "ratio_vs_zero_shot": round(m.accuracy / zs["accuracy"], 3) if zs else None,
            }
        )
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--parts",
        default="calibration,explain,throughput,zero_shot,finetuned",
        help="comma-separated subset of: calibration, explain, throughput, zero_shot, finetuned",
    )
    parser.add_argument(
        "--ft-minutes", type=float, default=5.0, help="SST-2's training budget; Banking77 gets twice this (issue 8)"
    )
    parser.add_argument("--ft-steps", type=int, default=None, help="train exactly N steps instead of a time budget")
    parser.add_argument("--full-finetune", action="store_true", help="train every weight instead of LoRA")
    parser.add_argument(
        "--pooling", default="auto", choices=("auto", "cls", "mean"), help="what the head reads (core.pooling)"
    )
    parser.add_argument("--datasets", default="sst2,banking77", help="comma-separated subset of: sst2, banking77")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads for the whole run (default: torch's choice)"
    )
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from core.classify.classifiers import SentenceEncoder
    from core.models import cpu_supports_bf16

    data_dir = _data_dir(args.data_dir)
    encoder = SentenceEncoder.load(device="cpu")
    out: dict = {
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_supports_bf16(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "encoder_dtype": str(encoder.model.dtype).removeprefix("torch."),
        "seed": SEED,
    }
    if "calibration" in parts:
        out["calibration"] = bench_calibration(encoder)
    if "explain" in parts:
        out["explain"] = bench_explain(encoder)
    if data_dir is None:
        print(
            "shared data not found (--data-dir DIR, or ../shared/data next to the repository): skipping throughput, "
            "zero-shot and fine-tuned accuracy",
            file=sys.stderr,
        )
    else:
        if "throughput" in parts:
            out["throughput"] = bench_throughput([str(r["text"]) for r in held_out(data_dir / "sst2_train.tsv", 1000)])
        if parts & {"zero_shot", "finetuned"}:
            makers = {"sst2": sst2_splits, "banking77": banking77_splits}
            splits = {k: makers[k](data_dir) for k in args.datasets.split(",")}
            out["splits"] = {k: {p: len(v[p]) for p in ("test", "dev", "train")} for k, v in splits.items()}
            if "zero_shot" in parts:
                out["zero_shot"] = bench_zero_shot_all(splits, encoder)
                if "sst2" in splits:
                    from tests.bench.linear_probe import bench_linear_probe

                    out["linear_probe_sst2"] = bench_linear_probe(splits["sst2"], encoder)
            if "finetuned" in parts:
                minutes = {"sst2": args.ft_minutes, "banking77": 2 * args.ft_minutes}
                out["finetuned"] = bench_finetuned_accuracy(
                    splits, minutes, args.ft_steps, out.get("zero_shot", []), args.full_finetune, args.pooling
                )
    out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    _print_markdown(out)
    print(json.dumps(out))
    return out


def _print_markdown(out: dict) -> None:
    lines = ["| measure | value |", "|---|---|"]
    if "throughput" in out:
        t = out["throughput"]
        for k, v in t["texts_per_s"].items():
            lines.append(f"| throughput {k} ({t['texts']} SST-2, batch 32) | {v} texts/s |")
        lines.append(f"| ratio ours ({t['ours_dtype']}) / pipeline | **{t['ratio_ours_vs_pipeline']}x** |")
        lines.append(f"| ratio ours fp32 / pipeline (sorting alone) | {t['ratio_ours_fp32_vs_pipeline']}x |")
    for z in out.get("zero_shot", []):
        lines.append(
            f"| zero-shot {z['dataset']}, {z['variant']} ({z['rows']} held-out, {z['labels']} labels) | acc "
            f"{z['accuracy']}, macro-F1 {z['macro_f1']} (chance {z['chance_accuracy']}) |"
        )
    zs = {(z["dataset"], z["variant"]): z["accuracy"] for z in out.get("zero_shot", [])}
    for ds in ("sst2", "banking77"):
        if (ds, "previous") in zs:
            lines.append(
                f"| zero-shot {ds}: default / previous accuracy | {zs[(ds, 'default')] / zs[(ds, 'previous')]:.3f}x |"
            )
    if "linear_probe_sst2" in out:
        p = out["linear_probe_sst2"]
        lines.append(
            f"| ceiling: *supervised* linear probe on the same sentence vectors, SST-2 ({p['train_rows']} labelled dev "
            f"rows, best of {len(p['grid'])} settings on {p['held_out_rows']} held-out) | acc {p['best_accuracy']} |"
        )
    if "explain" in out:
        e = out["explain"]
        lines.append(f"| explanation, 50 words (occlusion) | median {e['median_s']} s, max {e['max_s']} s |")
    if "calibration" in out:
        c = out["calibration"]
        lines.append(
            f"| temperature: NLL-optimal on hand-written set | T={c['best_temperature']} (NLL "
            f"{c['best_nll']}); default T={c['default_temperature']} NLL {c['default_nll']} |"
        )
    for f in out.get("finetuned") or []:
        plan = f"{f['budget_min']:g}-min budget" if f["budget_min"] else "fixed steps"
        speed = f["steps"] / f["train_seconds"] if f.get("train_seconds") else float("nan")
        lines.append(
            f"| fine-tuned {f['dataset']} ({f['method']} MiniLM, {f['pooling']} pooling, {plan}, {f['steps']} steps at "
            f"{speed:.2f} steps/s, lr "
            f"{f['lr']:g}, batch {f['batch_size']}, on {f['train_rows']} rows; {f['held_out_rows']} held-out) | acc "
            f"{f['accuracy']}, macro-F1 {f['macro_f1']}; zero-shot {f['zero_shot_accuracy']}, ratio "
            f"{f['ratio_vs_zero_shot']}x |"
        )
    lines.append(
        f"| load average (1, 5, 15 min) at start / end | {out['load_average_at_start']} / "
        f"{out['load_average_at_end']} |"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
