"""core.config and core.store: validation messages, safe names, atomic writes, app flags."""

from __future__ import annotations

from pathlib import Path

import pytest

import app
from core import store
from core.config import AppConfig, ConfigError, DemoProfile, parse_auth


def test_share_without_auth_is_refused_with_a_reason() -> None:
    with pytest.raises(ConfigError, match="--auth user:password"):
        AppConfig(share=True)
    assert AppConfig(share=True, auth=("u", "p")).share


def test_app_refuses_share_without_auth_before_loading_anything(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEMOFORGE_AUTH", raising=False)
    assert app.main(["--share"]) == 2
    assert "--auth" in capsys.readouterr().err


def test_auth_from_flag_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEMOFORGE_AUTH", raising=False)
    assert parse_auth(None) is None
    assert parse_auth("alice:s3:cret") == ("alice", "s3:cret")
    monkeypatch.setenv("DEMOFORGE_AUTH", "bob:pw")
    assert parse_auth(None) == ("bob", "pw")
    with pytest.raises(ConfigError, match="user:password"):
        parse_auth("nocolon")
    args = app.parse_args(["--share"])
    assert app.config_from_args(args).auth == ("bob", "pw")


@pytest.mark.parametrize("bad", [{"port": 0}, {"queue_size": 0}, {"concurrency": 0}, {"max_upload_mb": 0}])
def test_app_config_ranges(bad: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        AppConfig(**bad)


def test_profiles_load_by_name_and_reject_unknown_keys(tmp_path: Path) -> None:
    default = DemoProfile.load("default")
    assert default.title and default.examples
    assert DemoProfile.load("support-bot").system_prompt.startswith("You are the support assistant")
    with pytest.raises(ConfigError, match="not found.*default"):
        DemoProfile.load("nope")
    bad = tmp_path / "p.yaml"
    bad.write_text("title: X\nsytem_prompt: typo\n")
    with pytest.raises(ConfigError, match="unknown keys \\['sytem_prompt'\\]"):
        DemoProfile.load(bad)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("my adapter", "my-adapter"),
        ("../../etc/passwd", "etc-passwd"),
        ("a/b\\c", "a-b-c"),
        (".hidden", "hidden"),
        ("ok_name-1.2", "ok_name-1.2"),
    ],
)
def test_safe_name(raw: str, expected: str) -> None:
    assert store.safe_name(raw) == expected


@pytest.mark.parametrize("raw", ["", "...", "///", "  "])
def test_safe_name_rejects_empty(raw: str) -> None:
    with pytest.raises(ValueError, match="no usable characters"):
        store.safe_name(raw)


def test_atomic_dir_leaves_nothing_on_failure_and_replaces_on_success(tmp_path: Path) -> None:
    final = tmp_path / "adapter"
    with pytest.raises(RuntimeError), store.atomic_dir(final) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("crash mid-save")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with store.atomic_dir(final) as tmp:
        (tmp / "weights").write_text("v1")
    with store.atomic_dir(final) as tmp:
        (tmp / "weights").write_text("v2")
    assert (final / "weights").read_text() == "v2"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_home_honours_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMOFORGE_HOME", str(tmp_path / "h"))
    assert store.home() == tmp_path / "h" and store.subdir("runs").is_dir()


def test_atomic_dir_without_replace_never_overwrites(tmp_path: Path) -> None:
    """A finished adapter is never replaced by a new run's save (issue 8.5: '../id' replaced 'id')."""
    final = tmp_path / "id"
    with store.atomic_dir(final, replace=False) as tmp:
        (tmp / "weights").write_text("first")
    with pytest.raises(FileExistsError, match="'id' already exists"), store.atomic_dir(final, replace=False) as tmp:
        (tmp / "weights").write_text("second")
    # the folder appears while the second save is being written: still not replaced, and no temp folder left
    other = tmp_path / "late"
    with pytest.raises(FileExistsError, match="appeared"), store.atomic_dir(other, replace=False) as tmp:
        other.mkdir()
        (other / "weights").write_text("theirs")
    assert (final / "weights").read_text() == "first" and (other / "weights").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id", "late"]


def test_safe_name_caps_length_without_a_trailing_separator() -> None:
    assert store.safe_name("a" * 63 + " b" * 10) == "a" * 63
    assert len(store.safe_name("x" * 300)) == store.MAX_NAME


def test_tmp_dir_lives_in_the_home_and_cleans_old_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scratch files (zips, scored CSVs) go to <home>/tmp and old ones are removed (issue 8.5: they piled up in
    the system temp dir)."""
    import os
    import tempfile
    import time

    home = tmp_path / "home"
    old = store.tmp_dir("zip", home)
    (old / "a.zip").write_text("x")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    legacy = Path(tempfile.mkdtemp(prefix="demoforge-zip-"))
    os.utime(legacy, (two_hours_ago, two_hours_ago))
    unrelated = Path(tempfile.mkdtemp(prefix="someone-else-"))
    os.utime(unrelated, (two_hours_ago, two_hours_ago))
    try:
        fresh = store.tmp_dir("zip", home)
        assert fresh.parent == home / "tmp" and fresh.name.startswith("zip-") and fresh.is_dir()
        assert not old.exists(), "a scratch folder older than the max age is removed when the next one is made"
        assert not legacy.exists(), "folders earlier versions left in the system temp dir are cleaned too"
        assert unrelated.exists(), "only DemoForge's own folders are touched"
        assert store.tmp_dir("zip", home) != fresh and fresh.exists(), "a young folder stays (a download may need it)"
    finally:
        import shutil

        shutil.rmtree(unrelated, ignore_errors=True)
        shutil.rmtree(legacy, ignore_errors=True)


def test_paths_are_shown_relative_to_the_home(tmp_path: Path) -> None:
    import sys

    home = tmp_path / "home"
    (home / "runs" / "r1").mkdir(parents=True)
    assert store.relative_to_home(home / "runs" / "r1" / "stderr.log", home) == "runs/r1/stderr.log"
    assert store.relative_to_home("/somewhere/else/data.csv", home) == "data.csv"
    repo = Path(store.__file__).resolve().parents[1]
    text = (
        f"see {home}/runs/r1/stderr.log\n"
        f'  File "{repo}/core/train/runner.py", line 3\n'
        f'  File "{sys.prefix}/lib/site-packages/torch/x.py", line 9\n'
        f"home is {home}; /rootfs/keep stays"
    )
    out = store.redact_paths(text, home)
    assert str(home) not in out and str(repo) not in out and sys.prefix not in out
    assert "see runs/r1/stderr.log" in out and 'File "core/train/runner.py"' in out
    assert "<python>/lib/site-packages/torch/x.py" in out and "/rootfs/keep stays" in out
