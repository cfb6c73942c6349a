"""README.md: it opens with the two commands, and every file it links to exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text().splitlines()
    commands = [line.split("#")[0].strip() for line in readme if line.strip().startswith("make ")]
    assert commands[:2] == ["make release", "make test"]
    first_block = "\n".join(readme[:15])
    assert "make release" in first_block and "make test" in first_block
    linked = re.findall(r"\]\(([^)#:]+)\)", "\n".join(readme))  # the reference moved to docs/ is still there
    assert linked and all((ROOT / path).is_file() for path in linked), linked
