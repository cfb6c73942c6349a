""".ci/run: the CI runs the whole suite."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
