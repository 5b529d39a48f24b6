"""The training thread chooser on measured step timings (no real contention needed to check its decisions)."""

from __future__ import annotations

from core.train.threads import TrainThreads

# Measured on a 2-core machine (SmolLM2 LoRA step, 2 x 256 tokens): seconds and CPU share per thread count.
QUIET = {2: (3.8, 0.99), 1: (6.8, 1.0)}
BUSY = {2: (12.5, 0.63), 1: (6.8, 1.0)}
TOKENS = 512


def _run(chooser: TrainThreads, machine: dict[int, tuple[float, float]], steps: int) -> list[int]:
    """The thread count of each of ``steps`` steps on a machine behaving like ``machine``."""
    used = []
    for _ in range(steps):
        n = chooser.threads()
        seconds, share = machine[n]
        chooser.record(seconds, share * seconds * n, TOKENS)
        used.append(n)
    return used


def test_a_quiet_machine_never_probes_fewer_threads() -> None:
    chooser = TrainThreads(2)
    assert _run(chooser, QUIET, 200) == [2] * 200


def test_contention_moves_to_one_thread_and_back_once_it_ends() -> None:
    chooser = TrainThreads(2, probe_every=40)
    used = _run(chooser, BUSY, 10)
    assert used[:3] == [2, 2, 2] and used[-1] == 1 and chooser.current == 1  # 3 steps to see it, 3 to probe
    assert _run(chooser, BUSY, 60).count(2) == 3  # one probe of 2 threads after 40 steps: it loses, stays on 1
    assert chooser.current == 1
    used = _run(chooser, QUIET, 200)  # the other work ended: the next probe of 2 threads wins
    assert chooser.current == 2 and used[-1] == 2 and chooser.switches == 2


def test_when_fewer_threads_do_not_help_it_stops_trying_soon() -> None:
    """A low share from something else (a slow disk, a busy Python loop) where 1 thread is no faster."""
    odd = {2: (4.0, 0.6), 1: (7.5, 1.0)}
    chooser = TrainThreads(2)
    used = _run(chooser, odd, 300)
    assert chooser.current == 2
    assert used.count(1) <= 30, used.count(1)  # probes back off: ~10% of the steps at most


def test_one_core_leaves_threads_alone() -> None:
    chooser = TrainThreads(1)
    assert _run(chooser, {1: (6.8, 0.3)}, 20) == [1] * 20
