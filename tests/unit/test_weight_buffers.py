"""The llama.cpp weight-layout choice: measured in child processes, safe when a layout crashes, cached per machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.backends import weight_buffers as wb
from core.errors import ModelError

TOKENS = list(range(100, 132))


def _ok(prefill: float, per_token: float, tokens: list[int] = TOKENS) -> wb.ProbeResult:
    return wb.ProbeResult(ok=True, prefill_s=prefill, decode_s_per_token=per_token, tokens=list(tokens))


def test_repacked_is_chosen_only_when_it_ran_agreed_and_was_faster() -> None:
    plain = _ok(0.200, 0.012)
    use, why = wb.decide(plain, _ok(0.055, 0.006))
    assert use and "faster" in why
    use, why = wb.decide(plain, wb.ProbeResult(ok=False, error="the child exited with -11"))
    assert not use and "-11" in why  # a crash (GCC 12's AMX build) keeps the plain layout
    use, why = wb.decide(plain, _ok(0.19, 0.0118))
    assert not use and "not faster" in why  # within the noise: the plain, safer layout
    garbage = [t + 1 for t in TOKENS]  # a broken kernel: fed the same tokens, it picks others everywhere
    use, why = wb.decide(plain, _ok(0.05, 0.005, garbage))
    assert not use and "agree" in why


def test_a_near_tie_flipped_by_rounding_still_counts_as_agreement() -> None:
    near = list(TOKENS)
    near[4] += 1  # seen on the Xeon: 2 of 32 teacher-forced picks differ between the layouts
    near[6] += 1
    assert wb.agreement(TOKENS, near) == pytest.approx(30 / 32)
    assert wb.decide(_ok(0.2, 0.012), _ok(0.05, 0.006, near))[0]


def test_the_choice_is_cached_per_model_and_thread_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    calls: list[tuple[int, bool]] = []

    def fake_probe(path: Path, threads: int, repacked: bool, follow: list[int] | None = None) -> wb.ProbeResult:
        calls.append((threads, repacked))
        assert not repacked or follow == TOKENS  # the repacked child is fed the plain child's picks
        return _ok(0.05, 0.005) if repacked else _ok(0.2, 0.012)

    monkeypatch.setattr(wb, "probe", fake_probe)
    first = wb.choose(gguf, 2, tmp_path / "cache")
    assert first.repacked and calls == [(2, False), (2, True)]
    again = wb.choose(gguf, 2, tmp_path / "cache")
    assert again == first and len(calls) == 2  # read back, not measured again
    wb.choose(gguf, 1, tmp_path / "cache")
    assert len(calls) == 4  # another thread count is another measurement
    gguf.write_bytes(b"GGUF, another model")
    wb.choose(gguf, 2, tmp_path / "cache")
    assert len(calls) == 6  # so is a changed model file


def test_a_broken_cache_file_is_measured_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    (tmp_path / "llamacpp-weights.json").write_text("{not json")
    monkeypatch.setattr(wb, "probe", lambda *a, **k: _ok(0.2, 0.012))
    assert not wb.choose(gguf, 2, tmp_path).repacked


def test_a_child_that_fails_is_a_failed_probe_not_an_exception(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"this is not a GGUF file")
    result = wb.probe(bad, 1, repacked=False)
    assert not result.ok and "exited with" in result.error


def test_layout_option_is_validated_and_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("llama_cpp")
    from core.backends.llamacpp import LlamaCppOptions

    assert LlamaCppOptions().weights == "auto"
    monkeypatch.setenv("DEMOFORGE_LLAMA_WEIGHTS", "Plain")
    assert LlamaCppOptions().weights == "plain"
    assert LlamaCppOptions(weights="repacked").weights == "repacked"
    with pytest.raises(ModelError, match="auto, plain, repacked"):
        LlamaCppOptions(weights="amx")


def test_the_model_loads_on_a_thread_that_is_gone_before_decoding_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """AMX repacking runs an OpenMP loop at load; the loading thread's libgomp pool lives as long as that thread, and
    beside the decoding pool it made every barrier sleep (149 -> 27 tok/s). So the load runs on a short-lived one."""
    pytest.importorskip("llama_cpp")
    import threading

    from core.backends import llamacpp

    seen: list[threading.Thread] = []

    class FakeLib:
        @staticmethod
        def llama_model_load_from_file(path: bytes, params: object) -> str:
            seen.append(threading.current_thread())
            return "model"

    monkeypatch.setattr(wb, "load_params", lambda repacked: {"repacked": repacked})
    assert llamacpp._load_model(FakeLib, Path("m.gguf"), True) == "model"
    assert seen[0] is not threading.current_thread() and not seen[0].is_alive()

    class Failing:
        @staticmethod
        def llama_model_load_from_file(path: bytes, params: object) -> str:
            raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):  # an error on the load thread reaches the caller
        llamacpp._load_model(Failing, Path("m.gguf"), False)
