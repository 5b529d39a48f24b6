"""The Fine-tune tab and adapter library through a real server and gradio_client, on a tiny Llama (fast)."""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from core.config import AppConfig
from core.engine import Engine
from tests.helpers import isolated_home, serve

pytestmark = pytest.mark.ui

CHAT = "Chat (SFT)"
# /start_training takes its settings by name (the rest keep the tab's defaults).
FAST = {
    "task": CHAT,
    "time_budget_minutes": 0,
    "epochs": 40.0,
    "lr": 5e-3,
    "max_length": 64,
    "batch_size": 4,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "seed": 0,
}


def _settings(base: str, name: str, epochs: float = 40.0) -> dict:
    return {**FAST, "base_model": base, "adapter_name": name, "epochs": epochs}


@pytest.fixture(scope="module")
def server(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    home = tmp_path_factory.mktemp("ft-home")
    data = home / "toy.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"w{i % 7} w{(i + 1) % 7} good"},
                {"role": "assistant", "content": f"r{i % 7} r{(i + 1) % 7} great"},
            ]
        }
        for i in range(40)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    bad = home / "bad.csv"
    bad.write_text("foo,bar\n1,2\n", encoding="utf-8")
    markup = home / "markup.csv"
    markup.write_text(
        'text,label\n"<svg id=""pwn"" onload=""alert(1)""></svg> good",a\n"**bold** [link](http://x.io)",b\n'
        + "".join(f"w{i} good,{'ab'[i % 2]}\n" for i in range(10)),
        encoding="utf-8",
    )
    base = str(tiny_models["llama"])
    config = AppConfig(model=base)
    with isolated_home(home), serve(Engine(config), config) as url:
        yield {
            "url": url,
            "base": base,
            "bert": str(tiny_models["bert"]),
            "data": data,
            "bad": bad,
            "markup": markup,
            "home": home,
        }


def _wait(client: Client, until: set[str], timeout: float = 180, min_step: int = 0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = client.predict("", api_name="/training_status")
        if st["status"] in until and st["step"] >= min_step:
            return st
        time.sleep(0.5)
    raise AssertionError(f"run did not reach {until} (step >= {min_step}) in {timeout}s: {st}")


def test_bad_upload_gets_the_reports_error_and_start_is_refused(server: dict) -> None:
    client = Client(server["url"], verbose=False)
    _, report, preview = client.predict(
        handle_file(str(server["bad"])), CHAT, server["base"], "", 64, api_name="/upload_data"
    )
    assert "cannot be used" in report and "Traceback" not in report
    assert "foo" in report and "bar" in report  # says which columns it found
    assert str(server["home"]) not in report  # no server path
    # The refused file never reaches a worker: start says why, and no run folder appears.
    with pytest.raises(AppError, match="This file cannot be used"):
        client.predict(**_settings(server["base"], "refused"), api_name="/start_training")
    runs = server["home"] / "runs"
    assert not runs.exists() or not list(runs.glob("*-refused"))
    with pytest.raises(AppError, match="Pick a sample dataset or upload a file first"):
        Client(server["url"], verbose=False).predict(**_settings(server["base"], "x"), api_name="/start_training")


def test_uploaded_markup_is_escaped_in_the_report_and_preview(server: dict) -> None:
    client = Client(server["url"], verbose=False)
    _, report, preview = client.predict(
        handle_file(str(server["markup"])), "Classification", server["bert"], "", 64, api_name="/upload_data"
    )
    assert "12 kept" in report
    assert "<svg" not in report and "<svg" not in preview  # shown as text, never as live markup
    assert "&lt;svg" in report and "&lt;svg" in preview
    assert "**bold**" not in report and "\\*\\*bold\\*\\*" in report  # no Markdown from user text
    assert "[link](http" not in report


def test_upload_report_train_adapter_appears_and_chats(server: dict) -> None:
    client = Client(server["url"], verbose=False)
    _, report, preview = client.predict(
        handle_file(str(server["data"])), CHAT, server["base"], "", 64, api_name="/upload_data"
    )
    assert "40 kept" in report
    # The preview shows the first 20 rows, chat turns as a conversation (not Python's [{'role': ...}] text).
    assert preview.count("df-turn-user") == 20 and preview.count("df-turn-assistant") == 20
    assert "'role'" not in preview and "w1 w2 good" in preview
    started = client.predict(**_settings(server["base"], "toy-adapter"), api_name="/start_training")
    assert "toy-adapter" in started and "starting" in started  # the run's status, until the page's timer takes over
    st = _wait(client, {"finished", "failed", "stopped", "time_budget"})
    assert st["status"] == "finished", st
    assert st["adapter_name"] == "toy-adapter"
    train = [p["value"] for p in st["loss_points"] if p["series"] == "train loss"]
    assert len(train) >= 5 and train[-1] < train[0]
    assert any(p["series"] == "eval loss" for p in st["loss_points"])

    args = ("w1 w2 good", None, "", 0.0, 1.0, 0, 6, 1.0, -1)
    tuned = client.predict(*args, "toy-adapter", api_name="/chat")
    base = client.predict(*args, "", api_name="/chat")
    assert tuned.strip() and tuned != base
    assert tuned.split()[0].startswith("r")  # it learned the reply vocabulary
    switched = client.predict("toy-adapter", api_name="/switch_adapter")
    assert "base model not reloaded" in switched

    zipped = client.predict("toy-adapter", api_name="/download_adapter")
    names = zipfile.ZipFile(zipped).namelist()
    assert "toy-adapter/adapter_model.safetensors" in names and "toy-adapter/adapter_card.json" in names


def test_positional_start_still_works_and_a_missing_base_is_refused_at_start(server: dict) -> None:
    # Positional arguments in the tab's order still reach the handler: the base model (2nd) is checked before any
    # worker starts, so a base that is not there is refused at once and no run folder appears.
    client = Client(server["url"], verbose=False)
    client.predict(handle_file(str(server["data"])), CHAT, server["base"], "", 64, api_name="/upload_data")
    runs_before = set((server["home"] / "runs").glob("*")) if (server["home"] / "runs").is_dir() else set()
    missing = str(server["home"] / "no-such-model")
    values = (CHAT, missing, "", "crash", 0, 1.0, 5e-3, 64, 4, 1, 8, 16, 0.0, 0.1, "cosine", 0)
    with pytest.raises(AppError, match="neither an existing folder nor a Hub id"):
        client.predict(*values, api_name="/start_training")  # positional, in the tab's order
    # An impossible setting is refused at start with the field's name (Gradio's own check named none).
    with pytest.raises(AppError, match="epochs=-3.0 must be positive"):
        client.predict(**_settings(server["base"], "neg", epochs=-3.0), api_name="/start_training")
    runs_after = set((server["home"] / "runs").glob("*")) if (server["home"] / "runs").is_dir() else set()
    assert {p.name for p in runs_after - runs_before if not p.name.startswith(".")} == set()


def test_second_start_refused_stop_resume_and_reattach(server: dict) -> None:
    client = Client(server["url"], verbose=False)
    client.predict(handle_file(str(server["data"])), CHAT, server["base"], "", 64, api_name="/upload_data")
    client.predict(**_settings(server["base"], "long-run", epochs=1000.0), api_name="/start_training")
    first = _wait(client, {"running"}, min_step=3)
    with pytest.raises(AppError, match="already in progress"):
        client.predict(**_settings(server["base"], "other"), api_name="/start_training")

    # A fresh client (a reopened page, another browser) finds the same live run.
    other = Client(server["url"], verbose=False)
    seen = other.predict("", api_name="/training_status")
    assert seen["run_id"] == first["run_id"] and seen["status"] == "running"

    other.predict(api_name="/stop_training")
    stopped = _wait(client, {"stopped", "failed"}, timeout=120)
    assert stopped["status"] == "stopped", stopped
    assert not (server["home"] / "adapters" / "long-run").exists()  # no adapter that looks finished
    with pytest.raises(AppError, match="No run is in progress"):
        other.predict(api_name="/stop_training")

    client.predict(first["run_id"], api_name="/resume_training")
    resumed = _wait(client, {"running"}, min_step=stopped["step"] + 2)
    assert resumed["run_id"] == first["run_id"]
    client.predict(api_name="/stop_training")
    _wait(client, {"stopped", "failed"}, timeout=120)
