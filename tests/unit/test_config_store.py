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
