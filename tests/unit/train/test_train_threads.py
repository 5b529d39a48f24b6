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


def test_counts_halve_one_at_a_time_from_many_cores_and_probe_back_one_step() -> None:
    """4 threads (a bigger machine) under contention: 2 wins, 1 does not; later it probes 4 again, not more."""
    machine = {4: (10.0, 0.5), 2: (5.0, 0.6), 1: (6.0, 1.0)}
    chooser = TrainThreads(4, probe_every=20)
    used = _run(chooser, machine, 100)
    assert chooser.current == 2 and set(used) == {4, 2, 1}
    assert used[:3] == [4, 4, 4] and used[3:6] == [2, 2, 2]


def test_cpu_threads_only_for_one_cpu_process_and_not_when_fixed(monkeypatch) -> None:
    from types import SimpleNamespace

    import torch

    from core.train.loop import cpu_threads, fixed_threads

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    cpu = SimpleNamespace(device=torch.device("cpu"), num_processes=1)
    monkeypatch.delenv("DEMOFORGE_TRAIN_THREADS", raising=False)
    assert isinstance(cpu_threads(cpu), TrainThreads)
    assert cpu_threads(SimpleNamespace(device=torch.device("cuda"), num_processes=1)) is None
    assert cpu_threads(SimpleNamespace(device=torch.device("cpu"), num_processes=2)) is None
    monkeypatch.setenv("DEMOFORGE_TRAIN_THREADS", "1")
    assert cpu_threads(cpu) is None and fixed_threads() == 1
    monkeypatch.setenv("DEMOFORGE_TRAIN_THREADS", "many")
    assert fixed_threads() is None


class _Scripted:
    """A chooser that probes 1 thread on steps 3-5 and records what the loop reports for each step."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float, float, int]] = []

    @property
    def probing(self) -> bool:
        return 2 <= len(self.calls) <= 4

    def threads(self) -> int:
        return 1 if self.probing else 2

    def record(self, seconds: float, cpu_seconds: float, tokens: int) -> None:
        import torch

        self.calls.append((torch.get_num_threads(), seconds, cpu_seconds, tokens))


def test_the_loop_runs_each_step_on_the_chosen_count_and_gives_the_count_back(
    tiny_models, tmp_path, demoforge_home, monkeypatch
) -> None:
    import torch

    from core.train import loop
    from core.train import runner as train
    from tests.toy_data import sft_cfg, write_sft

    chooser = _Scripted()
    monkeypatch.setattr(loop, "cpu_threads", lambda acc: chooser)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = train.run(sft_cfg(tiny_models, write_sft(tmp_path / "d.jsonl"), max_steps=8), tmp_path / "run")
        assert result.status == "finished", result.error
        assert [n for n, *_ in chooser.calls] == [2, 2, 1, 1, 1, 2, 2, 2]  # each step on the count asked for
        assert all(s > 0 and c > 0 and t > 0 for _, s, c, t in chooser.calls)  # wall, CPU seconds, tokens
        assert torch.get_num_threads() == 2  # given back after the steps
    finally:
        torch.set_num_threads(before)
