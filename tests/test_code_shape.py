"""The house rules that keep modules readable, measured on the tree: no Python file over 400 lines, the tests and the
benchmarks included, and no function over 60 lines (from its `def` to its last line) in the product packages."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("convert", "runtime", "edgeft")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def _sources(packages=PACKAGES) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def _long_functions(path: Path, limit: int, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [f"{path.relative_to(root)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > limit]


def test_no_file_over_400_lines():
    long = [f"{p.relative_to(ROOT)} ({n} lines)" for p in _sources(PACKAGES + ("tests",))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES]
    assert not long, "split these modules: " + ", ".join(long)


def test_no_function_over_60_lines():
    long = [row for p in _sources() for row in _long_functions(p, MAX_FUNCTION_LINES)]
    assert not long, "split these functions: " + ", ".join(long)


def test_the_measure_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    sample = tmp_path / "sample.py"
    sample.write_text(f"def long_one():\n{body}\n\n\nasync def short_one():\n    return 1\n")
    assert _long_functions(sample, MAX_FUNCTION_LINES, tmp_path) == ["sample.py:1 long_one (61 lines)"]
