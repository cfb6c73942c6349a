"""Imports run one way (DESIGN.md, "Packages and their borders"): the packages form a stack, and a module imports
only from its own layer or the layers below it. `convert/common` is the bottom: what every layer shares (errors,
safe file writing, JSON-lines reading, the message schema, the normalised text form); it imports nothing above it.

Read from the source with `ast`, so an import inside a function (where torch-free code hides its heavy imports)
counts as much as one at the top, and a relative import counts as the module it names.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Bottom to top; the position is the layer's rank. No allowlist: an edge from a lower rank to a higher one is wrong.
STACK = ("convert.common", "convert", "runtime", "edgeft")


def layer(module: str) -> int | None:
    """The rank of the layer `module` belongs to, or None for a module outside the project (numpy, torch...)."""
    for rank, package in sorted(enumerate(STACK), key=lambda item: -len(item[1])):
        if module == package or module.startswith(package + "."):
            return rank
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, module) for every import in `source`, the code of `module`; `from X import Y` counts as X.Y when Y is
    a module of this repository, else as X."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}" if base else alias.name
                found.append((node.lineno, full if _is_module(full) else base))
    return found


def forbidden(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported`, or None when the edge is allowed."""
    low, high = layer(importer), layer(imported)
    if low is None or high is None or high <= low:
        return None
    return f"imports {imported}: {STACK[low]} sits below {STACK[high]}, and imports run downwards only"


def checked_files() -> list[Path]:
    return sorted(path for package in ("convert", "runtime", "edgeft") for path in (ROOT / package).rglob("*.py"))


def violations(path: Path, source: str | None = None) -> list[str]:
    module = module_name(path)
    source = path.read_text(encoding="utf-8") if source is None else source
    found = imported_modules(source, module, path.name == "__init__.py")
    return [f"{path.relative_to(ROOT)}:{line}: {module} {why}"
            for line, imported in found if (why := forbidden(module, imported))]


def test_imports_run_one_way():
    files = checked_files()
    assert len(files) > 50 and all(path.is_file() for path in files)
    problems = [problem for path in files for problem in violations(path)]
    assert not problems, "forbidden imports:\n" + "\n".join(problems)


def test_the_checker_sees_every_kind_of_import():
    """Each upward edge, written each way an import can be written, is caught and named with its line."""
    source = "\n".join([
        "import edgeft.merge",
        "from edgeft import identity",
        "from convert.common.errors import EdgeftError",  # downwards: allowed
        "from runtime import load",
        "def later():",
        "    from runtime.evaluate import run_eval",
        "    import edgeft.data.templates",
    ])
    found = violations(ROOT / "convert" / "quant" / "example.py", source)
    assert [problem.split(":")[1] for problem in found] == ["1", "2", "4", "6", "7"], found
    assert "edgeft.identity" in found[1] and "runtime.load" in found[2]
    assert violations(ROOT / "runtime" / "example.py", "from convert.safetensors_file import INDEX_NAME") == []
    assert violations(ROOT / "runtime" / "example.py", "from edgeft.data import dedup")
    bottom = violations(ROOT / "convert" / "common" / "fsutil.py",
                        "from convert.reader import open_weights\nfrom . import errors\nfrom ..quant import policy")
    assert [problem.split(":")[1] for problem in bottom] == ["1", "3"], bottom
    assert "convert.quant.policy" in bottom[1]
    assert violations(ROOT / "edgeft" / "example.py", "import runtime.load\nimport convert.common.errors") == []

