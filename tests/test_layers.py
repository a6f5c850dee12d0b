"""Imports go one way, down: no runner imports another runner, and nothing below the runners imports a
runner or the CLI (what runners share lives in data/, modeling/, training/, evaluation/)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gptune"


def imports_of(path: Path) -> set[str]:
    """Every gptune module a file imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gptune"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("gptune"))
    return out


def test_no_runner_imports_another_and_nothing_below_imports_a_runner():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if module in ("gptune.cli", "gptune.__main__"):
            continue
        for name in imports_of(path):
            if name.startswith(("gptune.runners.", "gptune.cli")) and name != "gptune.runners.__init__":
                wrong.append(f"{module} imports {name}")
    assert wrong == []
