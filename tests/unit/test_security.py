"""What a visitor can learn or break through core's messages: no server paths, no overwrites, limits that hold."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from core import adapters, store
from core.data import MIB, DataError, load_data
from core.errors import AdapterError


def fake_adapter(home: Path, name: str, card: str | None = None) -> Path:
    path = home / "adapters" / name
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    (path / "adapter_card.json").write_text(card if card is not None else json.dumps({"name": name, "task": "sft"}))
    return path


def test_adapter_messages_name_no_server_path(demoforge_home: Path) -> None:
    broken = fake_adapter(demoforge_home, "broken", card="{not json")
    with pytest.raises(AdapterError) as e:
        adapters.read(broken)
    assert "unreadable card" in str(e.value) and str(demoforge_home) not in str(e.value)
    for name in ("../../etc/passwd", "", "missing"):
        with pytest.raises(AdapterError, match="No adapter named") as e:
            adapters.get(name)
        assert str(demoforge_home) not in str(e.value)


def test_rename_never_overwrites_and_caps_names(demoforge_home: Path) -> None:
    fake_adapter(demoforge_home, "id")
    other = fake_adapter(demoforge_home, "other")
    with pytest.raises(AdapterError, match=r"'id' already exists \('\.\./id' is saved as 'id'\)"):
        adapters.rename("other", "../id")
    with pytest.raises(AdapterError, match="65 characters long; use at most 64"):
        adapters.rename("other", "x" * 65)
    assert (
        other.is_dir()
        and json.loads((demoforge_home / "adapters" / "id" / "adapter_card.json").read_text())["name"] == "id"
    )
    assert adapters.rename("other", "new name").name == "new-name"


def test_adapter_zip_goes_to_the_homes_tmp_not_the_system_temp(demoforge_home: Path) -> None:
    fake_adapter(demoforge_home, "zipme")
    before = {p.name for p in Path(tempfile.gettempdir()).glob("demoforge-zip-*")}
    path = adapters.zip_adapter("zipme")
    assert path.parent.parent == demoforge_home / "tmp" and path.name == "zipme.zip" and path.is_file()
    assert {p.name for p in Path(tempfile.gettempdir()).glob("demoforge-zip-*")} <= before


def test_data_errors_for_server_files_name_the_file_only(tmp_path: Path) -> None:
    upload = tmp_path / "gradio" / "abc123" / "my data.csv"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"PK\x03\x04rest-of-a-zip")
    for path in (upload, tmp_path / "gone.csv"):
        with pytest.raises(DataError) as e:
            load_data(path)
        assert str(tmp_path) not in str(e.value), str(e.value)


def test_file_scoring_uses_the_server_upload_limit(tmp_path: Path) -> None:
    """--max-upload-mb reaches the classify service: a file over it is refused in MiB before any model loads."""
    from core.classify.service import ClassifyService

    def no_model() -> None:
        raise AssertionError("a refused file must not load a model")

    service = ClassifyService(no_model, max_bytes=1 * MIB)  # type: ignore[arg-type]
    big = tmp_path / "big.csv"
    big.write_text("text,label\n" + "good movie,pos\n" * 80_000)  # ~1.2 MiB
    with pytest.raises(DataError, match=r"big\.csv is 1\.\d MiB, over the 1\.0 MiB limit"):
        service.score_file(big, "text", None, "pos, neg")


def test_scratch_dirs_are_per_call_and_inside_the_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    a, b = store.tmp_dir("scored", home), store.tmp_dir("scored", home)
    assert a != b and a.parent == b.parent == home / "tmp"


def test_expected_errors_are_logged_once_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """Gradio's queue prints the traceback of every raised gr.Error unless told not to: a visitor's empty message
    wrote ~40 lines to the log. Expected errors are one line; a bug keeps its traceback, logged once by us."""
    import logging

    import gradio as gr

    from core.errors import ChatError
    from demo.errors import to_gr_error

    caplog.set_level(logging.INFO, logger="demoforge")
    for exc in (ChatError("The message is empty."), gr.Error("Pick an adapter first.")):
        err = to_gr_error(exc, "answering")
        assert err.print_exception is False and err.message.strip("'") == str(exc).strip("'")
    assert all(r.exc_info is None for r in caplog.records) and len(caplog.records) == 2
    bug = to_gr_error(KeyError("x"), "answering")
    assert bug.print_exception is False and "reference" in bug.message
    assert caplog.records[-1].exc_info is not None  # the bug's traceback: once, under its reference
