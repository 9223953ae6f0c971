"""Pure core, thin shell: planning, sizing, rendering and status import no kopf, kubernetes or pynvml."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "operator" / "slm_operator"
PURE = [
    "api",
    "catalog",
    "planner",
    "render",
    "status",
    "reconcile",
    "sizing.py",
    "manifests.py",
    "inventory.py",
    "contract.py",
    "views.py",
]
FORBIDDEN = {"kopf", "kubernetes", "pynvml"}


def _pure_files() -> list[Path]:
    files: list[Path] = []
    for entry in PURE:
        p = PKG / entry
        if p.is_dir():
            files += sorted(p.rglob("*.py"))
        elif p.exists():
            files.append(p)
    return files


def test_pure_modules_do_not_import_io_libraries() -> None:
    files = _pure_files()
    assert len(files) >= 5
    for f in files:
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in FORBIDDEN, f"{f.relative_to(PKG)} imports {n}"


def test_importing_the_core_loads_no_io_library() -> None:
    mods = []
    for f in _pure_files():
        rel = f.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts[-1] in ("__main__",):
            continue
        mods.append(".".join(parts))
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
