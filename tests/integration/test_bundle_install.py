"""A published bundle's ``requirements.txt`` alone installs what it needs, as a Space does it.

Spaces run ``pip install -r requirements.txt`` and nothing else (no ``--no-deps`` step for the embedded models,
which the bundle vendors as package folders). So: build a bundle, make a fresh venv (no site packages of this
one), install the bundle's requirements into it, then in that venv, from the bundle's folder, import every module
of ``core`` and ``demo`` (what ``app.py`` can reach), ``import app``, find the vendored models and run
``python app.py --help``.

pip uses this machine's own settings: torch==2.13.0 comes from the local CPU wheel (find-links), the rest from
PyPI or pip's cache; llama-cpp-python's wheel is cached (it would compile llama.cpp for ~4.5 min otherwise).
Measured here: ~2.5 min for the install, ~20 s for the imports.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.config import DemoProfile
from core.publish import build_bundle

pytestmark = pytest.mark.integration

# Run inside the fresh venv, in the bundle's folder: every module must import with only the bundle's requirements.
CHECK = """
import importlib, pkgutil, sys
failed, count = [], 0
for pkg in ("core", "demo"):
    for info in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + "."):
        if info.name.endswith("__main__"):
            continue  # `python -m core.train` etc.: they run on import
        count += 1
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failed.append(f"{info.name}: {exc!r}")
import app, gradio, llama_cpp, peft, torch, transformers
from core.models import embedded_encoder_path, embedded_gguf_file
print("prefix", sys.prefix)
print("modules", count)
print("torch", torch.__version__, "gradio", gradio.__version__)
print("models", embedded_gguf_file(), embedded_encoder_path())
print("failed", failed)
"""


def test_the_bundles_requirements_alone_install_what_it_needs(tmp_path: Path) -> None:
    bundle = build_bundle([], DemoProfile(title="Install check"), tmp_path / "bundle")
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env |= {"PIP_NO_INPUT": "1", "HF_HUB_OFFLINE": "1", "DEMOFORGE_HOME": str(tmp_path / "home")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    start = time.perf_counter()
    pip = subprocess.run(
        [python, "-m", "pip", "install", "-q", "-r", "requirements.txt"],
        cwd=bundle.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
    )
    install_s = time.perf_counter() - start
    assert pip.returncode == 0, pip.stderr[-4000:]
    out = subprocess.run([python, "-c", CHECK], cwd=bundle.path, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-4000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert Path(lines["prefix"]).resolve() == venv.resolve()  # the fresh venv, not this one
    assert lines["failed"] == "[]", lines["failed"]
    assert int(lines["modules"]) >= 50, lines["modules"]
    assert lines["torch"].startswith("2.13.0")  # the pinned torch (here the local CPU wheel, 2.13.0+cpu)
    gguf, encoder = lines["models"].split()
    assert Path(gguf).resolve().is_relative_to(bundle.path.resolve())  # the vendored models, found by import name
    assert Path(encoder).resolve().is_relative_to(bundle.path.resolve())
    helped = subprocess.run(
        [python, "app.py", "--help"], cwd=bundle.path, env=env, capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0 and "--profile" in helped.stdout, helped.stderr[-2000:]
    print(f"\nbundle {bundle.size_bytes / 1e6:.0f} MB; fresh-venv install {install_s:.0f}s; {lines['torch']}")
