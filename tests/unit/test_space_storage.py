"""On a Space, the home survives restarts only on the mounted storage: the decision behind the builder's notice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core import store
from demo.render import storage_notice


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    mounted = tmp_path / "data"
    mounted.mkdir()
    return mounted


def test_off_a_space_storage_is_never_flagged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert store.storage_lost_on_restart(tmp_path, storage=tmp_path / "absent") is None
    assert storage_notice(None) == ""


def test_a_space_without_mounted_storage_loses_its_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPACE_ID", "acme/demo")
    assert store.storage_lost_on_restart(tmp_path / "home", storage=tmp_path / "absent") == "no_storage"
    text = storage_notice("no_storage")
    assert "adapters, arena votes and training runs" in text and "lost" in text
    assert "enable persistent storage" in text and "/data/demoforge" in text


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to a read-only folder anyway")
def test_read_only_storage_counts_as_none(monkeypatch: pytest.MonkeyPatch, storage: Path) -> None:
    monkeypatch.setenv("SPACE_ID", "acme/demo")
    storage.chmod(0o555)
    try:
        assert store.storage_lost_on_restart(storage / "demoforge", storage=storage) == "no_storage"
    finally:
        storage.chmod(0o755)


def test_a_home_on_the_mounted_storage_is_kept_and_one_beside_it_is_not(
    monkeypatch: pytest.MonkeyPatch, storage: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv("SPACE_ID", "acme/demo")
    assert store.storage_lost_on_restart(storage / "demoforge", storage=storage) is None
    assert store.storage_lost_on_restart(tmp_path / "elsewhere", storage=storage) == "home_elsewhere"
    text = storage_notice("home_elsewhere")
    assert "DEMOFORGE_HOME" in text and "/data" in text and "lost" in text


def test_on_a_space_with_storage_the_home_goes_there(monkeypatch: pytest.MonkeyPatch, storage: Path) -> None:
    monkeypatch.setenv("SPACE_ID", "acme/demo")
    monkeypatch.delenv("DEMOFORGE_HOME")
    monkeypatch.setattr(store, "SPACE_STORAGE", storage)
    assert store.home() == storage / "demoforge"
    assert store.storage_lost_on_restart(storage=storage) is None
