"""Functions stay short enough to read in one screen: at most 80 lines from ``def`` to the last line.

A function may be longer only when its ``def`` line says why, e.g. ``def build(...):  # long: declarative
metric table``. Complexity is limited by ruff (C901, ``max-complexity`` in pyproject.toml).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "operator" / "slm_operator"
MAX_LINES = 80
LONG_MARK = re.compile(r"#\s*long:\s*\S")


def long_functions(root: Path = PKG, max_lines: int = MAX_LINES) -> list[str]:
    """``path:line name (n lines)`` of every function longer than ``max_lines`` without a ``# long:`` reason."""
    offenders = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source, filename=str(path))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1  # decorators are not counted
            if length > max_lines and not LONG_MARK.search(lines[node.lineno - 1]):
                offenders.append(
                    f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({length} lines)"
                )
    return offenders


def test_no_function_is_longer_than_80_lines_without_a_reason() -> None:
    offenders = long_functions()
    assert not offenders, (
        f"functions longer than {MAX_LINES} lines: split them, or give the reason on the def line "
        "(`def f(...):  # long: <reason>`):\n  " + "\n  ".join(offenders)
    )


def test_the_rule_counts_from_def_to_last_line_and_honours_the_reason(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(79))
    (tmp_path / "m.py").write_text(
        f"@decorator\ndef fits():\n{body}\n"  # def + 79 lines = 80: fits
        f"def too_long():\n{body}    return 1\n\n"  # 81 lines
        f"def marked():  # long: a table\n{body}    return 1\n\n"
        f"def empty_reason():  # long:\n{body}    return 1\n"
    )
    assert long_functions(tmp_path) == [
        f"{tmp_path.name}/m.py:83 too_long (81 lines)",
        f"{tmp_path.name}/m.py:247 empty_reason (81 lines)",
    ]
