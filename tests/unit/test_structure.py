"""The house rules, checked instead of hoped for (issue 9.9): layering by imports, module size, ruff."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 500
# package -> top-level modules it must never import itself (demo reaches torch only through core's engine)
FORBIDDEN = {"core": ("gradio",), "demo": ("torch", "transformers")}


def project_modules() -> list[Path]:
    """Every Python file of the project (app.py, core/, demo/, tests/), without virtual environments or caches."""
    skip = {".venv", "venv", ".git", "__pycache__", "node_modules", "build", "dist", ".ruff_cache"}
    files = [p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)]
    return sorted(files)


def imported_modules(tree: ast.AST) -> list[tuple[str, int]]:
    """(module, line) of every import in the file, at any depth (a lazy import inside a function counts too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    return found


def layering_violations(files: list[Path]) -> list[str]:
    bad = []
    for path in files:
        package = path.relative_to(ROOT).parts[0]
        banned = FORBIDDEN.get(package)
        if not banned:
            continue
        for module, line in imported_modules(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if module.split(".")[0] in banned:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


def test_the_structure_rules_see_what_they_look_for(tmp_path: Path) -> None:
    """The checker itself: a lazy import inside a function and a 'from x.y import z' are both found."""
    src = "import os\ndef f():\n    from gradio.components import Textbox\n    import torch.nn as nn\n"
    assert [m for m, _ in imported_modules(ast.parse(src))] == ["os", "gradio.components", "torch.nn"]
    assert len(project_modules()) > 20 and ROOT / "core" / "engine.py" in project_modules()


def test_core_never_imports_gradio_and_demo_never_imports_torch_or_transformers() -> None:
    assert layering_violations(project_modules()) == []


def test_no_module_over_500_lines() -> None:
    sizes = {p: len(p.read_text(encoding="utf-8").splitlines()) for p in project_modules()}
    over = [f"{p.relative_to(ROOT)}: {n} lines" for p, n in sorted(sizes.items()) if n > MAX_LINES]
    assert over == [], f"split these modules (one job each, ~400 lines): {over}"


def _ruff() -> list[str] | None:
    exe = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    return [exe] if exe else None


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff_is_clean(args: list[str]) -> None:
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -r requirements-dev.txt); the style check did not run")
    res = subprocess.run([*ruff, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"ruff {' '.join(args)} failed:\n{res.stdout[-4000:]}{res.stderr[-2000:]}"


def test_app_parses_flags_without_loading_torch() -> None:
    """`python app.py --bad-flag` must fail fast: app.py imports no torch, transformers or gradio before parsing."""
    import subprocess
    import sys

    code = "import sys, app; print(sorted(m for m in ('torch', 'transformers', 'gradio') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


def test_test_file_names_are_unique_across_folders() -> None:
    """The test folders are not packages, so pytest imports each test file by its bare name: two files of one name
    (tests/unit/x.py and tests/integration/x.py) stop the whole run at collection (it happened once)."""
    seen: dict[str, Path] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        assert path.name not in seen, f"{path.relative_to(ROOT)} and {seen[path.name].relative_to(ROOT)}"
        seen[path.name] = path
