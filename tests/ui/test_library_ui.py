"""The Adapters tab's endpoints through a real server and gradio_client, on the tiny Llama with real LoRA adapters:
a renamed adapter keeps chatting under its new name, refusals are clear, nothing leaks a server path, export gives
a GGUF and a Modelfile to download and the serve commands use them."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from core.config import AppConfig, DemoProfile
from core.engine import Engine
from tests.helpers import serve
from tests.lora import make_adapter
from tests.unit import test_export_gguf

pytestmark = pytest.mark.ui
bpe_llama = test_export_gguf.bpe_llama  # the session fixture: a tiny Llama with a byte-level BPE (GGUF-exportable)


@pytest.fixture
def client(tiny_models: dict[str, Path], demoforge_home: Path) -> Iterator[Client]:
    """The app on the tiny Llama, with adapters 'alpha' and 'beta' in a fresh home."""
    base = tiny_models["llama"]
    make_adapter(base, "alpha", 1)
    make_adapter(base, "beta", 2)
    config = AppConfig(model=str(base), device="cpu", dtype="float32")
    with serve(Engine(config), config) as url:
        yield Client(url, verbose=False)


def _chat(client: Client, adapter: str) -> str:
    return client.predict("good movie", None, "", 0.0, 0.9, 50, 8, 1.0, -1, adapter, api_name="/chat")


def test_a_renamed_adapter_answers_under_its_new_name_and_the_old_one_is_gone(client: Client) -> None:
    before = _chat(client, "alpha")  # loads alpha onto the base
    table, pick, status = client.predict("alpha", "gamma", api_name="/rename_adapter")
    assert status == "Renamed **alpha** to **gamma**."
    assert pick["value"] == "gamma" and sorted(r[0] for r in table["data"]) == ["beta", "gamma"]
    assert _chat(client, "gamma") == before  # same weights, new name: greedy output unchanged
    with pytest.raises(AppError, match="No adapter named 'alpha'"):
        _chat(client, "alpha")
    with pytest.raises(AppError, match="already exists"):
        client.predict("gamma", "beta", api_name="/rename_adapter")


def test_delete_needs_the_name_typed_and_then_the_adapter_is_gone(client: Client, demoforge_home: Path) -> None:
    with pytest.raises(AppError, match="type its name exactly"):
        client.predict("beta", "bet", api_name="/delete_adapter")
    zipped = client.predict("beta", api_name="/download_adapter")
    assert "beta/adapter_model.safetensors" in zipfile.ZipFile(zipped).namelist()
    table, pick, status, confirm = client.predict("beta", "beta", api_name="/delete_adapter")
    assert status == "Deleted **beta**." and confirm == "" and pick["value"] == "alpha"
    assert [r[0] for r in table["data"]] == ["alpha"]
    with pytest.raises(AppError, match="No adapter named 'beta'"):
        _chat(client, "beta")


def test_merge_reports_without_a_server_path_and_push_needs_a_token(client: Client, demoforge_home: Path) -> None:
    status = client.predict("alpha", api_name="/merge_adapter")
    assert status.startswith("Merged **alpha**") and str(demoforge_home) not in status
    with pytest.raises(AppError, match="token"):
        client.predict("alpha", "me/alpha", "", False, api_name="/push_adapter")
    with pytest.raises(AppError, match="No adapter named 'nope'"):
        client.predict("nope", api_name="/download_adapter")


def test_gradio_temp_files_are_swept_when_the_server_stops(
    tiny_models: dict[str, Path], demoforge_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "gradio-cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    make_adapter(tiny_models["llama"], "alpha", 1)
    config = AppConfig(model=str(tiny_models["llama"]), device="cpu", dtype="float32")
    upload = tmp_path / "rows.csv"
    upload.write_text("text,label\ngood movie,pos\nbad movie,neg\n")
    with serve(Engine(config), config) as url:
        client = Client(url, verbose=False)
        client.predict("alpha", api_name="/download_adapter")
        with upload.open("rb") as fh:  # what the browser does with a file input
            uploaded = httpx.post(f"{url}gradio_api/upload", files={"files": ("rows.csv", fh)}).json()
        assert Path(uploaded[0]).is_relative_to(cache)
        kept = [p for p in cache.rglob("*") if p.is_file()]
        assert {p.suffix for p in kept} >= {".zip", ".csv"}, kept  # the download and the upload sit in the cache
    assert not [p for p in cache.rglob("*") if p.is_file()]  # delete_cache sweeps them when the server stops


# --- export to GGUF / Ollama and serve on another backend ------------------------------------------------------------


@pytest.fixture
def bpe_client(bpe_llama: Path, demoforge_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    """The app on the tiny byte-level-BPE Llama (GGUF-exportable) with adapter 'alpha'; its freshly trained
    pre-tokenizer is registered under llama.cpp's 'gpt-2' name, as a known model's would be."""
    from transformers import AutoTokenizer

    from core import export_gguf

    key = hashlib.sha256(str(AutoTokenizer.from_pretrained(bpe_llama).encode(export_gguf._CHKTXT)).encode()).hexdigest()
    monkeypatch.setitem(export_gguf._KNOWN_PRE, key, "gpt-2")
    make_adapter(bpe_llama, "alpha", 1)
    profile = DemoProfile(system_prompt="You are Acme's support bot.")
    config = AppConfig(model=str(bpe_llama), device="cpu", dtype="float32", profile=profile)
    with serve(Engine(config), config) as url:
        yield Client(url, verbose=False)


def test_export_gives_the_gguf_and_modelfile_to_download_and_names_them_relative_to_the_home(
    bpe_client: Client, demoforge_home: Path
) -> None:
    import gguf

    job = bpe_client.submit("alpha", "q8_0", api_name="/export_gguf")
    files, status = job.result(timeout=120)
    assert status.startswith("Exported **alpha** as q8_0 GGUF into `exports/alpha`")
    assert "`exports/alpha/alpha-q8_0.gguf`" in status and str(demoforge_home) not in status
    downloaded = {Path(f).name: Path(f) for f in files}  # fetched over HTTP by the client
    assert set(downloaded) == {"alpha-q8_0.gguf", "Modelfile"}
    reader = gguf.GGUFReader(str(downloaded["alpha-q8_0.gguf"]))
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    assert 'SYSTEM """You are Acme\'s support bot."""' in downloaded["Modelfile"].read_text()  # from the profile
    files, status = bpe_client.predict("alpha", "lora", api_name="/export_gguf")
    assert sorted(Path(f).name for f in files) == ["Modelfile", "alpha.lora.gguf", "base.gguf"]
    commands = bpe_client.predict("alpha", api_name="/serve_commands")
    assert "llama-server -m exports/alpha/base.gguf --lora exports/alpha/alpha.lora.gguf" in commands
    assert "export it first" not in commands and str(demoforge_home) not in commands
    assert "vllm serve bpe-llama --enable-lora --lora-modules alpha=adapters/alpha" in commands
    assert "curl -s http://127.0.0.1:8000/v1/models  # lists alpha" in commands


def test_export_refusals_are_clear(client: Client) -> None:
    with pytest.raises(AppError, match="byte-level BPE"):  # the word-level test tokenizer has no GGUF form
        client.predict("alpha", "f16", api_name="/export_gguf")
    with pytest.raises(AppError, match="'q4'.*not in the list of choices"):  # Gradio's own check of the Radio
        client.predict("alpha", "q4", api_name="/export_gguf")
    with pytest.raises(AppError, match="No adapter named 'nope'"):
        client.predict("nope", api_name="/serve_commands")
    assert "--lora-modules beta=adapters/beta" in client.predict("beta", api_name="/serve_commands")


# --- run card and publish to a Space ----------------------------------------------------------------------------------


def _give_run_data(home: Path, name: str) -> None:
    """Point the adapter's card at a training file, as a real run's card does, so it has held-out prompts."""
    import json

    data = home / "toy.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"w{i}", "response": f"r{i}"}) + "\n" for i in range(20)))
    card_path = home / "adapters" / name / "adapter_card.json"
    card = json.loads(card_path.read_text())
    card["config"] = {"data_path": str(data), "eval_fraction": 0.1, "seed": 42}
    card_path.write_text(json.dumps(card))


def test_download_run_card_serves_the_runs_card_or_makes_one_with_held_out_answers(
    client: Client, demoforge_home: Path
) -> None:
    import re

    _give_run_data(demoforge_home, "alpha")
    made = Path(client.predict("alpha", api_name="/download_run_card")).read_text(encoding="utf-8")
    assert made.startswith("<!doctype html>") and "<h1>alpha</h1>" in made and "<script" not in made
    section = made.split("base vs tuned</h2>", 1)[1].split("<h2>", 1)[0]
    rows = re.findall(r"<tr><td>(w\d+)</td><td>(.*?)</td><td>(.*?)</td><td>(r\d+)</td></tr>", section, re.S)
    assert len(rows) == 2 and all(base != tuned for _, base, tuned, _ in rows), section  # 2 eval rows of 20
    # The card a run wrote is served as it is (not remade).
    (demoforge_home / "adapters" / "beta" / "run_card.html").write_text("<!doctype html><p>written by the run</p>")
    served = Path(client.predict("beta", api_name="/download_run_card")).read_text(encoding="utf-8")
    assert served == "<!doctype html><p>written by the run</p>"
    with pytest.raises(AppError, match="No adapter selected"):
        client.predict(None, api_name="/download_run_card")


TOKEN = "hf_NOT_A_REAL_TOKEN_abcdefghijklmnop"


def test_publish_without_a_token_or_offline_names_the_bundle_folder_and_never_the_token(
    client: Client, demoforge_home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(AppError, match="not of the form owner/name"):
        client.predict("alpha", "default", "no-slash", TOKEN, False, api_name="/publish_space")
    assert not (demoforge_home / "bundles").exists()  # a bad id is refused before anything is built
    with pytest.raises(AppError, match=r"No Hugging Face token.*The bundle is ready in bundles/") as err:
        client.predict("alpha", "default", "acme/alpha-demo", "", False, api_name="/publish_space")
    assert str(demoforge_home) not in str(err.value)
    (bundle,) = (demoforge_home / "bundles").iterdir()
    assert f"bundles/{bundle.name}" in str(err.value) and (bundle / "adapters" / "alpha").is_dir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AppError, match=r"Could not upload to the Space 'acme/alpha-demo'.*ready in bundles/") as err:
        client.predict("alpha", "default", "acme/alpha-demo", TOKEN, False, api_name="/publish_space")
    assert TOKEN not in str(err.value) and TOKEN not in caplog.text
    for f in (demoforge_home / "bundles").rglob("*"):
        if f.is_file() and f.stat().st_size < 5_000_000:
            assert TOKEN.encode() not in f.read_bytes(), f


def test_publish_creates_the_space_and_uploads_a_bundle_that_lands_on_the_adapter(
    client: Client, demoforge_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    from core.config import DemoProfile

    calls: list[tuple] = []

    class FakeHub:
        def __init__(self, token: str) -> None:
            calls.append(("token", token))

        def create_repo(self, repo_id: str, **kw: object) -> None:
            calls.append(("create", repo_id, kw))

        def upload_folder(self, folder_path: str, repo_id: str, repo_type: str) -> None:
            calls.append(("upload", Path(folder_path), repo_id, repo_type))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    status = client.predict("beta", "default", " acme/beta-demo ", TOKEN, True, api_name="/publish_space")
    assert status.startswith("Published **beta** to [https://huggingface.co/spaces/acme/beta-demo]")
    assert TOKEN not in status and str(demoforge_home) not in status
    (_, token), (_, repo, kw), (_, folder, repo2, kind) = calls
    assert token == TOKEN and repo == repo2 == "acme/beta-demo" and kind == "space"
    assert kw == {"repo_type": "space", "space_sdk": "gradio", "private": True, "exist_ok": True}
    # The default profile names no adapter: the published one becomes what a visitor lands on.
    landed = DemoProfile.load(folder / "assets" / "profiles" / "default.yaml")
    assert landed.audience_adapters == ["beta"] and landed.default_adapter == "beta"
    assert (folder / "README.md").read_text().startswith("---\ntitle:")


# --- storage notice on a Space ---------------------------------------------------------------------------------------


def _markdown_values(url: str) -> dict[str, str]:
    config = httpx.get(f"{url}config").json()
    return {c["props"].get("elem_id") or "": str(c["props"].get("value")) for c in config["components"]}


def test_a_space_without_persistent_storage_tells_the_builder_what_is_lost_and_how_to_fix_it(
    tiny_models: dict[str, Path], demoforge_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The builder's own (private) Space: mode 'auto' would serve visitors the audience view at / on a Space.
    config = AppConfig(model=str(tiny_models["llama"]), device="cpu", dtype="float32", mode="builder")
    monkeypatch.delenv("SPACE_ID", raising=False)
    with serve(Engine(config), config) as url:
        assert "df-storage-notice" not in _markdown_values(url)  # a laptop's disk persists: no notice
    monkeypatch.setenv("SPACE_ID", "acme/demo")  # the test home is not on /data: lost on restart
    with serve(Engine(config), config) as url:
        notice = _markdown_values(url)["df-storage-notice"]
    assert "Storage is not persistent" in notice and "adapters, arena votes and training runs" in notice
    assert "/data" in notice
