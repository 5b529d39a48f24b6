"""Which weight layout llama.cpp should use on this CPU, measured once per machine, build and model.

llama.cpp can repack a GGUF's weights at load into layouts for the CPU's matrix units ("extra buffer types": AMX
tiles on Intel Xeons, interleaved blocks elsewhere). On the 2-core Xeon with AMX this project runs on, the AMX
layout prefilled a 61-token prompt in 55 ms instead of 200 ms and decoded at 175 instead of 83 tok/s. But a
llama-cpp-python built by GCC 12 crashes on its first AMX matmul (GCC drops the stores that fill the tile
configuration before ``ldtilecfg``; requirements.txt's build flag fixes that), and on a CPU without AMX there may
be nothing to gain. A crash kills the process, so the layout is tried in child processes: each loads the model,
prefills a prompt and decodes greedily. The repacked layout is chosen when its child finished, its answer agrees
with the plain layout's, and it was faster; else the plain one, which is safe everywhere. The verdict is cached in
the DemoForge home, keyed by the llama.cpp library, the model file, the CPU and the thread count.

Run as a file with the arguments ``MODEL.gguf THREADS 0|1`` it is that child (prints one JSON line).
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 120.0
"""A child that has not answered by then counts as failed (loading a 135M model takes well under a second)."""
MIN_AGREEMENT = 0.75
"""Share of the plain layout's greedy tokens the repacked one must pick too, fed the same tokens. The two round
activations differently, so near-ties flip (30 of 32 agreed on the Xeon; another CPU may flip a few more); a broken
kernel disagrees almost everywhere. The answers' quality is guarded against transformers by the integration tests."""
MIN_GAIN = 0.05
"""Repacked must be this much faster (probe time) to be chosen: within the noise, the plain layout is the safer."""
DECODE_TOKENS = 32
_PROMPT = (
    "A short guide for a small bakery that wants to sell bread online: set up ordering, take payments, plan "
    "delivery routes, and avoid the mistakes new online shops make in their first year. "
)
_CACHE_VERSION = 1
_QUIET: Any = None


@dataclass
class ProbeResult:
    """One child's run: its timings and greedy tokens, or why it failed."""

    ok: bool
    prefill_s: float = 0.0
    decode_s_per_token: float = 0.0
    tokens: list[int] | None = None
    error: str = ""

    @property
    def cost_s(self) -> float:
        """A chat turn's shape: the prompt plus 128 new tokens."""
        return self.prefill_s + 128 * self.decode_s_per_token


@dataclass
class WeightChoice:
    """The verdict: use repacked weights or not, and the measurements behind it (shown in logs and benchmarks)."""

    repacked: bool
    reason: str
    plain: dict[str, Any]
    repacked_probe: dict[str, Any]


def load_params(repacked: bool) -> Any:
    """llama.cpp model parameters for the CPU with or without repacked (extra) weight buffers."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0
    params.use_extra_bufts = repacked
    return params


def layout_name() -> str:
    """What the repacked layout is on this CPU, for the model label: AMX tiles where the CPU has them."""
    return "AMX" if "amx_int8" in _cpuinfo("flags") else "repacked"


def _cpuinfo(*fields: str) -> str:
    """The first /proc/cpuinfo line starting with one of ``fields`` ('' where there is none)."""
    try:
        return next((x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith(fields)), "")
    except OSError:
        return ""


def _library_id() -> str:
    """Identifies the llama.cpp build (a rebuilt wheel must be probed again)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return "none"
    lib = Path(spec.origin).parent / "lib"
    parts = [f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in sorted(lib.glob("*.so*")) if p.is_file()]
    return ";".join(parts) or str(lib)


def _cpu_id() -> str:
    """The CPU model (x86: 'model name' comes before 'flags'), or what platform knows elsewhere."""
    import platform

    return _cpuinfo("model name", "flags") or platform.processor() or platform.machine()


def cache_key(gguf: Path, threads: int) -> str:
    st = gguf.stat()
    raw = f"{_CACHE_VERSION}|{_library_id()}|{gguf.resolve()}:{st.st_size}:{int(st.st_mtime)}|{_cpu_id()}|{threads}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def probe(
    gguf: Path, threads: int, repacked: bool, follow: list[int] | None = None, timeout_s: float = PROBE_TIMEOUT_S
) -> ProbeResult:
    """Runs the child for one layout; a crash, a hang or garbage output is a failed probe, never an exception.

    follow: another layout's greedy tokens, fed instead of this layout's own picks (teacher forcing), so that one
    near-tie flipped by rounding does not send the rest of the answer elsewhere; ``tokens`` are still its picks.
    """
    # The file runs by path, not as a module of the core package: that would import torch, whose OpenMP runtime
    # slows llama.cpp's (see core.backends.batching) and adds seconds. run_path, unlike `python FILE`, does not put
    # core/backends on sys.path, where select.py would shadow the standard library's.
    boot = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
    me = str(Path(__file__).resolve())
    forced = ",".join(map(str, follow or []))
    cmd = [sys.executable, "-c", boot, me, str(gguf), str(threads), "1" if repacked else "0", forced or "-"]
    try:
        done = subprocess.run(cmd, cwd=gguf.parent, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return ProbeResult(ok=False, error=f"no answer within {timeout_s:.0f} s")
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or [""])[-1][:200]
        return ProbeResult(ok=False, error=f"the child exited with {done.returncode} {tail}".strip())
    try:
        data = json.loads(done.stdout.strip().splitlines()[-1])
        return ProbeResult(ok=True, **data)
    except (ValueError, IndexError, TypeError) as exc:
        return ProbeResult(ok=False, error=f"unreadable answer ({exc})")


def agreement(a: list[int], b: list[int]) -> float:
    """Share of positions where two greedy answers hold the same token."""
    return sum(x == y for x, y in zip(a, b, strict=False)) / max(1, len(a), len(b))


def decide(plain: ProbeResult, repacked: ProbeResult) -> tuple[bool, str]:
    """Repacked only when it ran, agrees with plain, and is measurably faster."""
    if not repacked.ok:
        return False, f"repacked weights failed on this CPU and build: {repacked.error}"
    if not plain.ok:
        return True, f"the plain layout failed ({plain.error}); repacked ran"
    same = agreement(plain.tokens or [], repacked.tokens or [])
    if same < MIN_AGREEMENT:
        return False, f"repacked weights changed the greedy answer ({same:.0%} of tokens agree)"
    gain = 1 - repacked.cost_s / plain.cost_s
    if gain < MIN_GAIN:
        return False, f"repacked weights were not faster ({gain:+.0%})"
    return True, (
        f"repacked weights are {plain.cost_s / repacked.cost_s:.2f}x faster "
        f"(prefill {plain.prefill_s * 1000:.0f} -> {repacked.prefill_s * 1000:.0f} ms, "
        f"decode {1 / plain.decode_s_per_token:.0f} -> {1 / repacked.decode_s_per_token:.0f} tok/s)"
    )


def choose(gguf: Path, threads: int, cache_dir: Path) -> WeightChoice:
    """The measured layout for this model on this CPU, from the cache or from two child runs (~2-4 s)."""
    cache = cache_dir / "llamacpp-weights.json"
    key = cache_key(gguf, threads)
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), dict):
        try:
            return WeightChoice(**known[key])
        except TypeError:
            pass
    start = time.perf_counter()
    plain = probe(gguf, threads, repacked=False)
    repacked = probe(gguf, threads, repacked=True, follow=plain.tokens)
    use, reason = decide(plain, repacked)
    choice = WeightChoice(use, reason, asdict(plain), asdict(repacked))
    log.info("llama.cpp weight layout (measured in %.1f s): %s", time.perf_counter() - start, reason)
    from core import store  # here, not at the top: the child runs this file without the core package

    known = known if isinstance(known, dict) else {}
    known[key] = asdict(choice)
    try:
        store.atomic_write_json(cache, known)
    except OSError as exc:  # a read-only home: measure again next start
        log.warning("could not cache the llama.cpp weight layout: %s", exc)
    return choice


def _child(gguf: str, threads: int, repacked: bool, follow: list[int]) -> dict[str, Any]:
    """Loads the model with the layout, times a prefill (best of 3) and greedy decoding (fed ``follow`` if given)."""
    import llama_cpp as lc
    import numpy as np

    global _QUIET
    _QUIET = lc.llama_log_callback(lambda *_: None)  # kept referenced: llama.cpp calls it after this returns
    lc.llama_log_set(_QUIET, None)  # the load log would only fill the parent's pipe
    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(gguf.encode(), load_params(repacked))
    if not model:
        raise RuntimeError("could not load the model")
    cparams = lc.llama_context_default_params()
    cparams.n_ctx = 512
    cparams.n_batch = cparams.n_ubatch = 512
    cparams.n_threads = cparams.n_threads_batch = threads
    ctx = lc.llama_init_from_model(model, cparams)
    vocab = lc.llama_model_get_vocab(model)
    text = _PROMPT.encode()
    buf = (lc.llama_token * 256)()
    n = lc.llama_tokenize(vocab, text, len(text), buf, 256, True, False)
    ids = list(buf[: max(0, n)])
    mem = lc.llama_get_memory(ctx)

    def run(tokens: list[int], pos: int) -> None:
        batch = lc.llama_batch_init(len(tokens), 0, 1)
        try:
            for i, t in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, pos + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i == len(tokens) - 1
            batch.n_tokens = len(tokens)
            if lc.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
        finally:
            lc.llama_batch_free(batch)

    n_vocab = lc.llama_vocab_n_tokens(vocab)
    prefill = []
    for _ in range(3):
        lc.llama_memory_clear(mem, True)
        t = time.perf_counter()
        run(ids, 0)
        prefill.append(time.perf_counter() - t)
    out: list[int] = []
    spent = 0.0
    for i in range(DECODE_TOKENS):
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        out.append(int(logits.argmax()))
        t = time.perf_counter()
        run([follow[i] if i < len(follow) else out[-1]], len(ids) + i)
        spent += time.perf_counter() - t  # the decode step alone, not the argmax
    per_token = spent / DECODE_TOKENS
    lc.llama_free(ctx)
    lc.llama_model_free(model)
    return {"prefill_s": min(prefill), "decode_s_per_token": per_token, "tokens": out}


if __name__ == "__main__":
    model_path, n_threads, flag, forced = sys.argv[-4:]
    follow_ids = [int(t) for t in forced.split(",")] if forced != "-" else []
    print(json.dumps(_child(model_path, int(n_threads), flag == "1", follow_ids)))
