"""Pure core, thin shell: the import-linter contracts in pyproject.toml ([tool.importlinter]) are the one list.

`make lint` runs them with `lint-imports`; these tests run the same contracts so `make test-unit` catches a
violation too, check at runtime that importing the core loads no I/O library, and check that every top-level
module has a place in the layers (a new module cannot slip past the contracts unlisted).
"""

from __future__ import annotations

import contextlib
import io
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "operator" / "slm_operator"
CONFIG = ROOT / "pyproject.toml"


def _contract(contract_id: str) -> dict[str, Any]:
    contracts = tomllib.loads(CONFIG.read_text())["tool"]["importlinter"]["contracts"]
    found: dict[str, Any] = next(c for c in contracts if c["id"] == contract_id)
    return found


def test_the_import_contracts_hold() -> None:
    from importlinter.cli import lint_imports

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = lint_imports(config_filename=str(CONFIG), no_cache=True, no_logo=True)
    assert code == 0, out.getvalue()


def test_importing_the_core_loads_no_io_library() -> None:
    pure = _contract("pure-core")
    core: list[str] = pure["source_modules"]
    forbidden: list[str] = pure["forbidden_modules"]
    assert "slm_operator.planner" in core and "kopf" in forbidden
    modules = []
    for name in core:  # each module and, for a package, every module inside it
        modules.append(name)
        path = PKG.parent / name.replace(".", "/")
        if path.is_dir():
            modules += [m.name for m in pkgutil.walk_packages([str(path)], prefix=f"{name}.")]
    assert len(modules) > len(core)
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = {forbidden!r}\n"
        "print(sorted(m for m in sys.modules if any(m == b or m.startswith(b + '.') for b in bad)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_every_top_level_module_has_a_layer() -> None:
    layered = {
        name.strip() for layer in _contract("layers")["layers"] for name in layer.replace(":", "|").split("|")
    }
    top = {f"slm_operator.{m.name}" for m in pkgutil.iter_modules([str(PKG)]) if m.name != "__main__"}
    assert top - layered == set(), "add these modules to a layer of [tool.importlinter] in pyproject.toml"
    assert layered - top == set(), "these layers name modules that do not exist"
