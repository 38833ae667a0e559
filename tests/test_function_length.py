"""Functions in the operator's control plane and the affinity core stay short enough to name.

Every ``def`` (methods and nested functions too) in ``limpet.controller`` and
``limpet.affinity`` spans at most ``MAX_LINES`` lines, from ``def`` to its last line,
docstring included. A longer one is split where the split names something.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "operator" / "limpet"
PACKAGES = ("controller", "affinity")
MAX_LINES = 60


def long_functions(root: Path, limit: int) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path}:{node.lineno} {node.name}: {lines} lines")
    return found


def test_no_function_is_longer_than_the_limit() -> None:
    found = [f for pkg in PACKAGES for f in long_functions(ROOT / pkg, MAX_LINES)]
    assert not found, f"functions over {MAX_LINES} lines:\n" + "\n".join(found)


def test_the_check_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    source = f"def short() -> None:\n    pass\n\n\ndef long() -> None:\n{body}\n"
    (tmp_path / "m.py").write_text(source)
    assert long_functions(tmp_path, MAX_LINES) == [
        f"{tmp_path / 'm.py'}:5 long: {MAX_LINES + 1} lines"
    ]
